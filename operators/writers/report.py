"""report.json: what one pipeline run did (inputs, roles, figures, model, timings, outputs) or why it stopped."""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from operators import __version__ as GADSYNTH_VERSION
from operators.errors import InputDicomError
from operators.writers.enums import OutputKind, ReportStatus

logger = logging.getLogger(__name__)

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "ContrastEntry",
    "ErrorInfo",
    "ModelCandidate",
    "ModelChoiceInfo",
    "ModelInfo",
    "NoiseEstimate",
    "OutputEntry",
    "PipelineReport",
    "RegistrationFigures",
    "SelectionEntry",
    "SeriesSummary",
    "read_report",
    "write_report",
]

#: Bumped whenever a field changes meaning or is removed (adding optional fields keeps it).
REPORT_SCHEMA_VERSION = "1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False)


class _Open(BaseModel):
    """Figures whose producers may add fields of their own: extra keys are kept as given."""

    model_config = ConfigDict(extra="allow")


class ErrorInfo(_Strict):
    """Why the run stopped: the fields of :meth:`InputDicomError.to_dict`, or the type and message of a crash."""

    error: str
    message: str
    series_instance_uid: str | None = None
    attribute: str | None = None
    expected: str | None = None
    found: str | None = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        """Record an input error with all its fields, or any other exception by type and message."""
        if isinstance(exc, InputDicomError):
            return cls.model_validate(exc.to_dict())
        return cls(error=type(exc).__name__, message=str(exc))


class SeriesSummary(_Strict):
    """One input series that got a role: identity and grid (no patient data)."""

    series_instance_uid: str
    series_number: int | None = None
    description: str = ""
    sop_class_uid: str | None = None
    n_slices: int | None = None
    size: list[int] | None = None
    spacing_mm: list[float] | None = None


class SelectionEntry(_Strict):
    """One line of the selection log, as :meth:`SeriesDecision.to_dict` gives it."""

    series_instance_uid: str
    series_number: int | None = None
    description: str = ""
    role: str | None = None
    reasons: list[str] = Field(default_factory=list)


class ContrastEntry(_Strict):
    """Contrast conditions of a post-contrast input, as :meth:`ContrastInfo.to_dict` gives them."""

    dose: float | None = None
    agent: str | None = None
    field_strength_t: float
    r1: float | None = None
    source: str = "header"


class RegistrationFigures(_Open):
    """How well one input was aligned onto t1_pre (the registration operator may add more fields)."""

    metric: float | None = None
    translation_mm: float | None = None  # length of the recovered translation
    rotation_deg: float | None = None  # angle of the recovered rotation
    converged: bool | None = None


class NoiseEstimate(_Open):
    """Noise level of the low-dose subtraction (METHODS.md section 2 step 6)."""

    sigma: float | None = None
    n_voxels: int | None = None


class ModelInfo(_Strict):
    """The model that ran."""

    name: str
    version: str
    sha256: str
    providers: list[str] = Field(default_factory=list)


class ModelCandidate(_Strict):
    """One model the automatic choice considered (``app.model_choice.MODEL_RULES``) and whether the study fits it."""

    name: str
    rule: str  # the row of the choice table, e.g. "low-dose" or "zero-dose"
    installed: bool
    required_roles: list[str] = Field(default_factory=list)
    missing_roles: list[str] = Field(default_factory=list)
    chosen: bool = False


class ModelChoiceInfo(_Strict):
    """How the model was picked: named in the settings, or by the roles the study has (then ``roles_found``)."""

    chosen: str | None = None
    named: bool = False
    reason: str
    roles_found: dict[str, SeriesSummary] = Field(default_factory=dict)
    candidates: list[ModelCandidate] = Field(default_factory=list)


class OutputEntry(_Strict):
    """One thing the run wrote: a series folder, a single file, the report itself or a preview."""

    kind: OutputKind
    path: str
    series_instance_uid: str | None = None
    series_number: int | None = None
    sop_class_uid: str | None = None
    n_files: int = 1


class PipelineReport(_Strict):
    """Everything report.json holds; the application fills it in as the run goes.

    ``status`` is ``ok`` (exit code 0), ``not_eligible`` (the study cannot be processed: exit code 2, ``error``
    says why) or ``error`` (an internal failure: exit code 1). Patient identifiers never appear here.
    """

    schema_version: str = REPORT_SCHEMA_VERSION
    gadsynth_version: str = GADSYNTH_VERSION
    status: ReportStatus
    job_id: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    input_path: str | None = None
    output_path: str | None = None
    study_instance_uid: str | None = None
    error: ErrorInfo | None = None
    failed_stage: str | None = None
    roles: dict[str, SeriesSummary] = Field(default_factory=dict)
    selection: list[SelectionEntry] = Field(default_factory=list)
    contrast: dict[str, ContrastEntry] = Field(default_factory=dict)
    registration: dict[str, RegistrationFigures] = Field(default_factory=dict)
    noise: NoiseEstimate | None = None
    model: ModelInfo | None = None
    model_choice: ModelChoiceInfo | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    outputs: list[OutputEntry] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """Exit code of the command line for this outcome (0 ok, 2 not eligible, 1 error)."""
        return {ReportStatus.OK: 0, ReportStatus.NOT_ELIGIBLE: 2, ReportStatus.ERROR: 1}[self.status]

    @classmethod
    def failed(cls, exc: BaseException, **fields: Any) -> PipelineReport:
        """A report for a run that stopped: ``not_eligible`` for an input error, ``error`` for anything else."""
        status = ReportStatus.NOT_ELIGIBLE if isinstance(exc, InputDicomError) else ReportStatus.ERROR
        return cls(status=status, error=ErrorInfo.from_exception(exc), **fields)


def write_report(report: PipelineReport, out_path: Path) -> Path:
    """Write report.json atomically (a temporary file beside it, then a rename), indented, UTF-8.

    Returns
    -------
    pathlib.Path
        ``out_path``.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    text = report.model_dump_json(indent=2) + "\n"
    handle, temporary = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, out_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("Wrote %s (status %s)", out_path, report.status.value)
    return out_path


def read_report(path: Path) -> PipelineReport:
    """Read and validate a report.json.

    Raises
    ------
    pydantic.ValidationError
        When the file is not JSON or does not follow the schema.
    """
    return PipelineReport.model_validate_json(Path(path).read_text(encoding="utf-8"))
