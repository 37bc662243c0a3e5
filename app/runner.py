"""Run the pipeline once on a study folder and write report.json: shared by `python -m app` and `gadsynth run`."""

from __future__ import annotations

import logging
from pathlib import Path

from app.config import Settings
from app.pipeline import Pipeline, PipelineRequest
from app.report_builder import REPORT_NAME
from operators.writers.report import PipelineReport

__all__ = ["REPORT_NAME", "configuration_error", "run_study"]

logger = logging.getLogger(__name__)


def run_study(
    input_path: Path,
    output_path: Path,
    *,
    settings: Settings,
    job_id: str | None = None,
    preview: bool = False,
    study_instance_uid: str | None = None,
) -> PipelineReport:
    """Run the MAP once on a study; always write ``output_path/report.json``; return the report.

    The model is the one named in the settings, else the one the study's roles call for (the ``choose_model``
    stage, after series selection). The report's ``exit_code`` is 0 on success, 2 when the study is not eligible
    or broken (the reason is in the report and the log), 1 on an internal error.
    """
    from app.app import run_map  # Holoscan is imported only when a run happens

    pipeline = Pipeline(settings)
    request = PipelineRequest(
        study_dir=input_path,
        output_dir=output_path,
        job_id=job_id,
        preview=preview,
        study_instance_uid=study_instance_uid,
    )
    return run_map(pipeline, request).report


def configuration_error(output: Path | None, exc: Exception) -> int:
    """Say what is wrong with the installation or configuration in one line (no traceback), in report.json too
    when there is an output folder; return the exit code (1: not the study's fault)."""
    from pydantic import ValidationError

    from operators.writers.enums import ReportStatus
    from operators.writers.report import ErrorInfo, PipelineReport, write_report

    if isinstance(exc, ValidationError):
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    else:
        message = str(exc)
    logger.error("not run: configuration: %s", message)
    if output is not None:
        error = ErrorInfo(error="ConfigurationError", message=message)
        report = PipelineReport(status=ReportStatus.ERROR, error=error, output_path=str(output))
        try:
            output.mkdir(parents=True, exist_ok=True)
            write_report(report, output / REPORT_NAME)
        except OSError as write_error:
            logger.error("report.json could not be written to %s either: %s", output, write_error)
    return 1
