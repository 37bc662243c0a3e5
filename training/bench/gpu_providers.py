"""Inference on a GPU machine: each ONNX Runtime execution provider on a whole 1 mm head, one model.

Needs only numpy and onnxruntime (a GPU build), so it runs on a machine without the rest of GadSynth:

    python -m training.bench.gpu_providers --model models/ce-lowdose-v1 --shape 192,256,256 --repeats 5

The input is random (timing does not depend on the values); the model runs exactly as the pipeline runs it
(whole volume, one call, the manifest's tensor names). Prints one JSON object: per provider the session time,
the first call and the median of the timed calls, and the largest difference from the CPU provider's output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def run(model_dir: Path, shape: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    if hasattr(ort, "preload_dlls"):  # CUDA / cuDNN from the nvidia-* wheels, when that is where they are
        with contextlib.suppress(Exception):  # a CPU build, or the libraries are on the loader path anyway
            ort.preload_dlls()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    channels = len(manifest["inputs"])
    image = rng.standard_normal((1, channels, *shape), dtype=np.float32)
    feeds: dict[str, np.ndarray] = {manifest["input_tensor"]: image}
    if manifest.get("condition_tensor"):
        features = len(manifest["condition"]["features"])
        feeds[manifest["condition_tensor"]] = np.full((1, features), 0.5, dtype=np.float32)
    output_name = manifest["output"]["tensor"]
    available = ort.get_available_providers()
    results: dict[str, Any] = {"onnxruntime": ort.__version__, "available": available, "shape": list(shape)}
    reference: np.ndarray | None = None
    for provider in reversed(PROVIDERS):  # CPU first: the others are compared with it
        if provider not in available:
            results[provider] = "not available"
            continue
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chosen: list[Any] = [provider]
        if provider == "TensorrtExecutionProvider":
            chosen = [(provider, {"trt_fp16_enable": False}), "CUDAExecutionProvider"]
        started = time.perf_counter()
        try:
            session = ort.InferenceSession(str(model_dir / "model.onnx"), sess_options=options, providers=chosen)
            created = time.perf_counter() - started
            started = time.perf_counter()
            out = session.run([output_name], feeds)[0]
            first = time.perf_counter() - started
            times = []
            for _ in range(repeats if provider != "CPUExecutionProvider" else 1):
                started = time.perf_counter()
                out = session.run([output_name], feeds)[0]
                times.append(time.perf_counter() - started)
        except Exception as exc:  # a provider that fails is a result too
            results[provider] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            continue
        if session.get_providers()[0] != provider:  # ONNX Runtime fell back (e.g. TensorRT without libnvinfer)
            results[provider] = f"fell back to {session.get_providers()}: not measured"
            continue
        entry: dict[str, Any] = {
            "session_s": round(created, 2),
            "first_call_s": round(first, 3),
            "median_s": round(statistics.median(times), 4),
            "providers_used": session.get_providers(),
        }
        if reference is None:
            reference = out
        else:
            entry["max_abs_diff_vs_cpu"] = float(np.abs(out - reference).max())
        results[provider] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/ce-lowdose-v1"))
    parser.add_argument("--shape", default="192,256,256")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    z, y, x = (int(v) for v in args.shape.split(","))
    print(json.dumps(run(args.model, (z, y, x), args.repeats), indent=2))  # noqa: T201 - the output is the product


if __name__ == "__main__":
    main()
