"""Provenance of the outputs: which instances each synthetic slice derives from, which series the outputs name, and
the scanner described once in the SEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import Dataset

from operators.registration import RegisteredStudy, RegistrationQuality, RegistrationResult
from operators.roles import Role
from operators.study import Volume
from operators.writers import (
    InputSeries,
    ModelIdentity,
    input_series,
    write_enhancement_seg,
    write_secondary_capture,
    write_synthetic_series,
)
from operators.writers.content import source_image_items
from operators.writers.provenance import as_input_series, overlapping_slices
from tests.operators.writers._sources import dciodvfy_errors, synthetic_from

SOURCE_FOR_PROCESSING = "121322"
ACQUISITION_EQUIPMENT = "109101"
SYNTHESIZING_EQUIPMENT = "109100"


def _normal(volume: Volume) -> np.ndarray:
    iop = [float(v) for v in volume.slices[0].dataset.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def _depths(volume: Volume, normal: np.ndarray) -> list[float]:
    return [float(np.dot([float(v) for v in ref.dataset.ImagePositionPatient], normal)) for ref in volume.slices]


def _expected_overlaps(pre: Volume, low: Volume, shift_mm: float = 0.0) -> list[set[str]]:
    """Low-dose instances whose slab overlaps each t1_pre slab (moved by ``shift_mm`` along the normal), from the
    headers alone: an independent check of the writer's geometry."""
    normal = _normal(pre)
    pre_depths, low_depths = _depths(pre, normal), _depths(low, normal)
    pre_half = (pre_depths[-1] - pre_depths[0]) / (len(pre_depths) - 1) / 2
    low_half = (low_depths[-1] - low_depths[0]) / (len(low_depths) - 1) / 2
    expected = []
    for depth in pre_depths:
        low_end, high_end = depth + shift_mm - pre_half, depth + shift_mm + pre_half
        expected.append(
            {
                ref.sop_instance_uid
                for ref, other in zip(low.slices, low_depths, strict=True)
                if min(high_end, other + low_half) - max(low_end, other - low_half) > 1e-2
            }
        )
    return expected


def _uids(refs: list) -> set[str]:
    return {ref.sop_instance_uid for ref in refs}


class TestOverlappingSlices:
    def test_the_same_stack_names_the_same_slice(self, study_pair: tuple[Volume, Volume]) -> None:
        pre, _ = study_pair
        overlaps = overlapping_slices(pre, InputSeries(pre.series))
        assert [[r.sop_instance_uid for r in refs] for refs in overlaps] == [[r.sop_instance_uid] for r in pre.slices]

    def test_a_finer_series_names_every_slice_it_overlaps(self, study_pair: tuple[Volume, Volume]) -> None:
        pre, low = study_pair
        overlaps = overlapping_slices(pre, InputSeries(low.series, Role.T1_LOW_DOSE))
        expected = _expected_overlaps(pre, low)
        assert [_uids(refs) for refs in overlaps] == expected
        assert all(1 <= len(refs) <= 3 for refs in expected[1:-1])  # 2.5 mm against 1.25 mm slices

    def test_the_registration_transform_is_applied(self, study_pair: tuple[Volume, Volume]) -> None:
        pre, low = study_pair
        moved = sitk.TranslationTransform(3, tuple(float(v) for v in _normal(pre) * 2.5))  # one t1_pre slice
        overlaps = overlapping_slices(pre, InputSeries(low.series, Role.T1_LOW_DOSE, transform=moved))
        assert [_uids(refs) for refs in overlaps] == _expected_overlaps(pre, low, shift_mm=2.5)

    def test_outside_the_coverage_nothing_is_named(self, study_pair: tuple[Volume, Volume]) -> None:
        pre, low = study_pair
        away = sitk.TranslationTransform(3, tuple(float(v) for v in _normal(pre) * 100.0))
        assert overlapping_slices(pre, InputSeries(low.series, transform=away)) == [[] for _ in pre.slices]

    def test_a_slab_seen_edge_on_names_the_slices_at_its_centre(self, study_pair: tuple[Volume, Volume]) -> None:
        pre, low = study_pair
        centre = pre.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in pre.image.GetSize()])
        row = [float(v) for v in pre.slices[0].dataset.ImageOrientationPatient][:3]
        turn = sitk.VersorRigid3DTransform()
        turn.SetCenter(centre)
        turn.SetRotation(row, np.pi / 2)
        overlaps = overlapping_slices(pre, InputSeries(low.series, transform=turn))
        assert all(1 <= len(refs) <= 2 for refs in overlaps)
        assert len({frozenset(_uids(refs)) for refs in overlaps}) == 1  # every slice crosses the centre

    def test_multi_frame_slices_keep_their_frame(self, enhanced: Volume) -> None:
        overlaps = overlapping_slices(enhanced, InputSeries(enhanced.series))
        assert [[(r.sop_instance_uid, r.frame_number) for r in refs] for refs in overlaps] == [
            [(r.sop_instance_uid, r.frame_number)] for r in enhanced.slices
        ]

    def test_frames_of_one_instance_share_one_item(self, enhanced: Volume) -> None:
        first, second = enhanced.slices[0], enhanced.slices[1]
        (item,) = source_image_items([first, second, first])
        assert list(item.ReferencedFrameNumber) == [first.frame_number, second.frame_number]
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == SOURCE_FOR_PROCESSING

    def test_other_sources_must_be_series(self) -> None:
        with pytest.raises(TypeError, match=r"other_sources must hold Series or InputSeries items\. Found str"):
            as_input_series(["1.2.3"])  # type: ignore[list-item]


