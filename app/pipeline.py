"""The pipeline as one object: built once per process, it runs study after study with its models kept warm.

The stage order is written once, in :data:`STAGES`. ``Pipeline.run`` walks it in a plain loop (``gadsynth run``,
evaluation, training preprocessing, benchmarks, service workers); the MAP (``app/app.py``) wraps each stage in a
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.model_choice import ModelChoice, choose_by_roles, choose_named, named_choice
from operators.errors import InputDicomError, RegistrationError, describe_series
from operators.model_manifest import ModelManifest
from operators.roles import Role
from operators.series_rules import load_rules
from operators.writers.enums import OutputKind, ReportStatus
from operators.writers.report import OutputEntry, PipelineReport

if TYPE_CHECKING:
    from operators.brain_mask import BrainMask
    from operators.inference import InferenceSettings, Prediction, SessionPool
    from operators.model_inputs import NormalizedInputs
    from operators.postprocess import SyntheticResult
    from operators.registration import RegisteredStudy
    from operators.study import ContrastInfo, Selection, Study, Volume

__all__ = [
    "STAGES",
    "Job",
    "Pipeline",
    "PipelineRequest",
    "PipelineResult",
    "Stage",
    "StageResults",
]

logger = logging.getLogger(__name__)

PREVIEW_NAME = "preview.png"


@dataclass(frozen=True)
class PipelineRequest:
    """One job: which study, where its outputs go, and the per-job options.

    Parameters
    ----------
    study_dir:
        Folder of DICOM files holding one study (searched recursively).
    output_dir:
        Where the DICOM outputs, report.json and the preview go; None only for runs that stop before writing.
    model:
        Model folder name; None: the settings' model, else the automatic choice by the roles the study has.
    manifest:
        A model given as a loaded manifest (training preprocessing: the model being trained is not installed).
    doses, agent, field_strength_t:
        Contrast conditions used where the headers say nothing (relative dose per post-contrast role).
    write_beyond_standard_dose, write_secondary_capture:
        Extra outputs; None: as the settings say.
    preview:
        Also write preview.png.
    job_id:
        Carried in every log line and in report.json; None: a new random id.
    extra_roles:
        Roles to build and register beyond the model's own (training: the standard-dose T1, its target).
    first_stage, last_stage:
        Run only this range of :data:`STAGES` (training preprocessing stops after ``normalize``; NIfTI sources
        start at ``register`` with the volumes given).
    itk_threads:
        SimpleITK threads for this run (1 makes registration and the brain mask bit-reproducible); None: leave.
    """

    study_dir: Path | None
    output_dir: Path | None = None
    model: str | None = None
    manifest: ModelManifest | None = None
    doses: Mapping[Role, float] = field(default_factory=dict)
    agent: str | None = None
    field_strength_t: float | None = None
    write_beyond_standard_dose: bool | None = None
    write_secondary_capture: bool | None = None
    preview: bool = False
    job_id: str | None = None
    extra_roles: tuple[Role, ...] = ()
    first_stage: str | None = None
    last_stage: str | None = None
    itk_threads: int | None = None


@dataclass
class StageResults:
    """What each stage produced, in stage order (None until that stage has run)."""

    study: Study | None = None
    selection: Selection | None = None
    contrast: dict[Role, ContrastInfo] | None = None
    choice: ModelChoice | None = None
    volumes: dict[Role, Volume] | None = None
    registered: RegisteredStudy | None = None
    brain_mask: BrainMask | None = None
    normalized: NormalizedInputs | None = None
    prediction: Prediction | None = None
    synthetic: SyntheticResult | None = None
    written: list[OutputEntry] | None = None
    preview: Path | None = None

    @property
    def manifest(self) -> ModelManifest:
        """The model of this run (after the model-choice stage)."""
        if self.choice is None or self.choice.manifest is None:
            raise RuntimeError("No model has been chosen yet: the choose_model stage has not run.")
        return self.choice.manifest


@dataclass
class Job:
    """One run in progress: the request, the stage results so far, timings, warnings and the first failure."""

    request: PipelineRequest
    job_id: str
    results: StageResults
    started_at: dt.datetime
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: Exception | None = None
    failed_stage: str | None = None
    #: Every stage that was handed this job, run or skipped (the MAP checks that its graph reached them all).
    visited: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def warn(self, message: str) -> None:
        """Add a warning to report.json (and the log)."""
        logger.warning("job %s: %s", self.job_id, message)
        self.warnings.append(message)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: ``run(pipeline, job)`` fills ``output`` in the job's results.

    ``when`` decides whether the stage applies to a request (e.g. the preview only when asked for).
    """

    name: str
    output: str
    run: Callable[[Pipeline, Job], None]
    when: Callable[[PipelineRequest], bool] = lambda request: True


