"""DICOM SEG output: real CT series in, the SEG read back by pydicom and highdicom."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from predict_helpers import ORIENTATIONS, probe_series
from pydicom import dcmread
from pydicom.uid import SegmentationStorage

from lungseg.core.errors import InputError
from lungseg.ingest.pixels import read_series
from lungseg.predict.dicomseg import write_dicom_seg

SEGMENTS = [(7, "nodule 1"), (3, "nodule 2")]  # label 7 -> segment 1, label 3 -> segment 2


def nodule_labels(shape: tuple[int, int, int]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint16)
    labels[1:3, 2:5, 3:6] = 7
    labels[4, 8, 1:4] = 3
    labels[4, 9, 2] = 7  # a second part of nodule 1 on the slice of nodule 2
    return labels


@pytest.fixture(params=ORIENTATIONS[:3], ids=lambda o: f"{o.name}-{o.dtype.__name__}")
def written(request, tmp_path):
    series = probe_series(tmp_path / "ct", request.param)
    plan, volume = read_series(series.paths)
    labels = nodule_labels(volume.shape)
    sources = [header.path for header in plan.slices]
    out = write_dicom_seg(tmp_path / "seg.dcm", labels, sources, SEGMENTS)
    return plan, labels, out


def test_seg_describes_the_nodules(written):
    _plan, _labels, out = written
    ds = dcmread(out)
    assert ds.SOPClassUID == SegmentationStorage and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert (ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber) == (
        "lungseg",
        "lungseg",
        "none",
    )
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["nodule 1", "nodule 2"]
    assert [s.SegmentNumber for s in ds.SegmentSequence] == [1, 2]
    for segment in ds.SegmentSequence:
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "lungseg"
        assert algorithm.AlgorithmVersion == metadata.version("lungseg")


def test_seg_references_the_ct_and_lies_on_its_slices(written):
    plan, _labels, out = written
    ds = dcmread(out)
    ct_uids = {header.sop_uid for header in plan.slices}
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == ct_uids
    assert ds.FrameOfReferenceUID == dcmread(plan.slices[0].path).FrameOfReferenceUID
    position_of = {h.sop_uid: np.array(dcmread(h.path).ImagePositionPatient) for h in plan.slices}
    assert int(ds.NumberOfFrames) == 3 + 1  # nodule 1 on slices 1, 2, 4; nodule 2 on slice 4
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(position, position_of[source.ReferencedSOPInstanceUID])


def test_seg_decodes_to_the_label_map(written):
    plan, labels, out = written
    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2
    numbers = seg.get_pixels_by_source_instance(
        [header.sop_uid for header in plan.slices],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    label_of_number = np.array([0] + [label for label, _name in SEGMENTS])
    np.testing.assert_array_equal(label_of_number[numbers], labels)


def test_no_segments_no_file(tmp_path):
    series = probe_series(tmp_path / "ct", ORIENTATIONS[0])
    plan, volume = read_series(series.paths)
    empty = np.zeros(volume.shape, dtype=np.uint8)
    sources = [header.path for header in plan.slices]
    assert write_dicom_seg(tmp_path / "seg.dcm", empty, sources, []) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


def test_bad_inputs_are_named(tmp_path):
    series = probe_series(tmp_path / "ct", ORIENTATIONS[0])
    plan, volume = read_series(series.paths)
    sources = [header.path for header in plan.slices]
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        write_dicom_seg(tmp_path / "seg.dcm", nodule_labels(volume.shape), sources, [(7, "a")])
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    with pytest.raises(InputError, match="broken.dcm"):
        write_dicom_seg(tmp_path / "seg.dcm", volume > 0, [*sources[:-1], broken], [(1, "a")])
    assert not Path(tmp_path / "seg.dcm").exists()
