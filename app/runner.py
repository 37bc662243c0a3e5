"""Run the MAP once on a study folder and write report.json: shared by `python -m app` and `gadsynth run`."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any

from app.config import Settings
from app.model_choice import choose_model
from operators.errors import InputDicomError
from operators.roles import Role
from operators.run_record import RunRecord, StageFailed
from operators.study import Selection
from operators.writers.enums import OutputKind, ReportStatus
from operators.writers.report import (
    ContrastEntry,
    ErrorInfo,
    ModelInfo,
    NoiseEstimate,
    OutputEntry,
    PipelineReport,
    RegistrationFigures,
    SelectionEntry,
    SeriesSummary,
    write_report,
)

__all__ = ["REPORT_NAME", "run_study"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.json"
PREVIEW_NAME = "preview.png"


def _emitted(record: RunRecord, port: str) -> Any:
    for (_, name), value in record.emitted.items():
        if name == port:
            return value
    return None


def _fill_from_selection(report: PipelineReport, selection: Selection) -> None:
    report.study_instance_uid = selection.study.study_instance_uid
    report.selection = [SelectionEntry.model_validate(d.to_dict()) for d in selection.decisions]
    for role, series in selection.roles.items():
        report.roles[role.value] = SeriesSummary(
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            description=series.description,
            sop_class_uid=series.instances[0].sop_class_uid if series.instances else None,
            n_slices=len(series.instances),
        )
    report.contrast = {role.value: ContrastEntry.model_validate(c.to_dict()) for role, c in selection.contrast.items()}


def _build_report(record: RunRecord, report: PipelineReport, prescan: Selection | None = None) -> None:
    """Fill the report from what the stages emitted (whatever got that far), else from the model choice's pre-scan."""
    selection = _emitted(record, "selection")
    if isinstance(selection, Selection):
        _fill_from_selection(report, selection)
    elif prescan is not None:
        _fill_from_selection(report, prescan)
    volumes = _emitted(record, "volumes")
    if isinstance(volumes, dict):
        for role, volume in volumes.items():
            summary = report.roles.get(Role(role).value)
            if summary is not None:
                summary.size = [int(v) for v in volume.image.GetSize()]
                summary.spacing_mm = [round(float(v), 4) for v in volume.image.GetSpacing()]
    registered = _emitted(record, "registered")
    if registered is not None:
        report.registration = {
            role: RegistrationFigures.model_validate(figures) for role, figures in registered.quality_report().items()
        }
    normalized = _emitted(record, "normalized")
    if normalized is not None and normalized.noise_sigma_source is not None:
        report.noise = NoiseEstimate(sigma=normalized.noise_sigma_source, **_noise_extras(normalized.params))
    prediction = _emitted(record, "prediction")
    if prediction is not None:
        report.model = ModelInfo(
            name=prediction.model_name,
            version=prediction.model_version,
            sha256=prediction.model_sha256,
            providers=list(prediction.providers),
        )
        report.extra["inference"] = prediction.to_dict()
    synthetic = _emitted(record, "synthetic")
    if synthetic is not None:
        report.extra["postprocess"] = synthetic.params
    written = _emitted(record, "written")
    if written:
        report.outputs.extend(written)


def _noise_extras(params: dict[str, Any]) -> dict[str, Any]:
    keys = ("sigma_normalized", "n_negative_voxels", "method")
    return {key: params[key] for key in keys if key in params}


def run_study(
    input_path: Path,
    output_path: Path,
    *,
    settings: Settings,
    job_id: str | None = None,
    preview: bool = False,
) -> PipelineReport:
    """Run the pipeline once; always write ``output_path/report.json``; return the report.

    The model is the one named in the settings, else the one the study's roles call for (``app.model_choice``:
    a header-only pre-scan before the application is composed); report.json records the choice
    (``model_choice``). The report's ``exit_code`` is 0 on success, 2 when the study is not eligible (no
    installed model fits its roles) or broken (the reason is in the report and the log), 1 on an internal error.
    """
    record = RunRecord(job_id=job_id or uuid.uuid4().hex[:12])
    report = PipelineReport(
        status=ReportStatus.OK,
        job_id=record.job_id,
        started_at=dt.datetime.now(dt.UTC),
        input_path=str(input_path),
        output_path=str(output_path),
    )
    output_path.mkdir(parents=True, exist_ok=True)
    prescan: Selection | None = None
    try:
        if not input_path.exists():
            raise InputDicomError(
                f"Input folder {input_path} does not exist.", attribute="input", expected="a folder", found="nothing"
            )
        try:
            with record.stage("choose_model"):
                choice = choose_model(input_path, settings.models_dir, settings.model, rules=settings.selection_rules)
                report.model_choice = choice.info
                prescan = choice.selection
                manifest = choice.require()
        except StageFailed:
            if record.error is None:  # StageFailed is raised only after the error was recorded
                raise
            raise record.error from None
        logger.info(
            "job %s: model %s %s (sha256 %s): %s",
            record.job_id,
            manifest.name,
            manifest.version,
            manifest.sha256,
            choice.info.reason,
        )
        from app.app import GadSynthApp  # Holoscan is imported only when a run happens

        app = GadSynthApp(
            input_path=input_path, output_path=output_path, manifest=manifest, settings=settings, record=record
        )
        app.run()
        if record.error is not None:
            raise record.error
        if _emitted(record, "written") is None:
            raise RuntimeError("The pipeline ended without writing its outputs (see the log for the failing stage).")
        if preview:
            from app.preview import write_preview

            png = write_preview(
                output_path / PREVIEW_NAME, _emitted(record, "normalized"), _emitted(record, "synthetic")
            )
            report.outputs.append(OutputEntry(kind=OutputKind.PREVIEW, path=str(png)))
    except InputDicomError as exc:
        report.status = ReportStatus.NOT_ELIGIBLE
        report.error = ErrorInfo.from_exception(exc)
        report.failed_stage = record.failed_stage
        logger.error("job %s: not processed: %s", record.job_id, exc)
    except Exception as exc:  # an internal failure: recorded in report.json, exit code 1, traceback in the log
        report.status = ReportStatus.ERROR
        report.error = ErrorInfo.from_exception(exc)
        report.failed_stage = record.failed_stage
        logger.exception("job %s: internal error", record.job_id)
    _build_report(record, report, prescan)
    report.timings_s = dict(record.timings)
    report.warnings = list(record.warnings)
    report.finished_at = dt.datetime.now(dt.UTC)
    report.outputs.append(OutputEntry(kind=OutputKind.REPORT, path=str(output_path / REPORT_NAME)))
    write_report(report, output_path / REPORT_NAME)
    return report
