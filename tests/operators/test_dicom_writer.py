"""Tests for the DICOM writer operator: what write_outputs writes per setting, and the operator in a real app."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from operators.dicom_writer import (
    WriterSettings,
    write_outputs,
)
from operators.study import Volume
from operators.writers import ModelIdentity, OutputKind
from tests.operators.writers._sources import load_volume, synthetic_from, write_classic_series

MODEL = ModelIdentity("ce-lowdose-v1", "1.0.0", hashlib.sha256(b"gadsynth operator tests").hexdigest())


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("t1_pre")
    write_classic_series(folder, signed=False, seed=3)
    return load_volume(folder)


def _mask(volume: Volume) -> np.ndarray:
    values = sitk.GetArrayFromImage(volume.image)
    return values > np.percentile(values, 80)


class TestWriteOutputs:
    def test_defaults_write_the_series_and_the_seg(self, volume: Volume, tmp_path: Path) -> None:
        outputs = write_outputs(volume, synthetic_from(volume), tmp_path, model=MODEL, enhancement_mask=_mask(volume))
        assert [o.kind for o in outputs] == [OutputKind.SYNTHETIC_SERIES, OutputKind.SEGMENTATION]
        series, seg = outputs
        assert (series.series_number, series.n_files) == (9001, len(volume.slices))
        assert sorted(Path(series.path).glob("*.dcm")) and Path(seg.path).is_file()
        assert seg.series_number == 9003
        assert pydicom.dcmread(seg.path).SeriesInstanceUID == seg.series_instance_uid

    def test_settings_add_beyond_dose_and_secondary_capture(self, volume: Volume, tmp_path: Path) -> None:
        settings = WriterSettings(
            synthetic_series_number=501,
            beyond_dose_series_number=502,
            sc_series_number=504,
            write_beyond_standard_dose=True,
            write_secondary_capture=True,
        )
        outputs = write_outputs(
            volume,
            synthetic_from(volume),
            tmp_path,
            model=MODEL,
            settings=settings,
            synthetic_plus=synthetic_from(volume, gain=1.5),
        )
        by_kind = {o.kind: o for o in outputs}
        assert set(by_kind) == {
            OutputKind.SYNTHETIC_SERIES,
            OutputKind.SYNTHETIC_PLUS_SERIES,
            OutputKind.SECONDARY_CAPTURE,
        }
        assert [by_kind[k].series_number for k in by_kind] == [501, 502, 504]
        plus = pydicom.dcmread(sorted(Path(by_kind[OutputKind.SYNTHETIC_PLUS_SERIES].path).glob("*.dcm"))[0])
        assert plus.SeriesDescription.startswith("SYNTHETIC T1+C BEYOND DOSE")
        assert len({o.series_instance_uid for o in outputs}) == 3

    def test_beyond_dose_is_skipped_unless_enabled(self, volume: Volume, tmp_path: Path) -> None:
        outputs = write_outputs(
            volume, synthetic_from(volume), tmp_path, model=MODEL, synthetic_plus=synthetic_from(volume)
        )
        assert [o.kind for o in outputs] == [OutputKind.SYNTHETIC_SERIES]
