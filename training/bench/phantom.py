"""Phantom benchmark: seconds to generate a full-size six-series study (DICOM and ground truth), total and per stage."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

__all__ = ["bench_phantom"]

logger = logging.getLogger(__name__)


def bench_phantom(out_dir: Path, *, repeats: int = 1, seed: int = 1, keep: bool = False) -> dict[str, float]:
    """Time ``generate_study`` on a full-size study with all six series (target: under 15 s on 2 cores).

    The first run includes reading the MNI template (as a command-line run does); later runs reuse it. Like the
    command line, it tunes the allocator first (``training.phantom.runtime.reuse_large_allocations``).

    Parameters
    ----------
    out_dir:
        Scratch folder; each run writes ``out_dir/run<N>``.
    repeats:
        Number of runs (>= 1).
    seed:
        Subject seed of every run.
    keep:
        Keep the generated studies (default: delete them after timing).

    Returns
    -------
    dict
        ``total_s`` (first run), ``total_best_s`` and ``total_mean_s`` over the runs, ``repeats``, and
        ``stage_<name>_s`` for each stage of the first run (subject model, T1 rendering and truth, each series,
        DICOM writing, waiting for the truth files).

    Raises
    ------
    ValueError
        When ``repeats`` is less than 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1. Found {repeats}.")
    from training.phantom import PhantomOptions, generate_study
    from training.phantom.runtime import reuse_large_allocations

    reuse_large_allocations()  # as the command line does
    options = PhantomOptions(seed=seed, size="full")
    totals: list[float] = []
    stages: dict[str, float] = {}
    for run in range(repeats):
        target = out_dir / f"run{run}"
        start = time.perf_counter()
        study = generate_study(options, target)
        totals.append(time.perf_counter() - start)
        if run == 0:
            stages = {f"stage_{name}_s": seconds for name, seconds in study.timings.items()}
        if not keep:
            shutil.rmtree(target, ignore_errors=True)
        logger.info("Phantom run %d: %.2f s", run, totals[-1])
    result = {
        "total_s": totals[0],
        "total_best_s": min(totals),
        "total_mean_s": sum(totals) / len(totals),
        "repeats": float(repeats),
    }
    result.update(stages)
    return result
