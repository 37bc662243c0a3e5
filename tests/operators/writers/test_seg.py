"""Tests for the enhancement SEG: validity, segment, references to source instances and frames, empty masks, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from operators.study import SliceRef, Volume
from operators.writers import ModelIdentity, write_enhancement_seg
from operators.writers.seg import SEGMENT_LABEL
from tests.operators.writers._sources import dciodvfy_errors, read_every_element

# The real XA30 data has a one-component PatientName, which highdicom rightly warns about when it copies it.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* unlikely to represent the intended person name")


def _mask(volume: Volume, percentile: float = 90.0) -> np.ndarray:
    """A mask with something on most slices: the brightest voxels of the source."""
    values = sitk.GetArrayFromImage(volume.image)
    return values > np.percentile(values, percentile)


def _frame_sources(seg: pydicom.Dataset) -> list[tuple[str, int | None]]:
    """(source SOP instance, source frame) of each SEG frame, from its Derivation Image Sequence."""
    sources = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        item = frame.DerivationImageSequence[0].SourceImageSequence[0]
        number = item.get("ReferencedFrameNumber")
        sources.append((item.ReferencedSOPInstanceUID, None if number is None else int(number)))
    return sources


def _slice_index(volume: Volume) -> dict[tuple[str, int | None], int]:
    return {(ref.sop_instance_uid, ref.frame_number): k for k, ref in enumerate(volume.slices)}


@pytest.fixture(scope="module")
def written(
    source: Volume, tmp_path_factory: pytest.TempPathFactory, model_kwargs: dict
) -> tuple[Volume, np.ndarray, Path]:
    """The SEG of each source, written once per module (tests only read it)."""
    mask = _mask(source)
    path = write_enhancement_seg(
        source, mask, tmp_path_factory.mktemp("seg") / "seg.dcm", series_number=9003, **model_kwargs
    )
    return source, mask, path


class TestValidity:
    def test_dciodvfy_reports_no_errors(self, written: tuple[Volume, np.ndarray, Path], dciodvfy: str) -> None:
        errors, _ = dciodvfy_errors(dciodvfy, written[2])
        assert errors == []

    def test_plain_source_gives_no_warnings(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict, dciodvfy: str
    ) -> None:
        path = write_enhancement_seg(
            classic_uint16, _mask(classic_uint16), tmp_path / "seg.dcm", series_number=1, **model_kwargs
        )
        assert dciodvfy_errors(dciodvfy, path) == ([], [])

    def test_every_element_reads_strictly(self, written: tuple[Volume, np.ndarray, Path]) -> None:
        read_every_element(written[2])

    def test_highdicom_reads_it_back(self, written: tuple[Volume, np.ndarray, Path], model: ModelIdentity) -> None:
        source, _, path = written
        seg = hd.seg.segread(path)
        assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
        (description,) = [seg.get_segment_description(n) for n in seg.segment_numbers]
        assert description.segment_label == SEGMENT_LABEL
        assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = description.algorithm_identification[0]
        assert algorithm.AlgorithmName == f"GadSynth {model.name}"
        assert algorithm.AlgorithmVersion == model.version
        assert model.sha256 in algorithm.AlgorithmParameters
        assert seg.StudyInstanceUID == source.slices[0].dataset.StudyInstanceUID
        assert seg.FrameOfReferenceUID == source.slices[0].dataset.FrameOfReferenceUID
        assert int(seg.SeriesNumber) == 9003


class TestReferences:
    def test_referenced_series_lists_the_source_instances(self, written: tuple[Volume, np.ndarray, Path]) -> None:
        source, _, path = written
        seg = pydicom.dcmread(path)
        (series,) = seg.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.series.series_instance_uid
        referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence}
        assert referenced == {ref.sop_instance_uid for ref in source.slices}

    def test_each_frame_references_the_slice_it_segments(self, written: tuple[Volume, np.ndarray, Path]) -> None:
        source, mask, path = written
        seg = pydicom.dcmread(path)
        index = _slice_index(source)
        frames = seg.pixel_array.reshape(-1, *mask.shape[1:]).astype(bool)
        slices = [index[key] for key in _frame_sources(seg)]
        assert len(set(slices)) == len(slices)
        for frame, k in zip(frames, slices, strict=True):
            np.testing.assert_array_equal(frame, mask[k])
        untouched = set(range(len(source.slices))) - set(slices)
        assert not any(mask[k].any() for k in untouched)

    def test_enhanced_source_frames_are_referenced(self, enhanced: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        path = write_enhancement_seg(enhanced, _mask(enhanced), tmp_path / "seg.dcm", series_number=1, **model_kwargs)
        sources = _frame_sources(pydicom.dcmread(path))
        assert {uid for uid, _ in sources} == {enhanced.series.instances[0].sop_instance_uid}
        assert all(number is not None and 1 <= number <= 96 for _, number in sources)


class TestEmptyMask:
    def test_empty_mask_gives_a_valid_seg_of_empty_frames(
        self, source: Volume, tmp_path: Path, model_kwargs: dict, dciodvfy: str
    ) -> None:
        empty = np.zeros_like(_mask(source))
        path = write_enhancement_seg(source, empty, tmp_path / "empty.dcm", series_number=1, **model_kwargs)
        seg = pydicom.dcmread(path)
        assert int(seg.NumberOfFrames) == len(source.slices)
        assert not seg.pixel_array.any()
        assert dciodvfy_errors(dciodvfy, path)[0] == []
        assert hd.seg.segread(path).number_of_frames == len(source.slices)


class TestErrors:
    def test_mask_must_be_boolean(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        with pytest.raises(TypeError, match=r"must be a boolean NumPy array\. Found uint8"):
            write_enhancement_seg(
                classic_uint16,
                _mask(classic_uint16).astype(np.uint8),
                tmp_path / "s.dcm",
                series_number=1,
                **model_kwargs,
            )

    def test_mask_must_have_the_volume_shape(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        mask = _mask(classic_uint16).transpose(0, 2, 1)
        with pytest.raises(
            ValueError, match=r"must have shape \(8, 24, 20\) \(slice, row, col\)\. Found \(8, 20, 24\)"
        ):
            write_enhancement_seg(classic_uint16, mask, tmp_path / "s.dcm", series_number=1, **model_kwargs)

    def test_frames_of_several_multiframe_instances_are_refused(
        self, enhanced: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        mixed = copy.copy(enhanced)
        mixed.slices = list(enhanced.slices)
        mixed.slices[0] = SliceRef(**{**vars(enhanced.slices[0]), "sop_instance_uid": "1.2.3.4"})
        with pytest.raises(ValueError, match=r"exactly one multi-frame instance; .* come from 2 instances"):
            write_enhancement_seg(mixed, _mask(enhanced), tmp_path / "s.dcm", series_number=1, **model_kwargs)

    def test_series_number_must_be_an_int(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        with pytest.raises(TypeError, match=r"series_number must be an int\. Found float"):
            write_enhancement_seg(
                classic_uint16, _mask(classic_uint16), tmp_path / "s.dcm", series_number=3.0, **model_kwargs
            )
