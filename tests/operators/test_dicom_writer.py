"""Tests for the DICOM writer operator: what write_outputs writes per setting, and the operator in a real app."""

from __future__ import annotations

import copy
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
    def test_defaults_write_the_series_the_seg_and_the_sr(self, volume: Volume, tmp_path: Path) -> None:
        outputs = write_outputs(volume, synthetic_from(volume), tmp_path, model=MODEL, enhancement_mask=_mask(volume))
        assert [o.kind for o in outputs] == [
            OutputKind.SYNTHETIC_SERIES,
            OutputKind.SEGMENTATION,
            OutputKind.STRUCTURED_REPORT,
        ]
        series, seg, sr = outputs
        assert (series.series_number, series.n_files) == (9001, len(volume.slices))
        assert sorted(Path(series.path).glob("*.dcm")) and Path(seg.path).is_file()
        assert seg.series_number == 9003
        assert pydicom.dcmread(seg.path).SeriesInstanceUID == seg.series_instance_uid
        assert Path(sr.path) == tmp_path / "sr" / "report_sr.dcm"
        assert (sr.series_number, sr.sop_class_uid, sr.n_files) == (9005, "1.2.840.10008.5.1.4.1.1.88.34", 1)
        assert pydicom.dcmread(sr.path).SeriesInstanceUID == sr.series_instance_uid

    def test_sr_lists_the_warnings_given_and_the_writers_own(self, volume: Volume, tmp_path: Path) -> None:
        warnings = ["dose assumed"]
        blanked = copy.deepcopy(volume)
        for ref in blanked.slices:
            ref.dataset.PatientSex = "0000"  # invalid: the header cleaning blanks it and says so
        outputs = write_outputs(
            blanked,
            synthetic_from(volume),
            tmp_path,
            model=MODEL,
            enhancement_mask=_mask(volume),
            warnings=warnings,
        )
        assert warnings[0] == "dose assumed" and len(warnings) == 2 and "PatientSex" in warnings[1]
        sr = pydicom.dcmread(outputs[-1].path)
        texts = [i.TextValue for i in sr.ContentSequence[-1].ContentSequence]
        assert [t for t in texts if t.startswith("Warning: ")] == [f"Warning: {w}" for w in warnings]

    def test_sr_number_is_configured_and_the_sr_can_be_turned_off(self, volume: Volume, tmp_path: Path) -> None:
        mask = _mask(volume)
        outputs = write_outputs(
            volume,
            synthetic_from(volume),
            tmp_path / "a",
            model=MODEL,
            settings=WriterSettings(sr_series_number=605),
            enhancement_mask=mask,
        )
        assert outputs[-1].kind is OutputKind.STRUCTURED_REPORT and outputs[-1].series_number == 605
        outputs = write_outputs(
            volume,
            synthetic_from(volume),
            tmp_path / "b",
            model=MODEL,
            settings=WriterSettings(write_sr=False),
            enhancement_mask=mask,
        )
        assert OutputKind.STRUCTURED_REPORT not in [o.kind for o in outputs]
        assert not (tmp_path / "b" / "sr").exists()

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
