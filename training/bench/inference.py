"""Inference benchmark: the default model on a full-size volume, ONNX Runtime (the pipeline's path) vs PyTorch eager."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.model_folder import network_from_folder, recorded_network_config

if TYPE_CHECKING:
    from torch import nn

    from operators.model_inputs import NormalizedInputs
    from operators.model_manifest import ModelManifest

__all__ = [
    "FULL_SHAPE",
    "TARGET_S",
    "bench_inference",
    "network_from_folder",
    "pick_model",
    "recorded_network_config",
    "synthetic_inputs",
]

logger = logging.getLogger(__name__)

#: The phantom's full grid (slices, rows, columns): what a 1 mm sagittal 3D T1 gives.
FULL_SHAPE: tuple[int, int, int] = (192, 256, 256)
#: Issue 5: inference of the default model on a full-size volume on the 2-core machine takes at most this long.
TARGET_S = 15.0
#: Condition values used when the manifest gives no default (a typical 25% dose of a macrocyclic agent at 3 T,
#: on the full 1 mm grid).
TYPICAL_CONDITION: dict[str, float] = {
    "dose": 0.25,
    "field_strength_t": 3.0,
    "r1": 4.5,
    "sigma": 0.03,
    "voxel_mm": 1.0,
    "inversion_prepared": 1.0,
}
ROWS = ("ort", "eager")
#: Semi-axes of the synthetic brain as fractions of the grid (slices, rows, columns): the brain masks of 1 mm
#: phantom subjects span about 155 x 188 x 165 of 192 x 256 x 256 voxels. The network runs on that box plus a
#: margin (``operators.inference.brain_box``), so the brain's size sets the inference time.
BRAIN_SEMI_AXES: tuple[float, float, float] = (0.40, 0.37, 0.32)


def physical_cores() -> int:
    """Physical cores this process may use (what ONNX Runtime's default of 0 intra-op threads resolves to).

    Counts distinct (package, core) pairs of the CPUs in this process's affinity; falls back to the CPU count.
    """
    cpus = sorted(os.sched_getaffinity(0))
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            cores.add((package, (topology / "core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def synthetic_inputs(
    manifest: ModelManifest, shape: Sequence[int] = FULL_SHAPE, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Model inputs of the right channels and condition for ``manifest`` on a ``shape`` grid (for timing only).

    An ellipsoidal brain with the extent of the phantom's 1 mm brains (:data:`BRAIN_SEMI_AXES`); each channel
    has a plausible level inside it plus Gaussian noise in its own units (images near 0.8 in 95th-percentile
    units, subtractions in units of sigma, s_LD constant); the condition takes the manifest's defaults, else
    typical values. Run time does not depend on the values.

    Returns
    -------
    inputs, condition, brain
        (C, Z, Y, X) float32 in the manifest's channel order, (F,) float32 or None, (Z, Y, X) bool.

    Raises
    ------
    ValueError
        When ``shape`` is not three positive sizes.
    """
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be three positive sizes (slices, rows, columns). Found {tuple(shape)}.")
    size = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    squared = np.zeros(size, dtype=np.float32)
    for axis, n in enumerate(size):
        coordinate = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / (BRAIN_SEMI_AXES[axis] * n)
        squared += (coordinate**2).reshape([-1 if a == axis else 1 for a in range(3)])
    brain: np.ndarray = squared <= 1.0
    del squared
    inputs = np.empty((len(manifest.inputs), *size), dtype=np.float32)
    for index, name in enumerate(manifest.channel_names):
        channel = inputs[index]
        if name == "brain_mask":
            channel[...] = brain
        elif name == "s_ld":
            channel[...] = 0.03
        else:
            rng.standard_normal(size, dtype=np.float32, out=channel)
            if name in {"z_tilde_ld", "m_ld"}:
                channel *= np.float32(0.03)
            elif name != "z_ld":  # an image: brain near 0.8 with 3% noise
                channel *= np.float32(0.03)
                channel += np.float32(0.8) * brain
    condition: np.ndarray | None = None
    if manifest.condition is not None:
        given = manifest.condition.defaults
        values = [given[f] if f in given else TYPICAL_CONDITION[f] for f in manifest.condition.features]
        condition = np.array(values, dtype=np.float32)
    return inputs, condition, brain


class _EagerSession:
    """Stands in for an ONNX Runtime session in ``predict_volume``: runs the PyTorch network instead."""

    def __init__(self, network: nn.Module, condition_tensor: str | None, input_tensor: str) -> None:
        self._network = network
        self._condition_tensor = condition_tensor
        self._input_tensor = input_tensor

    def run(
        self, output_names: Sequence[str], feeds: dict[str, np.ndarray], run_options: object = None
    ) -> list[np.ndarray]:
        import torch

        del output_names, run_options  # one output; ONNX Runtime's run options mean nothing to PyTorch
        with torch.inference_mode():
            image = torch.from_numpy(feeds[self._input_tensor])
            if self._condition_tensor is not None and self._condition_tensor in feeds:
                out = self._network(image, torch.from_numpy(feeds[self._condition_tensor]))
            else:
                out = self._network(image)
            return [out.numpy()]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(fn: Callable[[], np.ndarray], repeats: int) -> dict[str, Any]:
    """One warm-up call, then ``repeats`` timed calls: wall and CPU seconds per run, best, median, output stats."""
    start = time.perf_counter()
    fn()
    warmup = time.perf_counter() - start
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    walls: list[float] = []
    cpus: list[float] = []
    output = np.zeros(1, dtype=np.float32)
    for _ in range(repeats):
        cpu, start = _cpu_s(), time.perf_counter()
        output = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_s() - cpu)
    return {
        "best_s": round(min(walls), 3),
        "median_s": round(statistics.median(walls), 3),
        "runs_s": [round(w, 3) for w in walls],
        "cpu_s": [round(c, 2) for c in cpus],
        "warmup_s": round(warmup, 3),
        "peak_rss_after_warmup_mib": round(rss_before, 1),
        "output_mean": float(np.mean(output, dtype=np.float64)),
        "output_finite": bool(np.isfinite(output).all()),
    }


