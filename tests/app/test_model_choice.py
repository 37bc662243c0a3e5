"""The model picked by the roles a study has: low-dose, zero-dose (run end to end), not eligible, or named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydicom import dcmread

from app.config import load_settings
from app.model_choice import MODEL_RULES, ModelChoice, choose_by_roles, choose_named
from app.runner import REPORT_NAME, run_study
from operators.errors import NoMatchingSeriesError
from operators.model_manifest import ModelIntegrityError, ModelManifestError, ModelMode
from operators.series_selector import select_roles
from operators.study_loader import load_study
from tests.conftest import REPO
from training.export import differential_manifest_fields, direct_manifest_fields, write_model_folder
from training.networks import DifferentialUNet, DifferentialUNetConfig, DirectUNet, DirectUNetConfig
from training.phantom import PhantomOptions, PhantomStudy, generate_study

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run_app(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )


def _series_dir(study: PhantomStudy, role: str) -> Path:
    directory = study.series[role].directory
    assert directory is not None, f"the phantom wrote no {role} series"
    return directory


def _run_named(study: PhantomStudy, out: Path, models: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`python -m app` on a study's DICOM folder with the model named (the automatic choice skipped)."""
    return _run_app("-i", str(study.dicom_dir), "-o", str(out), "-m", str(models), "--model-name", name)


def _dciodvfy_errors(dciodvfy: str, path: Path) -> list[str]:
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _report(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / REPORT_NAME).read_text())
    return data


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with every model of the choice table: tiny untrained networks and the linear baseline."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("models")
        torch.manual_seed(0)
        differential = DifferentialUNet(DifferentialUNetConfig(base_width=4, embedding_dim=16)).eval()
        write_model_folder(
            differential,
            root / "ce-lowdose-v1",
            differential_manifest_fields(name="ce-lowdose-v1", version="0.0.1", gamma=1.0),
        )
        direct = DirectUNet(DirectUNetConfig.zero_dose(base_width=4, levels=2)).eval()
        fields = direct_manifest_fields(
            name="ce-zerodose-v1", version="0.0.1", inputs=direct.config.inputs, spatial_divisor=4
        )
        write_model_folder(direct, root / "ce-zerodose-v1", fields)
        with_map = DirectUNet(DirectUNetConfig.zero_dose(t1_map=True, base_width=4, levels=2)).eval()
        fields = direct_manifest_fields(
            name="ce-zerodose-t1map-v1", version="0.0.1", inputs=with_map.config.inputs, spatial_divisor=4
        )
        write_model_folder(with_map, root / "ce-zerodose-t1map-v1", fields)
    finally:
        torch.set_num_threads(threads)
    shutil.copytree(REPO / "models" / "ce-baseline-linear", root / "ce-baseline-linear")
    return root


