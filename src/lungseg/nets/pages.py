"""Hand a live tensor's dead channels back to the operating system (Linux ``madvise``).

The lean iUNet backward (lungseg.nets.invertible) keeps a skip connection's channels where they
already are, at the head of the level's whole tensor, instead of copying them out: a copy
needs the whole tensor and the copy resident at once (+1 activation at level 0, the step's
peak before). The whole tensor's other channels are dead until the encoder's split writes them
again, so their pages are dropped with ``MADV_DONTNEED``: resident memory then holds the skip
alone, and a page written again is a fresh zero page. Only whole pages strictly inside the
range are dropped, so nothing outside the tensor's bytes (an allocator's header) is touched.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch

_MADV_DONTNEED = 4  # Linux: the pages read as zeros afterwards
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def release_bytes(storage: torch.UntypedStorage, start: int, stop: int) -> int:
    """Drop the whole pages of bytes ``[start, stop)`` of a CPU ``storage``; returns how many
    bytes left the process (0 where that is not possible: another OS, another device)."""
    if _libc is None or storage.device.type != "cpu" or stop <= start:
        return 0
    page = mmap.PAGESIZE
    base = storage.data_ptr()
    low = -(-(base + start) // page) * page
    high = (base + stop) // page * page
    if high <= low:
        return 0
    if _libc.madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), _MADV_DONTNEED) != 0:
        return 0
    return high - low


def release_channels(whole: torch.Tensor, first: int) -> int:
    """Drop the pages of channels ``first:`` of each sample of a contiguous ``(N, C, ...)``
    tensor; its other channels keep their values. Returns the bytes released."""
    if not whole.is_contiguous() or whole.storage_offset() != 0:
        raise ValueError("release_channels needs a contiguous tensor at its storage's start")
    sample = whole[0].numel() * whole.element_size()
    keep = whole[0, :first].numel() * whole.element_size()
    storage = whole.untyped_storage()
    return sum(
        release_bytes(storage, n * sample + keep, (n + 1) * sample) for n in range(whole.shape[0])
    )


def _whole(t: torch.Tensor) -> bool:
    """``t`` is contiguous and is all of its storage."""
    return (
        t.is_contiguous()
        and t.storage_offset() == 0
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    )


def _head_of(t: torch.Tensor, channels: int) -> bool:
    """``t`` is the first channels of a contiguous ``(N, channels, ...)`` tensor that is all
    of ``t``'s storage."""
    spatial = t[0, 0].numel() if t.numel() else 0
    return (
        t.dim() >= 2
        and t.storage_offset() == 0
        and t.stride()[0] == channels * spatial
        and t[0].is_contiguous()
        and t.untyped_storage().nbytes() == t.shape[0] * channels * spatial * t.element_size()
    )


def _alone(t: torch.Tensor) -> bool:
    """Only ``t`` holds its storage (+1: the temporary storage object made here)."""
    return t._base is None and torch._C._storage_Use_Count(t.untyped_storage()._cdata) == 2
