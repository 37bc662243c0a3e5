"""Benchmark of the writers on a full-size series (192 slices of 256 x 256).

Run ``python -m tests.operators.writers.bench_writers``. Not collected by pytest (speed targets live in
benchmarks, not in timed tests). Prints JSON: seconds per writer, best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from operators.writers import write_enhancement_seg, write_secondary_capture, write_synthetic_series
from operators.writers.content import ModelIdentity
from tests.operators.writers._sources import load_volume, synthetic_from, write_classic_series


def _best(repeats: int, run: Callable[[int], object]) -> float:
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        run(index)
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=192)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = {"model": ModelIdentity("bench", "1", hashlib.sha256(b"bench").hexdigest())}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_classic_series(root / "src", signed=False, n_slices=args.slices, rows=args.size, columns=args.size)
        volume = load_volume(root / "src")
        synthetic = synthetic_from(volume)
        values = sitk.GetArrayFromImage(volume.image)
        mask = values > np.percentile(values, 90)
        result = {
            "slices": args.slices,
            "size": args.size,
            "synthetic_series_s": _best(
                args.repeats,
                lambda i: write_synthetic_series(volume, synthetic, root / f"mr{i}", series_number=1, **model),
            ),
            "seg_s": _best(
                args.repeats,
                lambda i: write_enhancement_seg(volume, mask, root / f"seg{i}.dcm", series_number=2, **model),
            ),
            "secondary_capture_s": _best(
                args.repeats,
                lambda i: write_secondary_capture(volume, synthetic, root / f"sc{i}.dcm", series_number=3, **model),
            ),
        }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
