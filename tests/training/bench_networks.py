"""Benchmark: the differential U-Net on a full-size volume through the pipeline's ONNX Runtime path (CPU).

Run ``python -m tests.training.bench_networks [--base-width 8] [--shape 192 256 256]``. Not collected by pytest
(speed targets live in benchmarks, not in timed tests). Exports an untrained network of the requested size into a
temporary model folder (run time does not depend on the weights), loads it with the manifest loader and runs
``operators.inference.predict_volume`` as the pipeline does. Prints JSON: wall and CPU seconds per run
(best of ``--repeats``), peak memory, and the configuration. On a shared machine compare CPU seconds / threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from operators.inference import InferenceSettings, get_session, predict_volume
from training.export import differential_manifest_fields, write_model_folder
from training.networks import DifferentialUNet, DifferentialUNetConfig


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-width", type=int, default=DifferentialUNetConfig.base_width)
    parser.add_argument("--finest-blocks", type=int, default=DifferentialUNetConfig.finest_blocks)
    parser.add_argument("--blocks", type=int, default=2, help="CRBs per scale (the finest scale: --finest-blocks)")
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 256, 256), metavar=("D", "H", "W"))
    parser.add_argument("--patch", type=int, nargs=3, default=None, metavar=("D", "H", "W"))
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = one per core)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    finest = args.finest_blocks if args.finest_blocks and args.finest_blocks > 0 else None
    config = DifferentialUNetConfig(base_width=args.base_width, blocks_per_scale=args.blocks, finest_blocks=finest)
    torch.manual_seed(0)
    network = DifferentialUNet(config).eval()
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, *args.shape)).astype(np.float32) * 0.03
    condition = np.array([0.25, 3.0, 4.5, 0.03], dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        patch = tuple(args.patch) if args.patch else None
        fields = differential_manifest_fields(name="bench", version="0", gamma=1.0, patch_size=patch)
        manifest = write_model_folder(network, Path(tmp) / "bench", fields)
        session = get_session(manifest, InferenceSettings(intra_op_threads=args.threads))
        runs = []
        for _ in range(args.repeats):
            cpu, wall = _cpu_seconds(), time.perf_counter()
            _, calls = predict_volume(session, manifest, image, condition)
            runs.append({"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(_cpu_seconds() - cpu, 2)})
    best = min(runs, key=lambda r: r["wall_s"])
    result = {
        "network": config.to_dict(),
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "shape": list(args.shape),
        "patch": list(patch) if patch else None,
        "model_calls": calls,
        "runs": runs,
        "best_wall_s": best["wall_s"],
        "best_cpu_s": best["cpu_s"],
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "onnxruntime": ort.__version__,
        "cpu_count": len(os.sched_getaffinity(0)),
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
