"""The pipeline with a model folder that has an error model and an input-distribution reference: the uncertainty
series, the SEG's low-confidence segment, the marks of a study outside the validated range, and its refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

from app.config import load_settings
from app.pipeline import Pipeline, PipelineRequest, PipelineResult
from operators.ood import OOD_FILE
from operators.uncertainty import UNCERTAINTY_FILE, UncertaintyModel
from tests.conftest import REPO
from tests.operators.writers._sources import dciodvfy_errors
from training.phantom import PhantomOptions, PhantomStudy, generate_study

MODEL = "ce-lowdose-v1"
#: A reference that a 4 mm study is outside of (voxels of 1 to 2 mm only).
NARROW = {
    "schema_version": 1,
    "threshold": 3.0,
    "reference": "test: 1 to 2 mm only",
    "ranges": {"voxel_mm_max": {"low": 1.0, "high": 2.0, "scale": 0.25, "n": 2}},
}
ERROR_MODEL = UncertaintyModel(
    weights={"abs_contrast": 0.4, "linear_disagreement": 0.03, "local_noise": 0.06}, const=0.0, low_confidence_std=0.1
)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    return generate_study(PhantomOptions(seed=11, size="small"), tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped model with this module's error model and narrow reference."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / MODEL, root / MODEL)
    (root / MODEL / OOD_FILE).write_text(json.dumps(NARROW))
    (root / MODEL / UNCERTAINTY_FILE).write_text(json.dumps(ERROR_MODEL.to_dict()))
    return root


def _run(models: Path, study: PhantomStudy, out: Path, **settings: object) -> PipelineResult:
    pipeline = Pipeline(load_settings(models_dir=models, model=MODEL, **settings))
    return pipeline.run(PipelineRequest(study_dir=study.dicom_dir, output_dir=out, preview=True))


@pytest.fixture(scope="module")
def marked(models: Path, study: PhantomStudy, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("marked") / "out"
    result = _run(models, study, out)
    assert result.exit_code == 0, result.report.error
    return out, json.loads((out / "report.json").read_text())


class TestMarkedResult:
    def test_report_carries_the_verdict_and_the_uncertainty(self, marked: tuple[Path, dict]) -> None:
        _, report = marked
        ood = report["extra"]["ood"]
        assert ood["outside_validated_range"] is True and ood["worst_feature"] == "voxel_mm_max"
        assert ood["score"] == pytest.approx((4.0 - 2.0) / 0.25)
        assert any("outside the validated range" in w for w in report["warnings"])
        summary = report["extra"]["uncertainty"]
        assert 0 < summary["brain"]["median"] <= summary["brain"]["p95"]
        assert summary["enhancement"]["median"] > summary["brain"]["median"]  # error grows with the contrast
        assert summary["low_confidence_voxels"] > 0
        assert "uncertainty" in report["timings_s"] and "assess_inputs" in report["timings_s"]

    def test_series_descriptions_say_unvalidated_and_synthetic(self, marked: tuple[Path, dict]) -> None:
        out, report = marked
        kinds = {o["kind"]: o for o in report["outputs"]}
        assert {"synthetic_series", "uncertainty_series", "segmentation", "structured_report"} <= set(kinds)
        synthetic = dcmread(next((out / "synthetic_t1c").glob("*.dcm")), stop_before_pixels=True)
        assert synthetic.SeriesDescription == f"SYNTHETIC UNVALIDATED T1+C (GadSynth {MODEL})"
        uncertainty = dcmread(next((out / "uncertainty").glob("*.dcm")), stop_before_pixels=True)
        assert uncertainty.SeriesDescription == f"SYNTHETIC UNVALIDATED UNCERTAINTY SD (GadSynth {MODEL})"
        assert list(uncertainty.ImageType) == ["DERIVED", "SECONDARY", "OTHER", "SYNTHETIC", "UNCERTAINTY"]
        assert uncertainty.ImageComments.startswith("UNCERTAINTY MAP of a SYNTHETIC IMAGE")
        assert uncertainty.SeriesNumber == 9006 and kinds["uncertainty_series"]["n_files"] == 48

    def test_seg_has_the_low_confidence_segment(self, marked: tuple[Path, dict]) -> None:
        out, _ = marked
        seg = dcmread(out / "seg" / "enhancement_seg.dcm")
        labels = [item.SegmentLabel for item in seg.SegmentSequence]
        assert labels == ["Predicted contrast enhancement", "Low confidence"]
        numbers = {
            int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            for f in seg.PerFrameFunctionalGroupsSequence
        }
        assert numbers == {1, 2}

    def test_every_new_object_is_valid_dicom(self, marked: tuple[Path, dict], dciodvfy: str) -> None:
        out, _ = marked
        for path in (
            next((out / "uncertainty").glob("*.dcm")),
            out / "seg" / "enhancement_seg.dcm",
            out / "sr" / "report_sr.dcm",
        ):
            errors, _ = dciodvfy_errors(dciodvfy, path)
            assert errors == [], (path, errors)


class TestRefusal:
    def test_refused_before_inference_with_no_output(self, models: Path, study: PhantomStudy, tmp_path: Path) -> None:
        result = _run(models, study, tmp_path / "out", ood_action="refuse")
        assert result.exit_code == 2
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["status"] == "not_eligible" and report["failed_stage"] == "assess_inputs"
        error = report["error"]
        assert error["error"] == "OutOfDistributionError" and error["attribute"] == "voxel_mm_max"
        assert error["expected"] == "1 to 2" and error["found"] == "4"
        assert "infer" not in report["timings_s"]
        assert not list((tmp_path / "out").rglob("*.dcm"))

    def test_off_does_not_assess(self, models: Path, study: PhantomStudy, tmp_path: Path) -> None:
        result = _run(models, study, tmp_path / "out", ood_action="off", uncertainty=False)
        assert result.exit_code == 0
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert "ood" not in report["extra"] and "uncertainty" not in report["extra"]
        assert not (tmp_path / "out" / "uncertainty").exists()
