"""Tests for the DICOM writer operator: what write_outputs writes per setting, and the operator in a real app."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator, OperatorSpec

from operators.dicom_writer import (
    DicomWriterOperator,
    WriterSettings,
    as_model_identity,
    resolve_inputs,
    write_outputs,
)
from operators.postprocess import SyntheticResult
from operators.registration import RegisteredStudy
from operators.roles import Role
from operators.study import Volume
from operators.writers import ModelIdentity, OutputEntry, OutputKind
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


class TestModelInformation:
    def test_mapping_is_accepted(self) -> None:
        assert as_model_identity({"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256}) == MODEL

    def test_mapping_must_be_complete(self) -> None:
        with pytest.raises(ValueError, match=r"lacks \['sha256'\]"):
            as_model_identity({"name": "m", "version": "1"})

    def test_other_types_are_refused(self) -> None:
        with pytest.raises(TypeError, match=r"must be a ModelIdentity or a mapping\. Found str"):
            as_model_identity("ce-lowdose-v1")


class TestResolveInputs:
    def test_plain_volume_and_image(self, volume: Volume) -> None:
        image = synthetic_from(volume)
        inputs = resolve_inputs(volume, image)
        assert (inputs.source, inputs.synthetic, inputs.other_sources) == (volume, image, [])

    def test_role_dict_gives_t1_pre_and_names_the_others(self, volume: Volume) -> None:
        inputs = resolve_inputs({Role.T1_PRE: volume, Role.T1_LOW_DOSE: volume}, synthetic_from(volume))
        assert inputs.source is volume
        assert inputs.other_sources == [volume.series]

    def test_role_dict_without_t1_pre_is_refused(self, volume: Volume) -> None:
        with pytest.raises(ValueError, match=r"needs the t1_pre volume\. Found roles \['t1_low_dose'\]"):
            resolve_inputs({Role.T1_LOW_DOSE: volume}, synthetic_from(volume))

    def test_registered_study_and_postprocess_result(self, volume: Volume) -> None:
        registered = RegisteredStudy(
            reference=volume, images={Role.T1_PRE: volume.image}, volumes={Role.T1_PRE: volume}
        )
        result = SyntheticResult(
            synthetic=synthetic_from(volume),
            beyond=synthetic_from(volume, gain=2.0),
            enhancement=synthetic_from(volume),
            mask=_mask(volume),
            threshold=1.0,
            noise_sigma=1.0,
            noise_source="test",
            model={"name": "m", "version": "1", "sha256": MODEL.sha256},
        )
        inputs = resolve_inputs(registered, result)
        assert inputs.source is volume
        assert inputs.synthetic is result.synthetic and inputs.synthetic_plus is result.beyond
        assert inputs.enhancement_mask is result.mask
        assert as_model_identity(inputs.model or {}) == ModelIdentity("m", "1", MODEL.sha256)

    def test_explicit_ports_win_over_the_result(self, volume: Volume) -> None:
        result = SyntheticResult(
            synthetic_from(volume), None, synthetic_from(volume), _mask(volume), 1.0, 1.0, "test", {"name": "m"}
        )
        inputs = resolve_inputs(volume, result, model=MODEL, enhancement_mask=None)
        assert inputs.model == MODEL

    def test_other_types_are_refused(self, volume: Volume) -> None:
        with pytest.raises(TypeError, match="Port 'source' must carry a Volume"):
            resolve_inputs("t1_pre", synthetic_from(volume))
        with pytest.raises(TypeError, match="Port 'synthetic' must carry a SimpleITK image"):
            resolve_inputs(volume, sitk.GetArrayFromImage(volume.image))


class _Feed(Operator):  # type: ignore[misc]
    """Emits one source, synthetic, mask and model, as the upstream operators would."""

    def __init__(self, fragment: Any, *args: Any, payload: dict[str, Any], **kwargs: Any) -> None:
        self._payload = payload
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        for name in self._payload:
            spec.output(name)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        for name, value in self._payload.items():
            op_output.emit(value, name)


class _Sink(Operator):  # type: ignore[misc]
    def __init__(self, fragment: Any, *args: Any, received: list[Any], **kwargs: Any) -> None:
        self._received = received
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("written")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        self._received.append(op_input.receive("written"))


class TestOperatorInApplication:
    def test_runs_in_a_monai_deploy_application(self, volume: Volume, tmp_path: Path) -> None:
        received: list[list[OutputEntry]] = []
        payload = {
            "source": volume,
            "synthetic": synthetic_from(volume),
            "enhancement_mask": _mask(volume),
            "model": {"name": "from-port", "version": "2", "sha256": MODEL.sha256},
        }

        class _App(Application):  # type: ignore[misc]
            def compose(self) -> None:
                feed = _Feed(self, CountCondition(self, 1), payload=payload, name="feed")
                writer = DicomWriterOperator(
                    self,
                    output_folder=tmp_path / "out",
                    model=MODEL,
                    settings=WriterSettings(write_secondary_capture=True),
                    name="writer",
                )
                sink = _Sink(self, received=received, name="sink")
                self.add_flow(feed, writer, {(name, name) for name in payload})
                self.add_flow(writer, sink, {("written", "written")})

        _App().run()
        (outputs,) = received
        assert [o.kind for o in outputs] == [
            OutputKind.SYNTHETIC_SERIES,
            OutputKind.SEGMENTATION,
            OutputKind.SECONDARY_CAPTURE,
        ]
        first = pydicom.dcmread(sorted((tmp_path / "out" / "synthetic_t1c").glob("*.dcm"))[0])
        assert first.SeriesDescription == "SYNTHETIC T1+C (GadSynth from-port)"
        assert (tmp_path / "out" / "seg" / "enhancement_seg.dcm").is_file()
        assert (tmp_path / "out" / "sc" / "synthetic_t1c_sc.dcm").is_file()
