"""Per-job options a client may give with a study (query parameters of POST /synthesize)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from operators.contrast import FIELD_STRENGTH_T, RELATIVE_DOSE
from operators.roles import AGENT_ALIASES, Role

__all__ = ["EXTRA_OUTPUTS", "MODEL_NAME_PATTERN", "JobOptions"]

#: Outputs beyond the synthetic series and the SEG, which every job writes.
EXTRA_OUTPUTS = ("sc", "beyond_dose")
#: What a model name may look like (it names a folder under the models directory).
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class JobOptions(BaseModel):
    """What changes a job's result beyond the study itself (part of the idempotency key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(default=None, pattern=MODEL_NAME_PATTERN, description="Model name; None: by the roles.")
    outputs: tuple[Literal["sc", "beyond_dose"], ...] = Field(
        default=(), description="Extra outputs: sc (Secondary Capture), beyond_dose (beyond-standard-dose series)."
    )
    dose: float | None = Field(
        default=None,
        ge=RELATIVE_DOSE[0],
        le=RELATIVE_DOSE[1],
        description="Relative dose of the low-dose series (0.1 = 10 % of standard), when its header says none.",
    )
    agent: str | None = Field(default=None, description="Contrast agent, when the headers name none.")
    field_strength_t: float | None = Field(
        default=None, ge=FIELD_STRENGTH_T[0], le=FIELD_STRENGTH_T[1], description="Field strength (T)."
    )

    @field_validator("outputs", mode="before")
    @classmethod
    def _sorted_unique(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, list | tuple):
            return tuple(sorted(set(value)))
        return value

    @field_validator("agent")
    @classmethod
    def _known_agent(cls, value: str | None) -> str | None:
        if value is None:
            return value
        key = value.strip().lower()
        if key not in AGENT_ALIASES:
            raise ValueError(f"unknown contrast agent {value!r}; known: {', '.join(sorted(set(AGENT_ALIASES)))}")
        return AGENT_ALIASES[key]

    def doses(self) -> dict[Role, float]:
        return {Role.T1_LOW_DOSE: self.dose} if self.dose is not None else {}