class TestInputSeries:
    def test_only_the_roles_the_model_consumed(self, study_pair: tuple[Volume, Volume]) -> None:
        pre, low = study_pair
        transform = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
        quality = RegistrationQuality(-0.5, 1.2, 0.9, 1.0, 10, "converged", 0.0, 1.0, 0.1)
        registered = RegisteredStudy(
            reference=pre,
            images={},
            results={
                Role.T1_LOW_DOSE: RegistrationResult(Role.T1_LOW_DOSE, low.image, transform, quality),
                Role.T1_STANDARD_DOSE: RegistrationResult(Role.T1_STANDARD_DOSE, low.image, transform, quality),
            },
            volumes={Role.T1_PRE: pre, Role.T1_LOW_DOSE: low, Role.T1_STANDARD_DOSE: low},
        )
        (only,) = input_series(registered, [Role.T1_PRE, Role.T1_LOW_DOSE])
        assert (only.series, only.role, only.transform) == (low.series, Role.T1_LOW_DOSE, transform)
        assert only.label == f"{low.series.series_instance_uid} (t1_low_dose)"


@pytest.fixture(scope="module")
def written_pair(
    study_pair: tuple[Volume, Volume], tmp_path_factory: pytest.TempPathFactory, model: ModelIdentity
) -> list[Dataset]:
    """The synthetic series of the pair's t1_pre, computed from it and its low-dose series."""
    pre, low = study_pair
    paths = write_synthetic_series(
        pre,
        synthetic_from(pre),
        tmp_path_factory.mktemp("pair_syn") / "syn",
        series_number=9001,
        model=model,
        other_sources=[InputSeries(low.series, Role.T1_LOW_DOSE)],
    )
    return [pydicom.dcmread(p) for p in paths]


