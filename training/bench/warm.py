"""Bench: one long-lived Pipeline runs two studies in a row; the second pays no model warm-up."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["bench_warm"]


def bench_warm(work_dir: Path, *, seeds: tuple[int, int] = (1, 2), model: str | None = None) -> dict[str, Any]:
    """Wall time of the first and of the second full-size phantom study through one :class:`Pipeline`.

    The difference is what a service worker saves by keeping its pipeline (and so the ONNX Runtime session) warm;
    ``sessions_created`` counts the sessions the pipeline built over both studies.
    """
    from app.config import load_settings
    from app.pipeline import Pipeline, PipelineRequest
    from training.phantom import PhantomOptions, generate_study

    overrides = {} if model is None else {"model": model}
    pipeline = Pipeline(load_settings(**overrides))
    runs: list[dict[str, Any]] = []
    for index, seed in enumerate(seeds):
        study_dir = work_dir / f"phantom-full-{seed}"
        if not (study_dir / "dicom").is_dir():
            generate_study(PhantomOptions(seed=seed, size="full"), study_dir)
        started = time.perf_counter()
        result = pipeline.run(PipelineRequest(study_dir=study_dir / "dicom", output_dir=work_dir / f"warm-out-{index}"))
        wall = time.perf_counter() - started
        runs.append(
            {
                "seed": seed,
                "status": result.report.status.value,
                "wall_s": round(wall, 2),
                "infer_s": result.report.timings_s.get("infer"),
                "sessions_created_so_far": pipeline.sessions.created,
            }
        )
    first, second = runs
    return {
        "first_study_wall_s": first["wall_s"],
        "second_study_wall_s": second["wall_s"],
        "first_infer_s": first["infer_s"],
        "second_infer_s": second["infer_s"],
        "sessions_created": pipeline.sessions.created,
        "runs": runs,
    }
