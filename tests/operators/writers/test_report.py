"""Tests for report.json: the PipelineReport model, its outcomes and exit codes, writing and reading it back."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pydantic
import pytest

from app import __version__
from operators.errors import NoMatchingSeriesError
from operators.roles import Role
from operators.study import ContrastInfo, SeriesDecision
from operators.writers import (
    ContrastEntry,
    ErrorInfo,
    ModelInfo,
    NoiseEstimate,
    OutputEntry,
    OutputKind,
    PipelineReport,
    RegistrationFigures,
    ReportStatus,
    SelectionEntry,
    read_report,
    write_report,
)


def _full_report() -> PipelineReport:
    decisions = [
        SeriesDecision("1.2.3.1", 3, "t1_mprage_pre", Role.T1_PRE, ["T1-weighted", "no contrast agent"]),
        SeriesDecision("1.2.3.2", 4, "localizer", None, ["localizer: ImageType says LOCALIZER"]),
    ]
    contrast = ContrastInfo(dose=0.25, agent="gadobutrol", field_strength_t=3.0, r1=4.5, source="header")
    return PipelineReport(
        status=ReportStatus.OK,
        job_id="job-1",
        started_at=dt.datetime(2024, 1, 2, 10, 0, tzinfo=dt.UTC),
        finished_at=dt.datetime(2024, 1, 2, 10, 0, 12, tzinfo=dt.UTC),
        study_instance_uid="1.2.3",
        selection=[SelectionEntry.model_validate(d.to_dict()) for d in decisions],
        contrast={Role.T1_LOW_DOSE.value: ContrastEntry.model_validate(contrast.to_dict())},
        registration={"t1_low_dose": RegistrationFigures(metric=-0.61, translation_mm=1.12, iterations=42)},
        noise=NoiseEstimate(sigma=0.021, n_voxels=120000),
        model=ModelInfo(name="ce-lowdose-v1", version="1.0.0", sha256="0" * 64, providers=["CPUExecutionProvider"]),
        timings_s={"load": 0.8, "register": 3.2, "write": 1.1},
        warnings=["t2 missing: running without it"],
        outputs=[OutputEntry(kind=OutputKind.SYNTHETIC_SERIES, path="out/synthetic_t1c", n_files=176)],
    )


class TestModel:
    def test_defaults_name_the_software(self) -> None:
        report = PipelineReport(status=ReportStatus.OK)
        assert report.gadsynth_version == __version__
        assert report.schema_version == "1"
        assert report.outputs == [] and report.error is None

    def test_selection_log_and_contrast_come_from_the_shared_types(self) -> None:
        report = _full_report()
        assert report.selection[0].role == "t1_pre"
        assert report.selection[1].reasons == ["localizer: ImageType says LOCALIZER"]
        assert report.contrast["t1_low_dose"].dose == 0.25

    def test_registration_keeps_fields_of_its_own(self) -> None:
        figures = _full_report().registration["t1_low_dose"]
        assert figures.model_dump()["iterations"] == 42

    def test_unknown_top_level_fields_are_refused(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="patient_name"):
            PipelineReport(status=ReportStatus.OK, patient_name="Doe^John")  # type: ignore[call-arg]

    def test_status_must_be_known(self) -> None:
        with pytest.raises(pydantic.ValidationError, match="status"):
            PipelineReport(status="done")  # type: ignore[arg-type]


class TestOutcomes:
    def test_input_error_is_not_eligible_with_every_field(self) -> None:
        error = NoMatchingSeriesError(
            "No series fits t1_pre", series_instance_uid=None, attribute="SeriesDescription", expected="T1", found="-"
        )
        report = PipelineReport.failed(error, failed_stage="select")
        assert report.status is ReportStatus.NOT_ELIGIBLE
        assert report.exit_code == 2
        assert report.error is not None
        assert report.error.model_dump() == error.to_dict()

    def test_other_exception_is_an_error(self) -> None:
        report = PipelineReport.failed(RuntimeError("ONNX Runtime session failed"))
        assert (report.status, report.exit_code) == (ReportStatus.ERROR, 1)
        assert report.error == ErrorInfo(error="RuntimeError", message="ONNX Runtime session failed")

    def test_success_exits_zero(self) -> None:
        assert _full_report().exit_code == 0


class TestFile:
    def test_round_trip(self, tmp_path: Path) -> None:
        report = _full_report()
        path = write_report(report, tmp_path / "out" / "report.json")
        assert read_report(path) == report
        assert [p.name for p in path.parent.iterdir()] == ["report.json"]

    def test_json_is_plain_and_readable(self, tmp_path: Path) -> None:
        path = write_report(_full_report(), tmp_path / "report.json")
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["status"] == "ok"
        assert data["outputs"][0]["kind"] == "synthetic_series"
        assert data["started_at"].startswith("2024-01-02T10:00:00")

    def test_invalid_file_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "report.json"
        path.write_text('{"status": "ok", "timings_s": {"load": "fast"}}', encoding="utf-8")
        with pytest.raises(pydantic.ValidationError, match=r"timings_s\.load"):
            read_report(path)
