"""The writers on sources written by the phantom's DICOM exporter: each vendor flavour, classic and enhanced."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from operators.study import Volume
from operators.writers import write_enhancement_seg, write_secondary_capture, write_synthetic_series
from tests.operators.writers._sources import dciodvfy_errors, load_volume, synthetic_from
from training.phantom.dicom_export import write_series
from training.phantom.types import Protocol, SimulatedSeries, StudyHeader

_PROTOCOL = Protocol(
    role="t1_pre",
    description="t1_mprage_pre",
    series_number=5,
    sequence_name="*tfl3d1_16ns",
    mr_acquisition_type="3D",
    scanning_sequence="GR\\IR",
    sequence_variant="SK\\SP\\MP",
    repetition_time_ms=1900.0,
    echo_time_ms=2.3,
    inversion_time_ms=900.0,
    flip_angle_deg=9.0,
    image_type=("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
    acquisition_time=dt.time(10, 5),
)


def _phantom_source(folder: Path, vendor: str, output_format: str) -> Volume:
    """A small oblique t1_pre series written by the phantom exporter, loaded back as a volume."""
    pixels = np.random.default_rng(7).integers(0, 3000, size=(6, 40, 36)).astype(np.uint16)
    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((1.0, 1.1, 3.0))
    image.SetOrigin((-20.0, 30.0, 10.0))
    angle = np.deg2rad(12.0)
    image.SetDirection((1, 0, 0, 0, np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle)))
    study = StudyHeader(
        patient_name="Phantom^One",
        patient_id="PH1",
        patient_birth_date="19800101",
        patient_sex="F",
        patient_weight_kg=70.0,
        patient_size_m=1.7,
        study_instance_uid=generate_uid(),
        frame_of_reference_uid=generate_uid(),
        study_date=dt.date(2024, 1, 2),
        study_time=dt.time(10, 0),
        accession_number="A1",
        vendor=vendor,  # type: ignore[arg-type]
        field_strength_t=3.0,
    )
    series = SimulatedSeries(_PROTOCOL, image, generate_uid(), slice_thickness_mm=3.0)
    write_series(series, study, folder, output_format=output_format)  # type: ignore[arg-type]
    return load_volume(folder)


@pytest.mark.parametrize("output_format", ["classic", "enhanced"])
@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips"])
class TestPhantomVendors:
    def test_every_output_is_clean(
        self, vendor: str, output_format: str, tmp_path: Path, model_kwargs: dict, dciodvfy: str
    ) -> None:
        source = _phantom_source(tmp_path / "src", vendor, output_format)
        mask = sitk.GetArrayFromImage(source.image) > 2500
        outputs = [
            write_synthetic_series(source, synthetic_from(source), tmp_path / "mr", series_number=1, **model_kwargs)[0],
            write_enhancement_seg(source, mask, tmp_path / "seg.dcm", series_number=2, **model_kwargs),
            write_secondary_capture(
                source, synthetic_from(source), tmp_path / "sc.dcm", series_number=3, **model_kwargs
            ),
        ]
        for path in outputs:
            assert dciodvfy_errors(dciodvfy, path) == ([], []), path.name

    def test_synthetic_series_keeps_the_grid(
        self, vendor: str, output_format: str, tmp_path: Path, model_kwargs: dict
    ) -> None:
        source = _phantom_source(tmp_path / "src", vendor, output_format)
        write_synthetic_series(source, synthetic_from(source), tmp_path / "mr", series_number=1, **model_kwargs)
        rebuilt = load_volume(tmp_path / "mr")
        assert rebuilt.image.GetSize() == source.image.GetSize()
        assert rebuilt.image.GetOrigin() == pytest.approx(source.image.GetOrigin(), abs=1e-4)
        assert rebuilt.image.GetDirection() == pytest.approx(source.image.GetDirection(), abs=1e-6)
        assert rebuilt.slices[0].dataset.FrameOfReferenceUID == source.slices[0].dataset.FrameOfReferenceUID