def _normalized(manifest: ModelManifest, shape: Sequence[int], seed: int) -> NormalizedInputs:
    import SimpleITK as sitk

    from operators.model_inputs import NormalizedInputs

    inputs, condition, brain = synthetic_inputs(manifest, shape, seed=seed)
    reference = sitk.Image([int(n) for n in reversed(tuple(shape))], sitk.sitkFloat32)
    names = manifest.channel_names
    x_pc = inputs[names.index("x_pc")] if "x_pc" in names else inputs[0]
    return NormalizedInputs(
        manifest=manifest, inputs=inputs, condition=condition, brain=brain, reference=reference, x_pc=x_pc
    )


def _ort_row(
    manifest: ModelManifest,
    shape: Sequence[int],
    *,
    repeats: int,
    threads: int,
    tta: bool,
    seed: int,
    brain_crop: bool = True,
) -> Any:
    """The pipeline's own ``infer`` (CPU provider, the configured threads, TTA and brain crop) on synthetic inputs."""
    import onnxruntime as ort

    from operators.inference import InferenceSettings, get_session, infer

    normalized = _normalized(manifest, shape, seed)
    settings = InferenceSettings(
        providers=("CPUExecutionProvider",), intra_op_threads=threads, tta=tta, brain_crop=brain_crop
    )
    start = time.perf_counter()
    get_session(manifest, settings)  # created and cached here; infer reuses it
    session_s = time.perf_counter() - start
    last: dict[str, Any] = {}

    def run() -> np.ndarray:
        prediction = infer(normalized, settings)
        region = None if prediction.region is None else prediction.region.to_dict()
        last.update(providers=prediction.providers, patches=prediction.patches, tta=prediction.tta, region=region)
        return prediction.output

    row = _timed(run, repeats)
    return {**row, "session_s": round(session_s, 3), **last, "onnxruntime": ort.__version__}


def _eager_row(
    manifest: ModelManifest, shape: Sequence[int], *, repeats: int, threads: int, tta: bool, seed: int
) -> Any:
    """The same network in PyTorch eager (``torch.inference_mode``), tiled and padded by ``predict_volume``."""
    import torch

    from operators.inference import predict_volume
    from training.networks import describe_network

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)  # as ONNX Runtime's inter-op threads
    network, weights = network_from_folder(manifest.folder, manifest.model_file)
    channels, _, _ = describe_network(network)
    if channels != len(manifest.inputs):
        raise ValueError(
            f"model {manifest.name!r}: network config takes {channels} channels, manifest lists {len(manifest.inputs)}"
        )
    normalized = _normalized(manifest, shape, seed)
    session: Any = _EagerSession(network, manifest.condition_tensor, manifest.input_tensor)

    def run() -> np.ndarray:
        output, _ = predict_volume(session, manifest, normalized.inputs, normalized.condition, tta=tta)
        first: np.ndarray = output[0]
        return first

    row = _timed(run, repeats)
    parameters = int(sum(p.numel() for p in network.parameters()))
    return {**row, "weights": weights, "parameters": parameters, "torch": torch.__version__, "threads": threads}