@dataclass
class PipelineResult:
    """A finished run: its typed stage results and report.json's content (already written when it had a folder)."""

    request: PipelineRequest
    results: StageResults
    report: PipelineReport
    error: Exception | None = None
    failed_stage: str | None = None

    @property
    def exit_code(self) -> int:
        """0 success, 2 not eligible or broken input, 1 internal error."""
        return self.report.exit_code


# --- the stages, in order --------------------------------------------------------------------------------------


def _load_study(pipeline: Pipeline, job: Job) -> None:
    from operators.study_loader import load_study

    folder = job.request.study_dir
    if folder is None or not folder.exists():
        raise InputDicomError(
            f"Input folder {folder} does not exist.", attribute="input", expected="a folder", found="nothing"
        )
    job.results.study = load_study(folder)


def _select_series(pipeline: Pipeline, job: Job) -> None:
    from operators.series_selector import select_roles

    study = _need(job.results.study, "study")
    request = job.request
    selection = select_roles(
        study,
        pipeline.rules,
        required=(),
        doses=dict(request.doses),
        agent=request.agent,
        field_strength_t=request.field_strength_t,
    )
    job.results.selection = selection
    job.results.contrast = selection.contrast


def _choose_model(pipeline: Pipeline, job: Job) -> None:
    from operators.series_selector import require_roles

    selection = _need(job.results.selection, "selection")
    request = job.request
    name = request.model or pipeline.settings.model
    if request.manifest is not None:
        choice = named_choice(request.manifest)
    elif name:
        choice = choose_named(pipeline.settings.models_dir, name)
    else:
        choice = choose_by_roles(selection, pipeline.settings.models_dir)
    job.results.choice = choice
    manifest = choice.require()
    require_roles(selection, _roles(manifest, request), pipeline.rules)
    logger.info(
        "job %s: model %s %s (sha256 %s): %s",
        job.job_id,
        manifest.name,
        manifest.version,
        manifest.sha256,
        choice.info.reason,
    )


def _build_volumes(pipeline: Pipeline, job: Job) -> None:
    from operators.series_to_volume import build_volumes

    selection = _need(job.results.selection, "selection")
    job.results.volumes = build_volumes(selection, _roles(job.results.manifest, job.request))


def _register(pipeline: Pipeline, job: Job) -> None:
    from operators.registration import register_volumes

    volumes = _need(job.results.volumes, "volumes")
    job.results.registered = register_volumes(volumes, roles=_roles(job.results.manifest, job.request))


def _brain_mask(pipeline: Pipeline, job: Job) -> None:
    from operators.brain_mask import brain_mask

    volumes = _need(job.results.volumes, "volumes")
    if Role.T1_PRE not in volumes:
        raise RegistrationError(
            f"No t1_pre volume for the brain mask; found roles {sorted(r.value for r in volumes)}.",
            expected="t1_pre",
            found=", ".join(sorted(r.value for r in volumes)) or "none",
        )
    reference = volumes[Role.T1_PRE]
    label = describe_series(reference.series.series_instance_uid, reference.series.description)
    job.results.brain_mask = brain_mask(reference.image, label=label)


