"""The pipeline as one object: built once per process, it runs study after study with its models kept warm.

The stage order is written once, in :data:`app.stages.STAGES`. ``Pipeline.run`` walks it in a plain loop
(evaluation, training preprocessing, benchmarks, service workers); the MAP (``app/app.py``) wraps each stage in a
MONAI Deploy operator and chains them with ``add_flow``. Both go through :meth:`Pipeline.run_stage`, so a stage
that rejects its input ends the run the same way at every front door, and report.json is built from the typed
stage results (:class:`StageResults`) in one place (``app/report_builder.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.job import Job, PipelineRequest, PipelineResult, Stage, StageResults
from app.stages import STAGE_NAMES, STAGES
from operators.errors import InputDicomError
from operators.series_rules import load_rules
from operators.writers.enums import OutputKind, ReportStatus
from operators.writers.report import OutputEntry

if TYPE_CHECKING:
    from operators.inference import InferenceSettings, SessionPool

__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "Job",
    "Pipeline",
    "PipelineRequest",
    "PipelineResult",
    "Stage",
    "StageResults",
    "itk_threads",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def itk_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set SimpleITK's default number of threads (None: leave it)."""
    if threads is None:
        yield
        return
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


class Pipeline:
    """GadSynth's pipeline, built once per process from the settings; :meth:`run` processes one study.

    It keeps what is worth keeping between studies: the parsed series-selection rules and the ONNX Runtime
    sessions of the models it has run (:attr:`sessions`, so only the first study pays the model's warm-up).

    Parameters
    ----------
    settings:
        Run-time configuration (models folder, model, series numbers, providers, threads, TTA).
    """

    def __init__(self, settings: Settings) -> None:
        from operators.inference import InferenceSettings, SessionPool

        self.settings = settings
        self.rules: dict[str, Any] = load_rules(settings.selection_rules)
        self.sessions: SessionPool = SessionPool()
        self.inference_settings: InferenceSettings = InferenceSettings(
            providers=tuple(settings.providers) if settings.providers else None,
            intra_op_threads=settings.intra_op_threads,
            tta=settings.tta,
            brain_crop=settings.brain_crop,
        )

    def writer_settings(self, request: PipelineRequest) -> Any:
        """The DICOM writers' settings for a request (series numbers from the settings, extras per job)."""
        from operators.dicom_writer import WriterSettings

        settings = self.settings
        return WriterSettings(
            synthetic_series_number=settings.synthetic_series_number,
            beyond_dose_series_number=settings.beyond_dose_series_number,
            seg_series_number=settings.seg_series_number,
            sc_series_number=settings.sc_series_number,
            sr_series_number=settings.sr_series_number,
            uncertainty_series_number=settings.uncertainty_series_number,
            write_beyond_standard_dose=_either(request.write_beyond_standard_dose, settings.write_beyond_standard_dose),
            write_secondary_capture=_either(request.write_secondary_capture, settings.write_secondary_capture),
            write_sr=settings.write_sr,
        )

    def stages(self, request: PipelineRequest) -> list[Stage]:
        """The stages a request runs, in order.

        Raises
        ------
        ValueError
            When ``first_stage`` or ``last_stage`` names no stage.
        """
        for name in (request.first_stage, request.last_stage):
            if name is not None and name not in STAGE_NAMES:
                raise ValueError(f"Unknown stage {name!r}. Stages: {', '.join(STAGE_NAMES)}.")
        first = STAGE_NAMES.index(request.first_stage) if request.first_stage else 0
        last = STAGE_NAMES.index(request.last_stage) if request.last_stage else len(STAGES) - 1
        return [stage for stage in STAGES[first : last + 1] if stage.when(request)]

    def start(self, request: PipelineRequest, given: StageResults | None = None) -> Job:
        """A new job for ``request``; ``given`` holds results of stages that will not run (e.g. NIfTI volumes)."""
        job_id = request.job_id or uuid.uuid4().hex[:12]
        return Job(
            request=request,
            job_id=job_id,
            results=given if given is not None else StageResults(),
            started_at=dt.datetime.now(dt.UTC),
        )

    def run_stage(self, stage: Stage, job: Job) -> None:
        """Run one stage of a job, unless an earlier one failed or its output was given.

        An input error (:class:`operators.errors.InputDicomError`) or any other exception is recorded in the job
        (error and failed stage) and never raised: the stages after it do nothing, and :meth:`finish` turns it
        into report.json's status and exit code.
        """
        job.visited.append(stage.name)
        if job.failed or (stage.output and getattr(job.results, stage.output) is not None):
            return
        started = time.perf_counter()
        try:
            with itk_threads(job.request.itk_threads):
                stage.run(self, job)
        except InputDicomError as exc:
            job.error, job.failed_stage = exc, stage.name
            logger.error("job %s: stage %s rejected the input: %s", job.job_id, stage.name, exc)
        except Exception as exc:  # an internal failure: recorded in report.json, traceback in the log
            job.error, job.failed_stage = exc, stage.name
            logger.exception("job %s: internal error in stage %s", job.job_id, stage.name)
        finally:
            job.timings[stage.name] = round(time.perf_counter() - started, 4)
            logger.info("job %s: stage %s took %.2f s", job.job_id, stage.name, job.timings[stage.name])

    def finish(self, job: Job) -> PipelineResult:
        """Build the report from the job's results and write report.json when the job has an output folder."""
        from app.report_builder import REPORT_NAME, build_report
        from operators.writers.report import write_report

        folder = job.request.output_dir
        if job.staging is not None and folder is not None:
            self._settle_outputs(job, folder)
        report = build_report(job)
        if folder is not None and job.may_write_report:
            report.outputs.append(OutputEntry(kind=OutputKind.REPORT, path=str(folder / REPORT_NAME)))
            folder.mkdir(parents=True, exist_ok=True)
            write_report(report, folder / REPORT_NAME)
        if report.status == ReportStatus.OK:
            logger.info("job %s: done in %.1f s", job.job_id, sum(job.timings.values()))
        return PipelineResult(
            request=job.request,
            results=job.results,
            report=report,
            error=job.error,
            failed_stage=job.failed_stage,
        )

    @staticmethod
    def _settle_outputs(job: Job, folder: Path) -> None:
        """Move a successful job's staged files into the output folder; drop a failed job's."""
        from app.outputs import discard, publish

        staging = job.staging
        if staging is None:
            return
        job.staging = None
        if job.failed:
            discard(staging)
            job.results.written, job.results.preview = None, None
            return
        try:
            publish(staging, folder)
        except OSError as exc:
            discard(staging)
            job.error, job.failed_stage = exc, "publish_outputs"
            job.results.written, job.results.preview = None, None
            logger.exception("job %s: the outputs could not be moved into %s", job.job_id, folder)
            return
        prefix = str(staging)
        for entry in job.results.written or []:
            if entry.path.startswith(prefix):
                entry.path = str(folder) + entry.path[len(prefix) :]
        if job.results.preview is not None:
            job.results.preview = folder / job.results.preview.name

    def run(self, request: PipelineRequest, given: StageResults | None = None) -> PipelineResult:
        """Run one study through the stages the request asks for; never raises for a bad study.

        Returns
        -------
        PipelineResult
            The typed stage results and the report (``exit_code`` 0, 2 or 1; report.json written when the request
            has an output folder).
        """
        job = self.start(request, given)
        for stage in self.stages(request):
            self.run_stage(stage, job)
        return self.finish(job)


def _either(value: bool | None, default: bool) -> bool:
    return default if value is None else value