def _subset(models: Path, folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(models / name, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def without_lowdose(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The baseline and the zero-dose model, but not ce-lowdose-v1."""
    return _subset(models, tmp_path_factory.mktemp("no-ld") / "models", "ce-baseline-linear", "ce-zerodose-v1")


@pytest.fixture(scope="module")
def low_dose(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """Every series: pre, low-dose and standard-dose T1, T2, FLAIR, ADC."""
    return generate_study(PhantomOptions(seed=21, size="small"), tmp_path_factory.mktemp("ld"))


@pytest.fixture(scope="module")
def zero_dose(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """No contrast agent at all: T1 pre, T2 and FLAIR."""
    return generate_study(
        PhantomOptions(seed=22, size="small", roles=("t1_pre", "t2", "flair")), tmp_path_factory.mktemp("zd")
    )


@pytest.fixture(scope="module")
def t1_only(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """Only a pre-contrast T1: no model fits."""
    return generate_study(PhantomOptions(seed=23, size="small", roles=("t1_pre",)), tmp_path_factory.mktemp("t1"))


def choose_model(study_dir: Path, models_dir: Path, name: str | None = None) -> ModelChoice:
    """The choice the pipeline's choose_model stage makes for a study (after loading and selecting it)."""
    if name:
        return choose_named(models_dir, name)
    return choose_by_roles(select_roles(load_study(study_dir), required=()), models_dir)


class TestTable:
    def test_order_and_roles(self) -> None:
        assert [(rule.name, rule.models) for rule in MODEL_RULES] == [
            ("low-dose", ("ce-lowdose-v1", "ce-baseline-linear")),
            ("zero-dose", ("ce-zerodose-v1",)),
        ]
        assert all("t1_pre" in rule.roles for rule in MODEL_RULES)


class TestLowDoseStudy:
    def test_lowdose_model_chosen(self, low_dose: PhantomStudy, models: Path) -> None:
        choice = choose_model(low_dose.dicom_dir, models)
        assert choice.require().name == "ce-lowdose-v1"
        assert choice.require().mode == ModelMode.LOW_DOSE_DIFFERENTIAL
        assert choice.info.chosen == "ce-lowdose-v1" and not choice.info.named
        assert [(c.name, c.chosen) for c in choice.info.candidates] == [("ce-lowdose-v1", True)]
        found = choice.info.roles_found
        assert found["t1_low_dose"].series_instance_uid == low_dose.series["t1_low_dose"].series_instance_uid
        assert found["t1_pre"].series_instance_uid == low_dose.series["t1_pre"].series_instance_uid
        assert {"t2", "flair"} <= set(found)

    def test_falls_back_to_the_baseline(self, low_dose: PhantomStudy, without_lowdose: Path) -> None:
        choice = choose_model(low_dose.dicom_dir, without_lowdose)
        assert choice.require().name == "ce-baseline-linear"
        first, second = choice.info.candidates
        assert (first.name, first.installed, first.missing_roles, first.chosen) == ("ce-lowdose-v1", False, [], False)
        assert (second.name, second.chosen) == ("ce-baseline-linear", True)
        assert "ce-lowdose-v1 is not installed" in choice.info.reason

    def test_tampered_choice_is_rejected_not_skipped(
        self, low_dose: PhantomStudy, models: Path, tmp_path: Path
    ) -> None:
        shutil.copytree(models / "ce-lowdose-v1", tmp_path / "ce-lowdose-v1")
        (tmp_path / "ce-baseline-linear").symlink_to(models / "ce-baseline-linear", target_is_directory=True)
        with (tmp_path / "ce-lowdose-v1" / "model.onnx").open("ab") as handle:
            handle.write(b"\0")
        with pytest.raises(ModelIntegrityError, match=r"Model 'ce-lowdose-v1': sha256 of .* expected"):
            choose_model(low_dose.dicom_dir, tmp_path)


@pytest.fixture(scope="module")
def zero_dose_run(zero_dose: PhantomStudy, models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zd-out")
    result = _run_app("-i", str(zero_dose.dicom_dir), "-o", str(out), "-m", str(models))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


class TestZeroDoseStudy:
    def test_zero_dose_model_chosen_and_recorded(self, zero_dose_run: Path, zero_dose: PhantomStudy) -> None:
        report = _report(zero_dose_run)
        assert report["status"] == "ok"
        assert report["model"]["name"] == "ce-zerodose-v1"
        choice = report["model_choice"]
        assert choice["chosen"] == "ce-zerodose-v1" and choice["named"] is False
        missing = {c["name"]: c["missing_roles"] for c in choice["candidates"]}
        assert missing == {
            "ce-lowdose-v1": ["t1_low_dose"],
            "ce-baseline-linear": ["t1_low_dose"],
            "ce-zerodose-v1": [],
        }
        assert set(choice["roles_found"]) == {"t1_pre", "t2", "flair"}
        assert choice["roles_found"]["t2"]["series_instance_uid"] == zero_dose.series["t2"].series_instance_uid
        assert set(report["roles"]) == {"t1_pre", "t2", "flair"}
        assert {"t2", "flair"} <= set(report["registration"])
        assert {"choose_model", "register", "normalize", "infer", "write_dicom"} <= set(report["timings_s"])

    def test_output_is_labelled_synthetic(self, zero_dose_run: Path, zero_dose: PhantomStudy) -> None:
        source = list(_series_dir(zero_dose, "t1_pre").glob("*.dcm"))
        study_uid = dcmread(source[0], stop_before_pixels=True).StudyInstanceUID
        synthetic = [dcmread(p) for p in sorted((zero_dose_run / "synthetic_t1c").glob("*.dcm"))]
        assert len(synthetic) == len(source)
        for ds in synthetic:
            assert "SYNTHETIC" in ds.SeriesDescription.upper()
            assert "ce-zerodose-v1" in ds.SeriesDescription
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert "Not acquired" in ds.DerivationDescription
            assert ds.StudyInstanceUID == study_uid

    def test_outside_the_brain_is_the_pre_contrast_head(self, zero_dose_run: Path, zero_dose: PhantomStudy) -> None:
        """The direct model is blind outside the brain mask: the synthetic image keeps the pre-contrast head there
        (the tiny untrained model's zero-initialized residual is also the identity inside the brain)."""

        def volume(files: list[Path]) -> np.ndarray:
            slices = sorted((dcmread(p) for p in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
            return np.stack(
                [
                    ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
                    for ds in slices
                ]
            )

        pre = volume(sorted(_series_dir(zero_dose, "t1_pre").glob("*.dcm")))
        synthetic = volume(sorted((zero_dose_run / "synthetic_t1c").glob("*.dcm")))
        bright = pre > np.percentile(pre[pre > 0], 75)  # brain, scalp and fat alike
        assert float(np.mean(synthetic[bright] >= 0.5 * pre[bright])) > 0.95

    def test_every_output_passes_dciodvfy(self, zero_dose_run: Path, dciodvfy: str) -> None:
        files = sorted(zero_dose_run.rglob("*.dcm"))
        assert files
        for path in files:
            errors = _dciodvfy_errors(dciodvfy, path)
            assert not errors, f"{path}: {errors}"


class TestNotEligible:
    def test_t1_only_exits_2_with_missing_roles(self, t1_only: PhantomStudy, models: Path, tmp_path: Path) -> None:
        result = _run_app("-i", str(t1_only.dicom_dir), "-o", str(tmp_path), "-m", str(models))
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        report = _report(tmp_path)
        assert report["status"] == "not_eligible"
        assert report["failed_stage"] == "choose_model"
        assert report["error"]["error"] == "NoMatchingSeriesError"
        assert report["error"]["found"] == "roles t1_pre"
        message = report["error"]["message"]
        assert "not eligible" in message
        assert t1_only.series["t1_pre"].series_instance_uid in message
        assert "ce-zerodose-v1 (zero-dose) needs t2, flair" in message
        choice = report["model_choice"]
        assert choice["chosen"] is None
        missing = {c["name"]: c["missing_roles"] for c in choice["candidates"]}
        assert missing == {
            "ce-lowdose-v1": ["t1_low_dose"],
            "ce-baseline-linear": ["t1_low_dose"],
            "ce-zerodose-v1": ["t2", "flair"],
        }
        found = choice["roles_found"]["t1_pre"]
        assert found["series_instance_uid"] == t1_only.series["t1_pre"].series_instance_uid
        assert (
            found["description"]
            == dcmread(next(_series_dir(t1_only, "t1_pre").glob("*.dcm")), stop_before_pixels=True).SeriesDescription
        )
        assert report["roles"]["t1_pre"]["series_instance_uid"] == found["series_instance_uid"]
        assert report["model"] is None
        assert not list(tmp_path.rglob("*.dcm"))
        assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_NAME]

    def test_fitting_model_not_installed(self, zero_dose: PhantomStudy, models: Path, tmp_path: Path) -> None:
        only_baseline = _subset(models, tmp_path / "models", "ce-baseline-linear")
        choice = choose_model(zero_dose.dicom_dir, only_baseline)
        assert choice.manifest is None
        with pytest.raises(NoMatchingSeriesError, match=r"ce-zerodose-v1 \(zero-dose\) fits but is not installed"):
            choice.require()

    def test_no_model_of_the_table_installed(self, zero_dose: PhantomStudy, models: Path, tmp_path: Path) -> None:
        (tmp_path / "models").mkdir()
        shutil.copytree(models / "ce-zerodose-v1", tmp_path / "models" / "other-model")
        with pytest.raises(
            ModelManifestError, match=r"No model for the automatic choice .* Available: \['other-model'\]"
        ):
            choose_model(zero_dose.dicom_dir, tmp_path / "models")


class TestNamedModel:
    def test_name_overrides_the_choice(self, low_dose: PhantomStudy, models: Path) -> None:
        choice = choose_model(low_dose.dicom_dir, models, "ce-zerodose-v1")
        assert choice.require().name == "ce-zerodose-v1"
        assert choice.info.named and choice.info.candidates == [] and choice.selection is None

    def test_named_model_lacking_roles_is_refused_at_model_choice(
        self, t1_only: PhantomStudy, models: Path, tmp_path: Path
    ) -> None:
        settings = load_settings(models_dir=models, model="ce-baseline-linear")
        report = run_study(t1_only.dicom_dir, tmp_path, settings=settings)
        assert report.exit_code == 2
        assert report.failed_stage == "choose_model"
        assert report.error is not None and report.error.error == "NoMatchingSeriesError"
        assert "No series fits role t1_low_dose" in report.error.message
        assert report.model_choice is not None and report.model_choice.named
        assert report.model_choice.chosen == "ce-baseline-linear"
        assert not list(tmp_path.rglob("*.dcm"))


@pytest.fixture(scope="module")
def t1_map_study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """No contrast: T1 pre, its quantitative T1 map, T2 and FLAIR (GE naming)."""
    options = PhantomOptions(seed=24, size="small", vendor="ge", roles=("t1_pre", "t1_map", "t2", "flair"))
    return generate_study(options, tmp_path_factory.mktemp("t1map"))


class TestT1MapModel:
    def test_not_chosen_automatically(self, t1_map_study: PhantomStudy, models: Path) -> None:
        """It does no better than ce-zerodose-v1 (README): a study with a T1 map still gets ce-zerodose-v1 unless
        the T1-map model is named; the map is found and reported either way."""
        choice = choose_model(t1_map_study.dicom_dir, models)
        assert choice.require().name == "ce-zerodose-v1"
        uid = t1_map_study.series["t1_map"].series_instance_uid
        assert choice.info.roles_found["t1_map"].series_instance_uid == uid

    def test_runs_from_dicom_with_the_map_in_its_unit(
        self, t1_map_study: PhantomStudy, models: Path, tmp_path: Path, dciodvfy: str
    ) -> None:
        result = _run_named(t1_map_study, tmp_path, models, "ce-zerodose-t1map-v1")
        assert result.returncode == 0, result.stderr[-3000:]
        report = _report(tmp_path)
        assert report["status"] == "ok"
        assert report["roles"]["t1_map"]["series_instance_uid"] == t1_map_study.series["t1_map"].series_instance_uid
        assert "t1_map" in report["registration"]
        synthetic = sorted((tmp_path / "synthetic_t1c").glob("*.dcm"))
        assert synthetic
        ds = dcmread(synthetic[0])
        assert "SYNTHETIC" in ds.SeriesDescription and "ce-zerodose-t1map-v1" in ds.SeriesDescription
        for path in sorted(tmp_path.rglob("*.dcm"))[::7]:
            errors = _dciodvfy_errors(dciodvfy, path)
            assert not errors, f"{path}: {errors}"

    def test_a_study_without_a_map_is_refused_naming_it(
        self, zero_dose: PhantomStudy, models: Path, tmp_path: Path
    ) -> None:
        result = _run_named(zero_dose, tmp_path, models, "ce-zerodose-t1map-v1")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        report = _report(tmp_path)
        assert "t1_map" in report["error"]["message"]
        assert not (tmp_path / "synthetic_t1c").exists()