def _normalize(pipeline: Pipeline, job: Job) -> None:
    from operators.model_inputs import normalize

    results = job.results
    job.results.normalized = normalize(
        _need(results.registered, "registered"),
        _need(results.brain_mask, "brain_mask"),
        results.manifest,
        contrast=dict(results.contrast or {}),
    )


def _infer(pipeline: Pipeline, job: Job) -> None:
    from operators.inference import infer

    normalized = _need(job.results.normalized, "normalized")
    job.results.prediction = infer(normalized, pipeline.inference_settings, sessions=pipeline.sessions)


def _postprocess(pipeline: Pipeline, job: Job) -> None:
    from operators.postprocess import postprocess

    results = job.results
    results.synthetic = postprocess(_need(results.prediction, "prediction"), _need(results.normalized, "normalized"))


def _write_dicom(pipeline: Pipeline, job: Job) -> None:
    from operators.dicom_writer import write_outputs
    from operators.writers import ModelIdentity

    results = job.results
    registered = _need(results.registered, "registered")
    synthetic = _need(results.synthetic, "synthetic")
    manifest = results.manifest
    written = write_outputs(
        registered.reference,
        synthetic.synthetic,
        _output_dir(job),
        model=ModelIdentity(manifest.name, manifest.version, manifest.sha256),
        settings=pipeline.writer_settings(job.request),
        enhancement_mask=synthetic.mask,
        synthetic_plus=synthetic.beyond,
        other_sources=[v.series for role, v in registered.volumes.items() if role != Role.T1_PRE],
    )
    results.written = written


def _write_preview(pipeline: Pipeline, job: Job) -> None:
    from app.preview import write_preview

    results = job.results
    results.preview = write_preview(
        _output_dir(job) / PREVIEW_NAME,
        _need(results.normalized, "normalized"),
        _need(results.synthetic, "synthetic"),
    )


#: The pipeline, stage by stage (ARCHITECTURE.md). Every front door runs this list and no other.
STAGES: tuple[Stage, ...] = (
    Stage("load_study", "study", _load_study),
    Stage("select_series", "selection", _select_series),
    Stage("choose_model", "choice", _choose_model),
    Stage("build_volumes", "volumes", _build_volumes),
    Stage("register", "registered", _register),
    Stage("brain_mask", "brain_mask", _brain_mask),
    Stage("normalize", "normalized", _normalize),
    Stage("infer", "prediction", _infer),
    Stage("postprocess", "synthetic", _postprocess),
    Stage("write_dicom", "written", _write_dicom),
    Stage("preview", "preview", _write_preview, when=lambda request: request.preview),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise RuntimeError(f"Stage input {what!r} is missing: an earlier stage did not run.")
    return value


def _roles(manifest: ModelManifest, request: PipelineRequest) -> tuple[Role, ...]:
    roles = list(manifest.required_roles)
    roles += [role for role in request.extra_roles if role not in roles]
    return tuple(roles)


def _output_dir(job: Job) -> Path:
    if job.request.output_dir is None:
        raise RuntimeError("This request has no output folder; it cannot run the writing stages.")
    return job.request.output_dir


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
            write_beyond_standard_dose=_either(request.write_beyond_standard_dose, settings.write_beyond_standard_dose),
            write_secondary_capture=_either(request.write_secondary_capture, settings.write_secondary_capture),
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
        if job.failed or getattr(job.results, stage.output) is not None:
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

        report = build_report(job)
        if job.request.output_dir is not None:
            report.outputs.append(OutputEntry(kind=OutputKind.REPORT, path=str(job.request.output_dir / REPORT_NAME)))
            job.request.output_dir.mkdir(parents=True, exist_ok=True)
            write_report(report, job.request.output_dir / REPORT_NAME)
        if report.status == ReportStatus.OK:
            logger.info("job %s: done in %.1f s", job.job_id, sum(job.timings.values()))
        return PipelineResult(
            request=job.request,
            results=job.results,
            report=report,
            error=job.error,
            failed_stage=job.failed_stage,
        )

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
