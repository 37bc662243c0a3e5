"""What the API shows of a job (never a patient identifier): the response models and the view of a job row."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from pydantic import BaseModel, Field

from app.service.store import JobRow, JobState

__all__ = ["JobError", "JobPage", "JobView", "Problem", "Trust", "iso", "job_view"]


class JobError(BaseModel):
    error: str | None = None
    message: str | None = None
    stage: str | None = None


class Trust(BaseModel):
    """Where not to trust a job's result: the input-distribution verdict and the uncertainty summary."""

    outside_validated_range: bool | None = Field(
        default=None, description="The inputs are unlike the model's training data (None: not assessed)."
    )
    ood_score: float | None = None
    ood_threshold: float | None = None
    ood_worst_feature: str | None = None
    uncertainty_median_brain: float | None = Field(default=None, description="Median std inside the brain.")
    uncertainty_p95_brain: float | None = None
    uncertainty_median_enhancement: float | None = Field(
        default=None, description="Median std inside the predicted enhancement."
    )
    uncertainty_p95_enhancement: float | None = None
    low_confidence_ml: float | None = None

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> Trust | None:
        """From report.json's ``extra`` (None when the job has neither figure)."""
        extra = report.get("extra") or {}
        ood, unc = extra.get("ood"), extra.get("uncertainty")
        if not ood and not unc:
            return None
        trust = cls()
        if ood:
            trust.outside_validated_range = bool(ood.get("outside_validated_range"))
            trust.ood_score = ood.get("score")
            trust.ood_threshold = ood.get("threshold")
            trust.ood_worst_feature = ood.get("worst_feature")
        if unc:
            brain, enhancement = unc.get("brain") or {}, unc.get("enhancement") or {}
            trust.uncertainty_median_brain = brain.get("median")
            trust.uncertainty_p95_brain = brain.get("p95")
            trust.uncertainty_median_enhancement = enhancement.get("median")
            trust.uncertainty_p95_enhancement = enhancement.get("p95")
            trust.low_confidence_ml = unc.get("low_confidence_ml")
        return trust


class JobView(BaseModel):
    """A job as the API shows it (no patient identifiers, ever)."""

    id: str
    state: str = Field(description="assembling, queued, running, succeeded, failed or cancelled.")
    reason: str | None = Field(default=None, description="Why it failed: not_eligible, error, worker_lost, cancelled.")
    source: str
    study_instance_uid: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    age_s: float
    stage: str | None = None
    progress: float
    attempt: int = Field(description="How many times a worker started it (more than 1 after a crash).")
    max_attempts: int
    worker: str | None = None
    model: str | None = None
    options: dict[str, Any]
    n_files: int
    bytes_received: int
    warnings: list[str] = Field(default_factory=list)
    selection: list[dict[str, Any]] = Field(default_factory=list)
    model_choice: dict[str, Any] | None = None
    trust: Trust | None = Field(default=None, description="Input-distribution verdict and uncertainty summary.")
    error: JobError | None = None
    purged: bool = False
    links: dict[str, str]


class JobPage(BaseModel):
    items: list[JobView]
    total: int
    limit: int
    offset: int


class Problem(BaseModel):
    detail: str


def iso(seconds: float | None) -> str | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds") if seconds else None


def job_view(row: JobRow) -> JobView:
    report = row.report or {}
    base = f"/v1/jobs/{row.id}"
    links = {"self": base, "report": f"{base}/report"}
    if row.state == JobState.SUCCEEDED and not row.purged_at:
        links |= {"result": f"{base}/result", "preview": f"{base}/preview.png"}
    if row.source == "dicom" and row.study_key.startswith("dicom:"):
        links |= {"reception": f"/v1/receptions/{row.study_key[6:]}", "exports": f"/v1/exports?job_id={row.id}"}
    return JobView(
        id=row.id,
        state=row.state,
        reason=row.reason,
        source=row.source,
        study_instance_uid=row.study_instance_uid,
        created_at=iso(row.created_at) or "",
        started_at=iso(row.started_at),
        finished_at=iso(row.finished_at),
        age_s=round(time.time() - row.created_at, 1),
        stage=row.stage,
        progress=row.progress,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        worker=row.worker,
        model=row.model,
        options=row.options or {},
        n_files=row.n_files,
        bytes_received=row.bytes_received,
        warnings=report.get("warnings", []),
        selection=report.get("selection", []),
        model_choice=report.get("model_choice"),
        trust=Trust.from_report(report),
        error=JobError(**row.error) if row.error else None,
        purged=row.purged_at is not None,
        links=links,
    )
