"""What one pipeline job is made of: the request, the typed stage results, the job in progress, the outcome."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from operators.model_manifest import ModelManifest
from operators.roles import Role
from operators.writers.report import OutputEntry, PipelineReport

if TYPE_CHECKING:
    from app.model_choice import ModelChoice
    from app.pipeline import Pipeline
    from operators.brain_mask import BrainMask
    from operators.inference import Prediction
    from operators.model_inputs import NormalizedInputs
    from operators.ood import OodAssessment
    from operators.postprocess import SyntheticResult
    from operators.registration import RegisteredStudy
    from operators.study import ContrastInfo, Selection, Study, Volume
    from operators.uncertainty import UncertaintyMap

__all__ = ["Job", "PipelineRequest", "PipelineResult", "Stage", "StageResults"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineRequest:
    """One job: which study, where its outputs go, and the per-job options.

    Parameters
    ----------
    study_dir:
        Folder of DICOM files holding one study (searched recursively).
    output_dir:
        Where the DICOM outputs, report.json and the preview go; None only for runs that stop before writing.
    study_instance_uid:
        Which study to process when the folder holds several (None: the folder must hold one MR study).
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
    study_instance_uid: str | None = None
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
    #: How far the inputs are from the model's training data (None: not assessed).
    assessment: OodAssessment | None = None
    prediction: Prediction | None = None
    synthetic: SyntheticResult | None = None
    #: The synthetic image's per-voxel std and low-confidence region (None: the model has no error model).
    uncertainty: UncertaintyMap | None = None
    written: list[OutputEntry] | None = None
    preview: Path | None = None
    #: Whether the study runs on a coarser working grid (sub-millimetre T1s; see ``operators.working_grid``).
    on_working_grid: bool = False
    #: The source t1_pre at its own resolution, read again after inference when the study ran on a working grid
    #: (not held through inference: 336 MB for a 0.5 mm T1): the writers use its grid and slices, and
    #: ``synthetic`` is brought back onto it.
    source_reference: Volume | None = None
    #: The post-processing result on the working grid (the preview draws it beside the working-grid inputs).
    synthetic_work: SyntheticResult | None = None

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
    #: Where the writers put this job's files until it has succeeded (inside the output folder).
    staging: Path | None = None
    #: False when the output folder was refused: an earlier run's report.json there is never overwritten.
    may_write_report: bool = True

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
