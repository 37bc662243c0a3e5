"""Tests for the multi-frame Secondary Capture: validity, synthetic labels (header and burned in), pixels, errors."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import MultiFrameGrayscaleWordSecondaryCaptureImageStorage

from operators.study import Volume
from operators.writers import ModelIdentity, write_secondary_capture
from operators.writers.sc import burn_in_label, patient_orientation
from tests.operators.writers._sources import dciodvfy_errors, read_every_element, synthetic_from


def _write(source: Volume, path: Path, model_kwargs: dict, **options: object) -> pydicom.Dataset:
    options.setdefault("series_number", 9004)
    written = write_secondary_capture(source, synthetic_from(source), path, **model_kwargs, **options)  # type: ignore[arg-type]
    return pydicom.dcmread(written)


def _real_world(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


class TestValidity:
    def test_dciodvfy_reports_no_errors(
        self, source: Volume, tmp_path: Path, model_kwargs: dict, dciodvfy: str
    ) -> None:
        _write(source, tmp_path / "sc.dcm", model_kwargs)
        errors, _ = dciodvfy_errors(dciodvfy, tmp_path / "sc.dcm")
        assert errors == []

    def test_plain_source_gives_no_warnings(
        self, source: Volume, tmp_path: Path, model_kwargs: dict, dciodvfy: str
    ) -> None:
        _write(source, tmp_path / "sc.dcm", model_kwargs)
        _, warnings = dciodvfy_errors(dciodvfy, tmp_path / "sc.dcm")
        # The only warning allowed is the real XA30 data's one-component PatientName, copied as it is.
        assert [w for w in warnings if "Retired Person Name form" not in w] == []

    def test_every_element_reads_strictly(self, source: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        _write(source, tmp_path / "sc.dcm", model_kwargs)
        read_every_element(tmp_path / "sc.dcm")

    def test_highdicom_reads_every_frame(self, source: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        ds = _write(source, tmp_path / "sc.dcm", model_kwargs)
        image = hd.imread(tmp_path / "sc.dcm")
        assert image.number_of_frames == len(source.slices) == int(ds.NumberOfFrames)
        assert ds.SOPClassUID == MultiFrameGrayscaleWordSecondaryCaptureImageStorage
        np.testing.assert_array_equal(image.get_stored_frame(1), ds.pixel_array[0])


class TestLabelling:
    def test_header_says_synthetic(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict, model: ModelIdentity
    ) -> None:
        ds = _write(classic_uint16, tmp_path / "sc.dcm", model_kwargs)
        assert ds.ConversionType == "SYN"
        assert ds.SeriesDescription == f"SYNTHETIC T1+C SC (GadSynth {model.name})"
        assert "SYNTHETIC" in ds.ImageComments
        assert model.sha256 in ds.DerivationDescription
        assert ds.BurnedInAnnotation == "NO"
        assert ds.Modality == "OT"
        assert int(ds.SeriesNumber) == 9004
        assert ds.StudyInstanceUID == classic_uint16.slices[0].dataset.StudyInstanceUID
        assert ds.PatientID == classic_uint16.slices[0].dataset.PatientID

    def test_references_every_source_slice_in_order(self, enhanced: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        ds = _write(enhanced, tmp_path / "sc.dcm", model_kwargs)
        refs = [(i.ReferencedSOPInstanceUID, i.ReferencedFrameNumber) for i in ds.SourceImageSequence]
        assert refs == [(ref.sop_instance_uid, ref.frame_number) for ref in enhanced.slices]
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == enhanced.series.series_instance_uid

    def test_label_is_burned_into_every_frame(self, enhanced: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        labelled = _write(enhanced, tmp_path / "labelled.dcm", model_kwargs)
        plain = _write(enhanced, tmp_path / "plain.dcm", model_kwargs, burn_in=False)
        differs = labelled.pixel_array != plain.pixel_array
        corner = differs[:, 1:10, 1:56]  # the 9 x 55 box of the 5x7 glyphs at scale 1
        assert corner.any(axis=(1, 2)).all()
        assert not differs[:, 10:, :].any() and not differs[:, :, 56:].any()
        lit = labelled.pixel_array[:, 1:10, 1:56]
        assert set(np.unique(lit)) == {lit.min(), lit.max()}

    def test_small_images_keep_their_pixels(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        labelled = _write(classic_uint16, tmp_path / "labelled.dcm", model_kwargs)
        plain = _write(classic_uint16, tmp_path / "plain.dcm", model_kwargs, burn_in=False)
        np.testing.assert_array_equal(labelled.pixel_array, plain.pixel_array)


class TestPixels:
    def test_real_world_values_round_trip(self, source: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        ds = _write(source, tmp_path / "sc.dcm", model_kwargs, burn_in=False)
        expected = sitk.GetArrayFromImage(synthetic_from(source)).astype(np.float64)
        assert float(ds.RescaleSlope) == 1.0
        np.testing.assert_allclose(_real_world(ds), expected, atol=0.5 + 1e-6)

    def test_slice_locations_and_spacing(self, enhanced: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        ds = _write(enhanced, tmp_path / "sc.dcm", model_kwargs)
        spacing = enhanced.image.GetSpacing()
        np.testing.assert_allclose([float(v) for v in ds.SliceLocationVector], np.arange(96) * spacing[2], atol=1e-3)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([spacing[1], spacing[0]])
        assert list(ds.PatientOrientation) == ["P", "F"]


class TestHelpers:
    @pytest.mark.parametrize(
        ("direction", "expected"),
        [
            ((1, 0, 0, 0, 1, 0, 0, 0, 1), ["L", "P"]),
            ((0, 0, 1, 1, 0, 0, 0, -1, 0), ["P", "F"]),
            ((-1, 0, 0, 0, 0, 1, 0, -1, 0), ["R", "F"]),
        ],
    )
    def test_patient_orientation(self, direction: tuple[float, ...], expected: list[str]) -> None:
        assert patient_orientation(direction) == expected

    def test_label_does_not_fit_a_tiny_image(self) -> None:
        frames = np.zeros((2, 8, 40), dtype=np.uint16)
        assert burn_in_label(frames, foreground=9, background=1) is False
        assert not frames.any()


class TestErrors:
    def test_description_must_say_synthetic(self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict) -> None:
        with pytest.raises(ValueError, match=r"must say that the series is synthetic\. Found 'T1 SC'"):
            _write(classic_uint16, tmp_path / "sc.dcm", model_kwargs, series_description="T1 SC")

    def test_synthetic_must_lie_on_the_source_grid(
        self, classic_uint16: Volume, tmp_path: Path, model_kwargs: dict
    ) -> None:
        other = sitk.Image(5, 5, 5, sitk.sitkFloat32)
        with pytest.raises(ValueError, match=r"size \(5, 5, 5\) != source size \(20, 24, 8\)"):
            write_secondary_capture(classic_uint16, other, tmp_path / "sc.dcm", series_number=1, **model_kwargs)
