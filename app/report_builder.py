"""report.json from a job's typed stage results (whatever stages got that far)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from operators.roles import Role
from operators.writers import report as schema
from operators.writers.enums import OutputKind, ReportStatus
from operators.writers.report import PipelineReport

if TYPE_CHECKING:
    from app.pipeline import Job, StageResults
    from operators.study import Selection

__all__ = ["REPORT_NAME", "build_report"]

REPORT_NAME = "report.json"


def _status(error: Exception | None) -> ReportStatus:
    from operators.errors import InputDicomError

    if error is None:
        return ReportStatus.OK
    return ReportStatus.NOT_ELIGIBLE if isinstance(error, InputDicomError) else ReportStatus.ERROR


def build_report(job: Job) -> PipelineReport:
    """The report of a job, from its request, stage results, timings, warnings and first failure."""
    request = job.request
    report = PipelineReport(
        status=_status(job.error),
        job_id=job.job_id,
        started_at=job.started_at,
        input_path=None if request.study_dir is None else str(request.study_dir),
        output_path=None if request.output_dir is None else str(request.output_dir),
        error=None if job.error is None else schema.ErrorInfo.from_exception(job.error),
        failed_stage=job.failed_stage,
    )
    _fill_from_results(report, job.results)
    report.timings_s = dict(job.timings)
    report.warnings = list(job.warnings)
    report.finished_at = dt.datetime.now(dt.UTC)
    return report


def _fill_from_selection(report: PipelineReport, selection: Selection) -> None:
    report.study_instance_uid = selection.study.study_instance_uid
    report.selection = [schema.SelectionEntry.model_validate(d.to_dict()) for d in selection.decisions]
    for role, series in selection.roles.items():
        report.roles[role.value] = schema.SeriesSummary(
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            description=series.description,
            sop_class_uid=series.instances[0].sop_class_uid if series.instances else None,
            n_slices=len(series.instances),
        )
    report.contrast = {
        role.value: schema.ContrastEntry.model_validate(c.to_dict()) for role, c in selection.contrast.items()
    }


def _fill_from_results(report: PipelineReport, results: StageResults) -> None:
    if results.selection is not None:
        _fill_from_selection(report, results.selection)
    if results.choice is not None:
        report.model_choice = results.choice.info
    if results.volumes is not None:
        for role, volume in results.volumes.items():
            summary = report.roles.get(Role(role).value)
            if summary is not None:
                summary.size = [int(v) for v in volume.image.GetSize()]
                summary.spacing_mm = [round(float(v), 4) for v in volume.image.GetSpacing()]
    if results.registered is not None:
        report.registration = {
            role: schema.RegistrationFigures.model_validate(figures)
            for role, figures in results.registered.quality_report().items()
        }
    normalized = results.normalized
    if normalized is not None and normalized.noise_sigma_source is not None:
        report.noise = schema.NoiseEstimate(sigma=normalized.noise_sigma_source, **_noise_extras(normalized.params))
    if normalized is not None and normalized.params.get("condition"):
        # what the model was told about the study (dose, field, r1, noise, grid, sequence) and where each came from
        report.extra["condition"] = normalized.params["condition"]
    if results.assessment is not None:
        report.extra["ood"] = results.assessment.to_dict()
    prediction = results.prediction
    if prediction is not None:
        report.model = schema.ModelInfo(
            name=prediction.model_name,
            version=prediction.model_version,
            sha256=prediction.model_sha256,
            providers=list(prediction.providers),
        )
        report.extra["inference"] = prediction.to_dict()
    if results.synthetic is not None:
        report.extra["postprocess"] = results.synthetic.params
    if results.uncertainty is not None:
        report.extra["uncertainty"] = results.uncertainty.summary
    if results.preview is not None:
        report.outputs.append(schema.OutputEntry(kind=OutputKind.PREVIEW, path=str(results.preview)))
    if results.written:
        report.outputs.extend(results.written)


def _noise_extras(params: dict[str, Any]) -> dict[str, Any]:
    keys = ("sigma_normalized", "n_negative_voxels", "method")
    return {key: params[key] for key in keys if key in params}
