"""lungseg.nets.pages: dead channels of a live tensor leave the process, the others stay."""

import mmap
import sys

import pytest
import torch

from lungseg.nets.pages import release_bytes, release_channels
from lungseg.training.memory import current_rss_bytes

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")


@linux
@pytest.mark.parametrize("batch", [1, 2])
def test_released_channels_leave_resident_memory_and_the_rest_keep_their_values(batch):
    whole = torch.randn(batch, 4, 128, 128, 128)  # 8 MiB a channel, resident once filled
    kept = whole[:, :3].clone()
    before = current_rss_bytes()
    released = release_channels(whole, 3)
    dropped = before - current_rss_bytes()
    channel = whole[0, 0].numel() * whole.element_size()
    assert released >= batch * (channel - 2 * mmap.PAGESIZE)  # whole pages inside the range
    # statm lags by up to a few hundred kB on older kernels (per-thread RSS counters)
    assert dropped >= released - 2**20
    torch.testing.assert_close(whole[:, :3], kept)
    assert torch.count_nonzero(whole[:, 3, 1:-1]) == 0  # dropped pages read as zeros
    whole[:, 3] = 1.0  # and are writable again
    assert bool((whole[:, 3] == 1.0).all())


@linux
def test_only_whole_pages_inside_the_range_are_dropped():
    values = torch.arange(4 * mmap.PAGESIZE, dtype=torch.uint8)
    copy = values.clone()
    storage = values.untyped_storage()
    assert release_bytes(storage, 10, mmap.PAGESIZE - 10) == 0  # no whole page inside
    assert values.equal(copy)
    start = -values.data_ptr() % mmap.PAGESIZE  # the first page boundary inside the tensor
    assert release_bytes(storage, start, start + 2 * mmap.PAGESIZE) == 2 * mmap.PAGESIZE
    assert values[:start].equal(copy[:start])
    assert values[start + 2 * mmap.PAGESIZE :].equal(copy[start + 2 * mmap.PAGESIZE :])
    assert int(values[start : start + 2 * mmap.PAGESIZE].sum()) == 0


def test_release_channels_refuses_a_view_that_is_not_its_storage():
    whole = torch.zeros(1, 4, 8, 8, 8)
    with pytest.raises(ValueError, match="contiguous tensor at its storage's start"):
        release_channels(whole[:, 1:], 2)
    with pytest.raises(ValueError, match="contiguous"):
        release_channels(whole.transpose(2, 3), 2)
