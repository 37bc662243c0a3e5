"""ONNX Runtime inference: warm sessions, provider choice, sliding window with Gaussian blending, flip TTA."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from operators.model_inputs import NormalizedInputs
from operators.model_manifest import ModelManifest

__all__ = [
    "CROP_CONTEXT_VOXELS",
    "PROVIDER_PRIORITY",
    "BrainBox",
    "InferenceSettings",
    "Prediction",
    "SessionPool",
    "brain_box",
    "flip_passes",
    "gaussian_importance",
    "get_session",
    "infer",
    "predict_volume",
    "select_providers",
    "sliding_window",
    "window_for",
]

logger = logging.getLogger(__name__)

#: Execution providers in order of preference; the first available ones are used.
PROVIDER_PRIORITY: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_GPU_PROVIDERS = frozenset(PROVIDER_PRIORITY[:2])

RunFn = Callable[[np.ndarray], np.ndarray]

#: Each call hands the CPU arena's memory back when it returns: the arena keeps inference fast (without it a
#: full-size head took 26 s instead of 8.4 s here), and the stages after it reuse the memory instead of adding
#: to it.
_SHRINK_ARENA = ort.RunOptions()
_SHRINK_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


@dataclass(frozen=True)
class InferenceSettings:
    """How inference runs (all optional; the manifest gives the model's own defaults).

    Parameters
    ----------
    providers:
        ONNX Runtime execution providers in order; None picks by availability (TensorRT > CUDA > CPU).
    intra_op_threads:
        Threads inside one operator (0 = ONNX Runtime's default, one per physical core).
    inter_op_threads:
        Threads across independent operators.
    tta:
        Average the 8 axis-flip combinations; None = on with a GPU provider, off on CPU (8x the time).
    overlap:
        Sliding-window overlap in [0, 1); None = the manifest's ``patch_overlap``.
    batch_size:
        Patches per ONNX call; None = the manifest's ``batch_size``.
    max_patch_voxels:
        A model without a patch size runs on the whole volume up to this many voxels (a 1 mm head, 256 x 256 x 192,
        runs whole, as the models were evaluated: its activations take about 2.7 GiB), and by sliding window
        beyond (windows of at most this size, overlap 0.25; see :func:`window_for`). None: always whole.
    brain_crop:
        Run the network on the brain's bounding box only (see :func:`brain_box`); the contrast signal is zero
        outside it, so the synthetic image there is the source image, as post-processing makes it anyway beyond
        the brain mask grown by ``BRAIN_MARGIN_MM``. False: the whole volume (how models up to ce-lowdose-v1 1.1.0,
        trained on whole 4 mm heads, were evaluated).
    """

    providers: tuple[str, ...] | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    tta: bool | None = None
    overlap: float | None = None
    batch_size: int | None = None
    max_patch_voxels: int | None = 192 * 256 * 256
    brain_crop: bool = True


@dataclass
class Prediction:
    """The model's output on the t1_pre grid (first output channel), with how it was obtained."""

    output: np.ndarray
    model_name: str
    model_version: str
    model_sha256: str
    providers: list[str]
    tta: bool
    patches: int
    seconds: float
    region: BrainBox | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for report.json (without the array)."""
        return {
            "model": self.model_name,
            "version": self.model_version,
            "sha256": self.model_sha256,
            "providers": list(self.providers),
            "tta": self.tta,
            "patches": self.patches,
            "seconds": self.seconds,
            "region": None if self.region is None else self.region.to_dict(),
        }


#: Context the network sees beyond the brain region it predicts (voxels): the 8 voxels that training ignores at
#: each patch face (``training.losses.PAPER_MARGIN``), so every voxel kept had at least the context of a voxel
#: the training loss was computed on.
CROP_CONTEXT_VOXELS = 8


@dataclass(frozen=True)
class BrainBox:
    """The part of the volume (slices, rows, columns) the network ran on."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    volume_shape: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.stop[0] - self.start[0], self.stop[1] - self.start[1], self.stop[2] - self.start[2])

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return (
            slice(self.start[0], self.stop[0]),
            slice(self.start[1], self.stop[1]),
            slice(self.start[2], self.stop[2]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: where the box lies, its size and its share of the volume's voxels."""
        return {
            "kind": "brain bounding box",
            "start_zyx": list(self.start),
            "shape_zyx": list(self.shape),
            "volume_shape_zyx": list(self.volume_shape),
            "voxel_fraction": round(math.prod(self.shape) / max(1, math.prod(self.volume_shape)), 4),
        }


def brain_box(
    brain: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    margin_mm: float,
    context_voxels: int = CROP_CONTEXT_VOXELS,
    divisor: int = 1,
) -> BrainBox | None:
    """The bounding box of ``brain`` grown by ``margin_mm`` (where post-processing keeps contrast) plus
    ``context_voxels``, widened inside the volume to multiples of ``divisor`` where it fits.

    None for an empty mask (the caller runs the whole volume).
    """
    if not brain.any():
        return None
    shape = tuple(int(n) for n in brain.shape)
    start: list[int] = []
    stop: list[int] = []
    for axis, (n, spacing) in enumerate(zip(shape, spacing_zyx, strict=True)):
        others = tuple(i for i in range(3) if i != axis)
        present = np.flatnonzero(brain.any(axis=others))
        grow = math.ceil(margin_mm / float(spacing)) + context_voxels
        low, high = max(0, int(present[0]) - grow), min(n, int(present[-1]) + 1 + grow)
        want = min(n, math.ceil((high - low) / divisor) * divisor)
        extra = want - (high - low)
        low = max(0, low - extra // 2)
        high = min(n, low + want)
        low = max(0, high - want)
        start.append(low)
        stop.append(high)
    return BrainBox(
        start=(start[0], start[1], start[2]),
        stop=(stop[0], stop[1], stop[2]),
        volume_shape=(shape[0], shape[1], shape[2]),
    )


def select_providers(preferred: Sequence[str] | None = None, *, available: Sequence[str] | None = None) -> list[str]:
    """Execution providers to use.

    Parameters
    ----------
    preferred:
        Explicit providers in order (an override); the CPU provider is appended as the last fallback.
    available:
        What this ONNX Runtime build offers (default: ``onnxruntime.get_available_providers()``).

    Raises
    ------
    ValueError
        When a preferred provider is not available (the message lists the available ones).
    """
    available = list(available if available is not None else ort.get_available_providers())
    if preferred:
        unknown = [p for p in preferred if p not in available]
        if unknown:
            raise ValueError(f"ONNX Runtime providers {unknown} are not available here. Available: {available}")
        chosen = list(dict.fromkeys(preferred))
        if "CPUExecutionProvider" in available and "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        return chosen
    return [p for p in PROVIDER_PRIORITY if p in available]


class SessionPool:
    """ONNX Runtime sessions kept warm for the life of a process (one per model file, providers and threads).

    A long-lived process (a service worker, an evaluation over many studies) builds its pool once, so only the
    first study pays for loading and optimizing the graph. ``created`` counts the sessions built, so a caller (or a
    test) can check that later studies built none.
    """

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, str, tuple[str, ...], int, int], ort.InferenceSession] = {}
        self.created = 0

    def get(self, manifest: ModelManifest, settings: InferenceSettings | None = None) -> ort.InferenceSession:
        """The session of a model, created on first use.

        Sessions are keyed by model path, sha256 (a re-exported model gets a new session), providers and thread
        counts.

        Raises
        ------
        ValueError
            When requested providers are not available.
        """
        settings = settings or InferenceSettings()
        providers = tuple(select_providers(settings.providers))
        path = str(manifest.model_path.resolve())
        key = (path, manifest.sha256, providers, settings.intra_op_threads, settings.inter_op_threads)
        session = self._sessions.get(key)
        if session is None:
            session = _new_session(path, providers, settings.intra_op_threads, settings.inter_op_threads)
            self._sessions[key] = session
            self.created += 1
        return session


def _new_session(path: str, providers: tuple[str, ...], intra: int, inter: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = inter
    options.log_severity_level = 3
    # The memory-pattern planner keeps the first run's arena and grows it on the next: a warm full-size session
    # held about 5.3 GiB from the second call on instead of 2.8 GiB, with no measurable speed gain (gadsynth bench).
    options.enable_mem_pattern = False
    session = ort.InferenceSession(path, sess_options=options, providers=list(providers))
    logger.info("ONNX Runtime session for %s on %s", path, session.get_providers())
    return session


#: The pool of callers that hold none of their own (tests, benchmarks, training checks).
_DEFAULT_POOL = SessionPool()


def get_session(manifest: ModelManifest, settings: InferenceSettings | None = None) -> ort.InferenceSession:
    """The session of a model from the process-wide default pool (see :class:`SessionPool`).

    Raises
    ------
    ValueError
        When requested providers are not available.
    """
    return _DEFAULT_POOL.get(manifest, settings)


def gaussian_importance(patch_size: Sequence[int], *, sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian blending weights for one patch (std = ``sigma_scale`` * patch size per axis), peak 1, no zeros."""
    axes = []
    for n in patch_size:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / max(sigma_scale * n, 1e-6)) ** 2))
    weight: np.ndarray = functools.reduce(np.multiply.outer, axes)
    weight /= weight.max()
    floor = weight[weight > 0].min()
    return np.asarray(np.maximum(weight, floor), dtype=np.float32)


def _starts(length: int, patch: int, overlap: float) -> list[int]:
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    count = math.ceil((length - patch) / step) + 1
    return sorted({round(i * (length - patch) / (count - 1)) for i in range(count)})


def _pad_to(array: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the spatial axes (last three) to at least ``shape``; return the crop that undoes it."""
    spatial = array.shape[-3:]
    pads = [max(0, t - s) for s, t in zip(spatial, shape, strict=True)]
    if not any(pads):
        return array, (slice(None),) * 3
    width = [(0, 0)] * (array.ndim - 3) + [(p // 2, p - p // 2) for p in pads]
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(pads, spatial, strict=True))
    return np.pad(array, width), crop


def sliding_window(
    run: RunFn,
    image: np.ndarray,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    sigma_scale: float = 0.125,
) -> tuple[np.ndarray, int]:
    """Patch-wise inference with Gaussian blending.

    Parameters
    ----------
    run:
        Maps a batch (B, C, *patch_size) to (B, K, *patch_size).
    image:
        (C, Z, Y, X) input; zero-padded to at least ``patch_size`` (and cropped back).
    patch_size:
        Window size (Z, Y, X).
    overlap:
        Fraction of a window shared with its neighbour along each axis.
    batch_size:
        Windows per ``run`` call.
    sigma_scale:
        Gaussian std as a fraction of the window size (nnU-Net's 1/8).

    Returns
    -------
    output, patches
        (K, Z, Y, X) blended output and the number of windows run.
    """
    padded, crop = _pad_to(image, patch_size)
    spatial = padded.shape[1:]
    weight = gaussian_importance(patch_size, sigma_scale=sigma_scale)
    corners = list(itertools.product(*(_starts(n, p, overlap) for n, p in zip(spatial, patch_size, strict=True))))
    accumulated: np.ndarray | None = None
    norm = np.zeros(spatial, dtype=np.float32)
    for first in range(0, len(corners), batch_size):
        chunk = corners[first : first + batch_size]
        windows = [tuple(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True)) for corner in chunk]
        batch = np.stack([padded[(slice(None), *w)] for w in windows])
        result = run(np.ascontiguousarray(batch))
        if accumulated is None:
            accumulated = np.zeros((result.shape[1], *spatial), dtype=np.float32)
        for window, out in zip(windows, result, strict=True):
            accumulated[(slice(None), *window)] += out * weight
            norm[window] += weight
    if accumulated is None:  # pragma: no cover - corners is never empty
        raise RuntimeError("sliding window produced no patches")
    accumulated /= norm
    return accumulated[(slice(None), *crop)], len(corners)


def _whole(run: RunFn, image: np.ndarray, divisor: int) -> np.ndarray:
    target = [math.ceil(n / divisor) * divisor for n in image.shape[1:]]
    padded, crop = _pad_to(image, target)
    out: np.ndarray = run(padded[None])[0]
    return out[(slice(None), *crop)]


def predict_volume(
    session: ort.InferenceSession,
    manifest: ModelManifest,
    inputs: np.ndarray,
    condition: np.ndarray | None,
    *,
    tta: bool = False,
    overlap: float | None = None,
    batch_size: int | None = None,
    patch_size: Sequence[int] | None = None,
) -> tuple[np.ndarray, int]:
    """Run the model on a whole volume: in one piece when it fits the patch size, else by sliding window.

    Parameters
    ----------
    session:
        From ``get_session``.
    manifest:
        Tensor names, patch size, overlap, spatial divisor and batch size.
    inputs:
        (C, Z, Y, X) float32 in the manifest's channel order.
    condition:
        (F,) float32 condition vector, or None.
    tta:
        Average over the 8 combinations of flips along the three spatial axes.
    patch_size:
        Window size overriding the manifest's (see :func:`window_for`).

    Returns
    -------
    output, patches
        (K, Z, Y, X) float32 output and the number of model calls per flip.
    """
    overlap = manifest.patch_overlap if overlap is None else overlap
    batch_size = batch_size or manifest.batch_size
    input_name = manifest.input_tensor
    output_name = manifest.output.tensor

    def run(batch: np.ndarray) -> np.ndarray:
        feeds = {input_name: batch.astype(np.float32, copy=False)}
        if manifest.condition_tensor is not None and condition is not None:
            feeds[manifest.condition_tensor] = np.repeat(condition[None].astype(np.float32), batch.shape[0], axis=0)
        out = session.run([output_name], feeds, _SHRINK_ARENA)[0]
        return np.asarray(out, dtype=np.float32)

    patch = tuple(patch_size) if patch_size is not None else manifest.patch_size
    fits = patch is None or all(n <= p for n, p in zip(inputs.shape[1:], patch, strict=True))

    def once(volume: np.ndarray) -> tuple[np.ndarray, int]:
        if fits or patch is None:
            return _whole(run, volume, manifest.spatial_divisor), 1
        return sliding_window(run, volume, patch, overlap=overlap, batch_size=batch_size)

    if not tta:
        return once(inputs)
    total: np.ndarray | None = None
    patches = 0
    for out, calls in flip_passes(once, inputs):
        total = out.copy() if total is None else total + out
        patches = calls
    if total is None:  # pragma: no cover - the loop always runs
        raise RuntimeError("no TTA pass ran")
    return total / np.float32(8.0), patches


def flip_passes(
    run: Callable[[np.ndarray], tuple[np.ndarray, int]], inputs: np.ndarray
) -> Iterator[tuple[np.ndarray, int]]:
    """``run`` on the 8 combinations of flips of (C, Z, Y, X) ``inputs`` along the spatial axes, each output flipped
    back: flip TTA averages them, the uncertainty calibration takes their spread."""
    for flips in itertools.product((False, True), repeat=3):
        axes = tuple(1 + i for i, flip in enumerate(flips) if flip)
        flipped = np.flip(inputs, axis=axes) if axes else inputs
        out, patches = run(np.ascontiguousarray(flipped))
        yield (np.flip(out, axis=axes) if axes else out), patches


#: Overlap of the windows a whole-volume model is run in when the volume is too large for one call.
WINDOW_OVERLAP = 0.25


def _starts_count(length: int, window: int, overlap: float) -> int:
    return len(_starts(length, window, overlap))


def window_for(shape: Sequence[int], manifest: ModelManifest, max_voxels: int | None) -> tuple[int, int, int] | None:
    """The sliding window for a whole-volume model on a volume of ``shape`` (Z, Y, X) over ``max_voxels``.

    None when the manifest has its own patch size, when there is no limit, or when the volume fits. Otherwise the
    window (sides multiples of the model's spatial divisor, at most ``max_voxels``) that evaluates the fewest
    voxels in all: a slab across the whole of two axes when one fits, else a cube.
    """
    if manifest.patch_size is not None or max_voxels is None or math.prod(shape) <= max_voxels:
        return None
    divisor = manifest.spatial_divisor
    full = [int(math.ceil(n / divisor) * divisor) for n in shape]
    side = max(divisor, round(max_voxels ** (1 / 3)) // divisor * divisor)
    candidates = [[min(n, side) for n in full]]
    for axis in range(3):
        across = math.prod(n for i, n in enumerate(full) if i != axis)
        depth = max_voxels // across // divisor * divisor
        if depth >= 2 * divisor:
            candidates.append([depth if i == axis else n for i, n in enumerate(full)])

    def cost(window: list[int]) -> int:
        calls = math.prod(_starts_count(n, w, WINDOW_OVERLAP) for n, w in zip(full, window, strict=True))
        return calls * math.prod(window)

    best = min(candidates, key=cost)
    return best[0], best[1], best[2]


def infer(
    normalized: NormalizedInputs, settings: InferenceSettings | None = None, *, sessions: SessionPool | None = None
) -> Prediction:
    """Run the normalized inputs' model and return its first output channel on the t1_pre grid.

    ``sessions`` is the caller's warm pool (a :class:`app.pipeline.Pipeline` holds one); None uses the default.

    Raises
    ------
    ValueError
        When requested providers are not available.
    """
    from operators.postprocess import BRAIN_MARGIN_MM

    settings = settings or InferenceSettings()
    manifest = normalized.manifest
    started = time.perf_counter()
    session = (sessions or _DEFAULT_POOL).get(manifest, settings)
    providers = session.get_providers()
    tta = settings.tta if settings.tta is not None else any(p in _GPU_PROVIDERS for p in providers)
    region = None
    inputs = normalized.inputs
    if settings.brain_crop:
        spacing_zyx = tuple(reversed(normalized.reference.GetSpacing()))
        region = brain_box(normalized.brain, spacing_zyx, margin_mm=BRAIN_MARGIN_MM, divisor=manifest.spatial_divisor)
        if region is not None:
            inputs = np.ascontiguousarray(inputs[(slice(None), *region.slices)])
    window = window_for(inputs.shape[1:], manifest, settings.max_patch_voxels)
    output, patches = predict_volume(
        session,
        manifest,
        inputs,
        normalized.condition,
        tta=tta,
        overlap=settings.overlap if window is None or settings.overlap is not None else WINDOW_OVERLAP,
        batch_size=settings.batch_size,
        patch_size=window,
    )
    first = output[0]
    if region is not None:  # the network said nothing beyond the box: no contrast there
        first = np.zeros(normalized.inputs.shape[1:], dtype=np.float32)
        first[region.slices] = output[0]
    seconds = time.perf_counter() - started
    logger.info(
        "inference %s %s on %s: %s, %d patch(es), TTA %s, %.2f s",
        manifest.name,
        manifest.version,
        providers[0],
        "whole volume" if region is None else f"brain box {'x'.join(map(str, region.shape))}",
        patches,
        "on" if tta else "off",
        seconds,
    )
    return Prediction(
        output=first,
        model_name=manifest.name,
        model_version=manifest.version,
        model_sha256=manifest.sha256,
        providers=list(providers),
        tta=tta,
        patches=patches,
        seconds=seconds,
        region=region,
    )