class TestSyntheticSeriesReferences:
    def test_each_slice_names_its_t1_pre_slice_then_the_overlapping_low_dose_slices(
        self, study_pair: tuple[Volume, Volume], written_pair: list[Dataset]
    ) -> None:
        pre, low = study_pair
        expected = _expected_overlaps(pre, low)
        for ref, wanted, ds in zip(pre.slices, expected, written_pair, strict=True):
            first, *others = ds.SourceImageSequence
            assert first.ReferencedSOPInstanceUID == ref.sop_instance_uid
            assert {item.ReferencedSOPInstanceUID for item in others} == wanted
            assert len(others) == len(wanted)
            assert {i.PurposeOfReferenceCodeSequence[0].CodeValue for i in ds.SourceImageSequence} == {
                SOURCE_FOR_PROCESSING
            }

    def test_referenced_series_lists_the_same_instances(
        self, study_pair: tuple[Volume, Volume], written_pair: list[Dataset]
    ) -> None:
        pre, low = study_pair
        for ds in written_pair:
            by_series = {
                item.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in item.ReferencedInstanceSequence}
                for item in ds.ReferencedSeriesSequence
            }
            by_source_image = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
            assert set(by_series) == {pre.series.series_instance_uid, low.series.series_instance_uid}
            assert set().union(*by_series.values()) == by_source_image

    def test_derivation_description_names_the_inputs_with_their_roles(
        self, study_pair: tuple[Volume, Volume], written_pair: list[Dataset]
    ) -> None:
        pre, low = study_pair
        text = written_pair[0].DerivationDescription
        assert f"{pre.series.series_instance_uid} (t1_pre)" in text
        assert f"{low.series.series_instance_uid} (t1_low_dose)" in text

    def test_dciodvfy_reports_nothing(self, written_pair: list[Dataset], dciodvfy: str) -> None:
        for ds in (written_pair[0], written_pair[len(written_pair) // 2]):
            assert dciodvfy_errors(dciodvfy, Path(ds.filename)) == ([], [])

    def test_a_plain_series_is_taken_as_not_moved(
        self, study_pair: tuple[Volume, Volume], tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, low = study_pair
        paths = write_synthetic_series(
            pre, synthetic_from(pre), tmp_path, series_number=1, model=model, other_sources=[low.series]
        )
        ds = pydicom.dcmread(paths[3])
        assert {i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence[1:]} == _expected_overlaps(pre, low)[3]
        assert f"{low.series.series_instance_uid}." in ds.DerivationDescription  # no role to name


class TestSecondaryCaptureReferences:
    def test_sc_names_the_low_dose_series_and_instances(
        self, study_pair: tuple[Volume, Volume], tmp_path: Path, model: ModelIdentity, dciodvfy: str
    ) -> None:
        pre, low = study_pair
        path = write_secondary_capture(
            pre,
            synthetic_from(pre),
            tmp_path / "sc.dcm",
            series_number=9004,
            model=model,
            other_sources=[InputSeries(low.series, Role.T1_LOW_DOSE)],
        )
        ds = pydicom.dcmread(path)
        assert f"{low.series.series_instance_uid} (t1_low_dose)" in ds.DerivationDescription
        items = [item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence]
        assert items[: len(pre.slices)] == [ref.sop_instance_uid for ref in pre.slices]
        assert set(items[len(pre.slices) :]) == set().union(*_expected_overlaps(pre, low))
        assert len(items) == len(set(items))
        assert [s.SeriesInstanceUID for s in ds.ReferencedSeriesSequence] == [
            pre.series.series_instance_uid,
            low.series.series_instance_uid,
        ]
        errors, _ = dciodvfy_errors(dciodvfy, path)
        assert errors == []


class TestSegEquipment:
    def test_the_scanner_and_gadsynth_are_each_described_once(
        self, source: Volume, tmp_path: Path, model: ModelIdentity
    ) -> None:
        values = sitk.GetArrayFromImage(source.image)
        path = write_enhancement_seg(
            source, values > np.percentile(values, 90), tmp_path / "seg.dcm", series_number=9003, model=model
        )
        items = pydicom.dcmread(path, stop_before_pixels=True).ContributingEquipmentSequence
        by_purpose: dict[str, list[str]] = {}
        for item in items:
            by_purpose.setdefault(item.PurposeOfReferenceCodeSequence[0].CodeValue, []).append(item.Manufacturer)
        assert by_purpose[ACQUISITION_EQUIPMENT] == [source.slices[0].dataset.Manufacturer]
        assert by_purpose[SYNTHESIZING_EQUIPMENT] == ["GadSynth"]
        gadsynth = [i for i in items if i.Manufacturer == "GadSynth"]
        assert len(gadsynth) == 1 and model.sha256 in gadsynth[0].ContributionDescription