def _run_row(row: str, work_dir: Path, arguments: list[str]) -> dict[str, Any]:
    """Run one row in a child process (so its peak resident memory is its own); return its JSON plus that peak."""
    work_dir.mkdir(parents=True, exist_ok=True)
    result = work_dir / f"{row}.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, "-m", "training.bench.inference", "--row", row, "--result", str(result), *arguments]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        errors = stderr.read().decode("utf-8", "replace")
    if process.returncode != 0 or not result.is_file():
        tail = "\n".join(errors.strip().splitlines()[-15:])
        raise RuntimeError(f"inference bench row {row!r} failed (exit code {process.returncode}):\n{tail}")
    data: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    data["peak_rss_mib"] = round(usage.ru_maxrss / 1024.0, 1)
    return data


def bench_inference(
    work_dir: Path,
    *,
    models_dir: Path | None = None,
    model: str | None = None,
    shape: Sequence[int] = FULL_SHAPE,
    repeats: int = 3,
    threads: int | None = None,
    seed: int = 0,
    reference: Path | None = None,
) -> dict[str, Any]:
    """Time the default (or named) model on a full-size volume: ONNX Runtime through the pipeline's ``infer``,
    and the same network in PyTorch eager, each in its own process; optionally a reference model folder (e.g. the
    previous version) in the same run, on the whole volume as it was released, with the ratio of the medians.

    Parameters
    ----------
    work_dir:
        Scratch folder for the rows' results.
    models_dir:
        Models folder (default: the configured one, ``GADSYNTH_MODELS_DIR``).
    model:
        Model name; None = the pipeline's default (``pick_model``: the first installed low-dose model).
    shape:
        Volume (slices, rows, columns); the full phantom grid by default.
    repeats:
        Timed runs per row, after one warm-up.
    threads:
        ONNX Runtime intra-op threads (default: the configured ``intra_op_threads``, 0 = one per physical core);
        PyTorch gets the same number (0 resolved to the physical cores).
    seed:
        Seed of the synthetic inputs.
    reference:
        A model folder to time beside it (ONNX Runtime row only, whole volume, no brain crop).

    Returns
    -------
    dict
        Model, shape, threads, TTA, the 15 s target and pass / fail (on the best run; ``pass_median`` on the
        median), the ``onnxruntime`` row (best / median / runs in seconds, CPU seconds, session set-up, peak RSS
        of its process), the ``pytorch_eager`` row (the same, weights source) or why there is none, and
        ``ort_over_eager`` (best ONNX Runtime / best eager).

    Raises
    ------
    ValueError
        When ``repeats`` < 1, ``threads`` < 0 or ``shape`` is not three positive sizes.
    operators.model_manifest.ModelManifestError
        When the model is missing or invalid.
    RuntimeError
        When the ONNX Runtime row fails (an eager failure is reported in its row instead).
    """
    from app.config import load_settings

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1. Found {repeats}.")
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = one per physical core). Found {threads}.")
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be three positive sizes (slices, rows, columns). Found {tuple(shape)}.")
    settings = load_settings(**({"models_dir": models_dir} if models_dir is not None else {}))
    manifest, chosen = pick_model(settings.models_dir, model)
    intra = settings.intra_op_threads if threads is None else threads
    eager_threads = intra or physical_cores()
    config = recorded_network_config(manifest.folder)
    timing = [
        *("--shape", *(str(int(n)) for n in shape), "--repeats", str(repeats), "--seed", str(seed)),
        *("--tta" if settings.tta else "--no-tta",),
    ]
    arguments = [
        *("--models-dir", str(settings.models_dir), "--model", manifest.name),
        *timing,
        *("--brain-crop" if settings.brain_crop else "--no-brain-crop",),
    ]
    result: dict[str, Any] = {
        "model": manifest.name,
        "version": manifest.version,
        "chosen": chosen,
        "network": _network_label(config),
        "shape": [int(n) for n in shape],
        "channels": len(manifest.inputs),
        "repeats": repeats,
        "threads": intra,
        "tta": settings.tta,
        "brain_crop": settings.brain_crop,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "target_s": TARGET_S,
    }
    logger.info("inference bench: %s on %s, %d run(s) after a warm-up", manifest.name, tuple(shape), repeats)
    ort_row = _run_row("ort", work_dir, [*arguments, "--threads", str(intra)])
    result["pass"] = ort_row["best_s"] <= TARGET_S
    result["pass_median"] = ort_row["median_s"] <= TARGET_S
    result["onnxruntime"] = ort_row
    eager: dict[str, Any] | str
    if config is None:
        eager = "n/a: the model is an ONNX graph without a network (no recorded network config)"
    elif importlib.util.find_spec("torch") is None:
        eager = "skipped: PyTorch is not installed"
    else:
        try:
            eager = _run_row("eager", work_dir, [*arguments, "--threads", str(eager_threads)])
        except RuntimeError as exc:
            logger.warning("PyTorch eager row failed: %s", exc)
            eager = f"failed: {exc}"
    result["pytorch_eager"] = eager
    if reference is not None:
        from operators.model_manifest import load_manifest

        folder = Path(reference)
        previous = load_manifest(folder.parent, folder.name)
        reference_arguments = [
            *("--models-dir", str(folder.parent), "--model", folder.name),
            *timing,
            *("--threads", str(intra), "--no-brain-crop"),
        ]
        row = _run_row("ort", work_dir / "reference", reference_arguments)
        result["reference"] = {"model": previous.name, "version": previous.version, "brain_crop": False, **row}
        result["median_over_reference"] = round(ort_row["median_s"] / row["median_s"], 3)
    result["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    result["ort_over_eager"] = (
        round(ort_row["best_s"] / eager["best_s"], 3) if isinstance(eager, dict) and eager["best_s"] > 0 else "n/a"
    )
    return result


