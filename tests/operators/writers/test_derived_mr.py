"""Tests for the synthetic MR series writer: structure, geometry, references, pixels, labels, validity, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import Dataset
from pydicom.uid import MRImageStorage

from app import __version__
from operators.errors import InconsistentGeometryError, InputDicomError
from operators.study import SliceRef, Volume
from operators.writers import ModelIdentity, write_synthetic_series
from tests.operators.writers._sources import dciodvfy_errors, load_volume, read_every_element, synthetic_from


def _write(source: Volume, out: Path, model_kwargs: dict, **options: object) -> list[Path]:
    options.setdefault("series_number", 9001)
    return write_synthetic_series(source, synthetic_from(source), out, **model_kwargs, **options)  # type: ignore[arg-type]


def _plane(ref: SliceRef) -> tuple[list[float], list[float], list[float], float]:
    """IPP, IOP, PixelSpacing and SliceThickness of a source slice, read independently of the writer."""
    ds = ref.dataset
    if ref.frame_number is None:
        return (
            [float(v) for v in ds.ImagePositionPatient],
            [float(v) for v in ds.ImageOrientationPatient],
            [float(v) for v in ds.PixelSpacing],
            float(ds.SliceThickness),
        )
    frame = ds.PerFrameFunctionalGroupsSequence[ref.frame_number - 1]
    shared = ds.SharedFunctionalGroupsSequence[0]

    def group(keyword: str) -> Dataset:
        return (frame.get(keyword) or shared.get(keyword))[0]

    measures = group("PixelMeasuresSequence")
    return (
        [float(v) for v in group("PlanePositionSequence").ImagePositionPatient],
        [float(v) for v in group("PlaneOrientationSequence").ImageOrientationPatient],
        [float(v) for v in measures.PixelSpacing],
        float(measures.SliceThickness),
    )


def _rescale(ref: SliceRef) -> tuple[float, float]:
    ds = ref.dataset
    if ref.frame_number is None:
        return float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    frame = ds.PerFrameFunctionalGroupsSequence[ref.frame_number - 1]
    item = (
        frame.get("PixelValueTransformationSequence")
        or ds.SharedFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
    )[0]
    return float(item.RescaleSlope), float(item.RescaleIntercept)


@pytest.fixture(scope="module")
def written(
    source: Volume, tmp_path_factory: pytest.TempPathFactory, model_kwargs: dict
) -> tuple[Volume, list[Dataset]]:
    """The synthetic series of each source, written once per module (tests only read it)."""
    paths = _write(source, tmp_path_factory.mktemp("syn") / "syn", model_kwargs)
    return source, [pydicom.dcmread(p) for p in paths]


class TestSeriesStructure:
    def test_one_instance_per_source_slice(self, written: tuple[Volume, list[Dataset]]) -> None:
        source, datasets = written
        assert len(datasets) == len(source.slices) == source.image.GetSize()[2]
        assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(datasets) + 1))
        assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
        source_uids = {ref.sop_instance_uid for ref in source.slices}
        assert not source_uids & {ds.SOPInstanceUID for ds in datasets}

    def test_new_series_in_same_study_and_frame_of_reference(self, written: tuple[Volume, list[Dataset]]) -> None:
        source, datasets = written
        first = source.slices[0].dataset
        assert {ds.SeriesInstanceUID for ds in datasets} == {datasets[0].SeriesInstanceUID}
        assert datasets[0].SeriesInstanceUID != source.series.series_instance_uid
        assert {ds.StudyInstanceUID for ds in datasets} == {first.StudyInstanceUID}
        assert {ds.FrameOfReferenceUID for ds in datasets} == {first.FrameOfReferenceUID}
        assert {ds.SOPClassUID for ds in datasets} == {MRImageStorage}
        assert {int(ds.SeriesNumber) for ds in datasets} == {9001}

    def test_patient_and_study_attributes_are_copied(self, written: tuple[Volume, list[Dataset]]) -> None:
        source, datasets = written
        first = source.slices[0].dataset
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime"):
            assert datasets[0][keyword].value == first[keyword].value, keyword
        assert datasets[0].AccessionNumber == first.get("AccessionNumber", "")


class TestGeometry:
    def test_each_slice_has_its_source_slice_geometry(self, written: tuple[Volume, list[Dataset]]) -> None:
        source, datasets = written
        for ref, ds in zip(source.slices, datasets, strict=True):
            ipp, iop, spacing, thickness = _plane(ref)
            assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(ipp, abs=1e-4)
            assert [float(v) for v in ds.ImageOrientationPatient] == pytest.approx(iop, abs=1e-6)
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx(spacing, abs=1e-6)
            assert float(ds.SliceThickness) == pytest.approx(thickness)
            assert (ds.Rows, ds.Columns) == (ref.dataset.Rows, ref.dataset.Columns)

    def test_rebuilt_volume_has_the_source_grid(self, source: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        _write(source, tmp_path / "syn", model_kwargs)
        rebuilt = load_volume(tmp_path / "syn")
        assert rebuilt.image.GetSize() == source.image.GetSize()
        assert rebuilt.image.GetOrigin() == pytest.approx(source.image.GetOrigin(), abs=1e-4)
        assert rebuilt.image.GetSpacing() == pytest.approx(source.image.GetSpacing(), abs=1e-4)
        assert rebuilt.image.GetDirection() == pytest.approx(source.image.GetDirection(), abs=1e-6)


class TestReferences:
    def test_source_image_sequence_names_the_source_slice(self, written: tuple[Volume, list[Dataset]]) -> None:
        source, datasets = written
        for ref, ds in zip(source.slices, datasets, strict=True):
            (item,) = ds.SourceImageSequence
            assert item.ReferencedSOPInstanceUID == ref.sop_instance_uid
            assert item.ReferencedSOPClassUID == ref.sop_class_uid
            assert item.get("ReferencedFrameNumber") == ref.frame_number
            assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"

    def test_referenced_series_is_the_source_series(self, written: tuple[Volume, list[Dataset]]) -> None:
        source, datasets = written
        for ref, ds in zip(source.slices, datasets, strict=True):
            (series,) = ds.ReferencedSeriesSequence
            assert series.SeriesInstanceUID == source.series.series_instance_uid
            assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [ref.sop_instance_uid]


class TestPixels:
    def test_values_round_trip_in_the_source_format(self, source: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        paths = _write(source, tmp_path / "syn", model_kwargs)
        first_out, first_in = pydicom.dcmread(paths[0]), source.slices[0].dataset
        for keyword in ("BitsAllocated", "PixelRepresentation", "PhotometricInterpretation"):
            assert first_out[keyword].value == first_in[keyword].value, keyword
        synthetic = sitk.GetArrayFromImage(synthetic_from(source)).astype(np.float64)
        rescale = np.array([_rescale(ref) for ref in source.slices])
        slope, intercept = rescale[:, 0, None, None], rescale[:, 1, None, None]
        bits, signed = int(first_in.BitsStored), int(first_in.PixelRepresentation) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        stored_values = np.rint((synthetic - intercept) / slope)
        if stored_values.min() < low or stored_values.max() > high:  # brighter than the source: bits widened
            bits = int(first_in.BitsAllocated)
        assert (int(first_out.BitsStored), int(first_out.HighBit)) == (bits, bits - 1)
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        expected = np.clip(np.rint((synthetic - intercept) / slope), low, high) * slope + intercept
        rebuilt = sitk.GetArrayFromImage(load_volume(tmp_path / "syn").image)
        np.testing.assert_allclose(rebuilt, expected, atol=1e-3)

    def test_values_beyond_the_stored_bits_widen_them(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        """Enhancement brighter than the 12-bit source's range is kept: BitsStored grows to BitsAllocated."""
        assert int(classic_uint16.slices[0].dataset.BitsStored) == 12
        bright = synthetic_from(classic_uint16, gain=3.0, offset=0.0)
        paths = write_synthetic_series(classic_uint16, bright, tmp_path / "syn", series_number=1, **model_kwargs)
        datasets = [pydicom.dcmread(p) for p in paths]
        assert {(int(ds.BitsStored), int(ds.HighBit)) for ds in datasets} == {(16, 15)}
        stored = np.stack([ds.pixel_array for ds in datasets])
        assert stored.max() > 2**12 - 1
        rebuilt = sitk.GetArrayFromImage(load_volume(tmp_path / "syn").image)
        np.testing.assert_allclose(rebuilt, np.rint(sitk.GetArrayFromImage(bright)), atol=1e-3)

    def test_values_beyond_the_allocated_bits_are_clipped(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        huge = synthetic_from(classic_uint16, gain=60.0, offset=0.0)
        paths = write_synthetic_series(classic_uint16, huge, tmp_path / "syn", series_number=1, **model_kwargs)
        stored = np.stack([pydicom.dcmread(p).pixel_array for p in paths])
        assert stored.max() == 2**16 - 1

    def test_window_spans_the_data(self, written: tuple[Volume, list[Dataset]]) -> None:
        source, datasets = written
        values = sitk.GetArrayFromImage(synthetic_from(source))
        center, width = float(datasets[0].WindowCenter), float(datasets[0].WindowWidth)
        assert width > 0
        assert values.min() - 1 <= center - width / 2 < center + width / 2 <= values.max() + 1
        assert {(ds.WindowCenter, ds.WindowWidth) for ds in datasets} == {(datasets[0].WindowCenter, width)}


class TestLabelling:
    def test_header_says_synthetic(self, written: tuple[Volume, list[Dataset]], model: ModelIdentity) -> None:
        _, datasets = written
        ds = datasets[0]
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC"]
        assert ds.SeriesDescription == f"SYNTHETIC T1+C (GadSynth {model.name})"
        assert "SYNTHETIC" in ds.ImageComments
        assert ds.BurnedInAnnotation == "NO"
        assert model.sha256 in ds.DerivationDescription
        assert ds.DerivationCodeSequence[0].CodeValue == "113042"
        assert ds.Manufacturer == "GadSynth"

    def test_contributing_equipment_names_software_and_model(
        self, written: tuple[Volume, list[Dataset]], model: ModelIdentity
    ) -> None:
        source, datasets = written
        items = datasets[0].ContributingEquipmentSequence
        synthesizing = [i for i in items if i.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"]
        assert len(synthesizing) == 1
        item = synthesizing[0]
        assert item.Manufacturer == "GadSynth"
        assert item.ManufacturerModelName == model.name
        assert f"GadSynth {__version__}" in list(item.SoftwareVersions)
        assert model.sha256 in item.ContributionDescription
        acquisition = [i for i in items if i.PurposeOfReferenceCodeSequence[0].CodeValue == "109101"]
        assert [i.Manufacturer for i in acquisition] == [source.slices[0].dataset.Manufacturer]

    def test_configured_number_and_description(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        paths = _write(
            classic_uint16, tmp_path / "syn", model_kwargs, series_number=42, series_description="Synthetic T1 post"
        )
        ds = pydicom.dcmread(paths[0])
        assert (int(ds.SeriesNumber), ds.SeriesDescription) == (42, "Synthetic T1 post")


class TestValidity:
    def test_dciodvfy_reports_no_errors(self, written: tuple[Volume, list[Dataset]], dciodvfy: str) -> None:
        _, datasets = written
        for ds in (datasets[0], datasets[len(datasets) // 2]):
            errors, _ = dciodvfy_errors(dciodvfy, Path(ds.filename))
            assert errors == []

    def test_plain_source_gives_no_warnings(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict, dciodvfy: str
    ) -> None:
        paths = _write(classic_uint16, tmp_path / "syn", model_kwargs)
        assert dciodvfy_errors(dciodvfy, paths[0]) == ([], [])

    def test_every_element_reads_strictly(self, written: tuple[Volume, list[Dataset]]) -> None:
        _, datasets = written
        for ds in datasets:
            read_every_element(Path(ds.filename))

    def test_highdicom_reads_every_slice(self, written: tuple[Volume, list[Dataset]]) -> None:
        _, datasets = written
        for ds in datasets:
            image = hd.imread(ds.filename)
            assert image.number_of_frames == 1
            np.testing.assert_array_equal(image.get_stored_frame(1), ds.pixel_array)
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            np.testing.assert_allclose(image.get_frame(1), ds.pixel_array * slope + intercept)


class TestErrors:
    def test_series_number_must_be_an_int(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        with pytest.raises(TypeError, match=r"series_number must be an int\. Found str"):
            _write(classic_uint16, tmp_path, model_kwargs, series_number="9001")

    def test_series_number_must_be_in_range(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        with pytest.raises(ValueError, match=r"between 0 and 2\*\*31-1\. Found -1"):
            _write(classic_uint16, tmp_path, model_kwargs, series_number=-1)

    def test_description_must_say_synthetic(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        with pytest.raises(ValueError, match=r"must say that the series is synthetic\. Found 'T1 post'"):
            _write(classic_uint16, tmp_path, model_kwargs, series_description="T1 post")

    def test_description_must_fit_a_long_string(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        with pytest.raises(ValueError, match="at most 64 characters"):
            _write(classic_uint16, tmp_path, model_kwargs, series_description="SYNTHETIC " + "x" * 60)

    def test_model_sha256_must_be_hex(self, classic_uint16: Volume, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"sha256 must be 64 lower-case hex digits\. Found 'abc'"):
            write_synthetic_series(
                classic_uint16,
                synthetic_from(classic_uint16),
                tmp_path,
                series_number=1,
                model=ModelIdentity("m", "1", "abc"),
            )

    def test_synthetic_must_lie_on_the_source_grid(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        shifted = synthetic_from(classic_uint16)
        shifted.SetOrigin(tuple(v + 1.0 for v in shifted.GetOrigin()))
        with pytest.raises(ValueError, match=r"must lie on the grid of series .*: origin"):
            write_synthetic_series(classic_uint16, shifted, tmp_path, series_number=1, **model_kwargs)

    def test_synthetic_must_be_finite(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        array = sitk.GetArrayFromImage(synthetic_from(classic_uint16))
        array[0, 0, :3] = np.nan
        broken = sitk.GetImageFromArray(array)
        broken.CopyInformation(classic_uint16.image)
        with pytest.raises(ValueError, match="has 3 non-finite voxels"):
            write_synthetic_series(classic_uint16, broken, tmp_path, series_number=1, **model_kwargs)

    def test_refuses_a_folder_that_holds_dicom(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        _write(classic_uint16, tmp_path / "syn", model_kwargs)
        with pytest.raises(ValueError, match="already holds DICOM files"):
            _write(classic_uint16, tmp_path / "syn", model_kwargs)

    def test_source_without_position_is_an_input_error(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        broken = copy.copy(classic_uint16)
        header = copy.deepcopy(classic_uint16.slices[2].dataset)
        del header.ImagePositionPatient
        broken.slices = [*classic_uint16.slices[:2], SliceRef(**{**vars(classic_uint16.slices[2]), "dataset": header})]
        broken.slices += classic_uint16.slices[3:]
        with pytest.raises(InconsistentGeometryError, match="has no ImagePositionPatient") as caught:
            _write(broken, tmp_path / "syn", model_kwargs)
        assert caught.value.attribute == "ImagePositionPatient"
        assert not any((tmp_path / "syn").glob("*.dcm"))  # checked before the first file is written
        assert caught.value.series_instance_uid == classic_uint16.series.series_instance_uid

    def test_colour_source_is_an_input_error(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        header = copy.deepcopy(classic_uint16.slices[0].dataset)
        header.SamplesPerPixel = 3
        header.PhotometricInterpretation = "RGB"
        broken = copy.copy(classic_uint16)
        broken.slices = [SliceRef(**{**vars(classic_uint16.slices[0]), "dataset": header}), *classic_uint16.slices[1:]]
        with pytest.raises(InputDicomError, match="SamplesPerPixel is 3, expected 1"):
            _write(broken, tmp_path / "syn", model_kwargs)
