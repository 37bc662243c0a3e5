"""What one pipeline run records as it goes: stage timings, facts for report.json, warnings, the input error."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from operators.errors import InputDicomError

__all__ = ["RunRecord", "StageFailed"]

logger = logging.getLogger(__name__)


class StageFailed(Exception):
    """Raised inside :meth:`RunRecord.stage` after an input error was recorded; the operator stops emitting."""


@dataclass
class RunRecord:
    """Shared by the operators of one run (the application owns it; each operator reaches it by reference).

    Operators time their work with :meth:`stage`, put what report.json needs in :attr:`facts`, and record the
    first :class:`InputDicomError`. After an error the remaining stages do not run: the failing operator emits
    nothing, so its consumers never fire, and the entry point turns the error into exit code 2.
    """

    job_id: str
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: InputDicomError | None = None
    failed_stage: str | None = None
    #: What each stage emitted, by (stage name, port name): the entry point builds report.json from it.
    emitted: dict[tuple[str, str], Any] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; convert an input error into a recorded failure (:class:`StageFailed`)."""
        start = time.perf_counter()
        try:
            yield
        except InputDicomError as exc:
            self.error = exc
            self.failed_stage = name
            logger.error("job %s: stage %s rejected the input: %s", self.job_id, name, exc)
            raise StageFailed(name) from exc
        finally:
            self.timings[name] = round(time.perf_counter() - start, 4)
            logger.info("job %s: stage %s took %.2f s", self.job_id, name, self.timings[name])

    def warn(self, message: str) -> None:
        """Add a warning to the report (and the log)."""
        logger.warning("job %s: %s", self.job_id, message)
        self.warnings.append(message)