def pick_model(models_dir: Path, name: str | None = None) -> tuple[ModelManifest, str]:
    """The named model, else the default: the first installed model in the pipeline's choice table
    (``app.model_choice.MODEL_RULES``), i.e. what a study with pre-contrast and low-dose T1 runs.

    Returns
    -------
    manifest, why
        The model (sha256 verified) and how it was picked.

    Raises
    ------
    operators.model_manifest.ModelManifestError
        When the named model or every model of the table is missing, or its manifest / sha256 is wrong.
    """
    from app.model_choice import MODEL_RULES
    from operators.model_manifest import MANIFEST_FILE, ModelManifestError, load_manifest

    if name:
        return load_manifest(models_dir, name), "named (--model)"
    for rule in MODEL_RULES:
        for candidate in rule.models:
            if (models_dir / candidate / MANIFEST_FILE).is_file():
                return load_manifest(models_dir, candidate), f"default (first installed of the {rule.name} models)"
    wanted = [m for rule in MODEL_RULES for m in rule.models]
    found = sorted(p.parent.name for p in models_dir.glob(f"*/{MANIFEST_FILE}"))
    raise ModelManifestError(
        f"No default model in {models_dir}: expected one of {wanted}. Available: {found or 'none'}. "
        "Install one, or name one with --model."
    )


def _network_label(config: dict[str, Any] | None) -> str:
    if config is None:
        return "none (ONNX graph)"
    keys = ("base_width", "scales", "blocks_per_scale", "finest_blocks", "levels", "inputs")
    return f"{config.get('kind')} " + " ".join(f"{k}={config[k]}" for k in keys if k in config)


def main(argv: list[str] | None = None) -> int:
    """Child-process entry point: run one row (``ort`` or ``eager``) and write its JSON to ``--result``."""
    parser = argparse.ArgumentParser(description="One row of the inference benchmark (run by bench_inference).")
    parser.add_argument("--row", choices=ROWS, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--shape", type=int, nargs=3, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--brain-crop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from operators.model_manifest import load_manifest

    manifest = load_manifest(args.models_dir, args.model)
    common = {"repeats": args.repeats, "threads": args.threads, "tta": args.tta, "seed": args.seed}
    if args.row == "ort":
        data = _ort_row(manifest, args.shape, brain_crop=args.brain_crop, **common)
    else:
        data = _eager_row(manifest, args.shape, **common)
    args.result.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
