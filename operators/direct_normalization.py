"""Per-modality normalizations of direct models (z-score, [0, 1] by brain percentiles, none), each undoable."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from operators.model_manifest import NormalizationKind, NormalizationSpec
from operators.normalization import EPS
from operators.roles import QUANTITATIVE_SCALE

__all__ = [
    "DirectNormalization",
    "FixedScaleNormalization",
    "IdentityNormalization",
    "MinMaxNormalization",
    "ZScoreNormalization",
    "direct_strategy",
    "normalize_target",
    "role_strategy",
]


class DirectNormalization(Protocol):
    """A per-modality normalization for direct models: ``run`` normalizes, ``undo`` maps model output back."""

    def run(self, image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, dict[str, float]]: ...

    def apply(self, image: np.ndarray, params: dict[str, float]) -> np.ndarray: ...

    def undo(self, array: np.ndarray, params: dict[str, float]) -> np.ndarray: ...


def _brain_values(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The image's values inside the brain mask.

    Raises
    ------
    ValueError
        When the brain mask holds fewer than 100 voxels.
    """
    values: np.ndarray = image[brain]
    if values.size < 100:
        raise ValueError(f"the brain mask holds {values.size} voxels (expected at least 100)")
    return values


class ZScoreNormalization:
    """(x - brain mean) / brain std, optionally clipped to +-``clip`` (seed 001 cuts at 40)."""

    def __init__(self, spec: NormalizationSpec) -> None:
        self.clip = spec.zscore_clip

    def run(self, image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Normalize one modality (raises ``ValueError`` for a brain mask under 100 voxels)."""
        values = _brain_values(image, brain)
        params = {"mean": float(values.mean()), "std": float(values.std())}
        return self.apply(image, params), params

    def apply(self, image: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Normalize with given parameters (e.g. another series' in this one's scale)."""
        out = (image - params["mean"]) / max(params["std"], EPS)
        if self.clip is not None:
            out = np.clip(out, -self.clip, self.clip)
        return out.astype(np.float32)

    def undo(self, array: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Back to the source intensity scale."""
        return (array * max(params["std"], EPS) + params["mean"]).astype(np.float32)


class MinMaxNormalization:
    """Brain percentiles (default 0.5 and 99.5) mapped to 0 and 1, clipped (seed 004's [0, 1] scaling)."""

    def __init__(self, spec: NormalizationSpec) -> None:
        self.low, self.high = spec.clip_percentiles

    def run(self, image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Normalize one modality (raises ``ValueError`` for a brain mask under 100 voxels)."""
        values = _brain_values(image, brain)
        lo, hi = (float(v) for v in np.percentile(values, [self.low, self.high]))
        params = {"low": lo, "high": hi}
        return self.apply(image, params), params

    def apply(self, image: np.ndarray, params: dict[str, float], *, upper: float = 1.0) -> np.ndarray:
        """Normalize with given parameters (e.g. another series' in this one's scale), clipped to [0, upper]."""
        out = np.clip((image - params["low"]) / max(params["high"] - params["low"], EPS), 0.0, upper)
        return out.astype(np.float32)

    def undo(self, array: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Back to the source intensity scale."""
        return (array * max(params["high"] - params["low"], EPS) + params["low"]).astype(np.float32)


class IdentityNormalization:
    """No normalization (quantitative maps such as T1 in ms are already comparable across scanners)."""

    def __init__(self, spec: NormalizationSpec) -> None:
        del spec

    def run(self, image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Return the image as float32."""
        del brain
        return self.apply(image, {}), {}

    def apply(self, image: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Return the image as float32."""
        del params
        return image.astype(np.float32)

    def undo(self, array: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Return the array as float32."""
        del params
        return array.astype(np.float32)


class FixedScaleNormalization:
    """Divide by a fixed constant (a quantitative map's unit), clipped to [0, 2]: the same scale for every study."""

    def __init__(self, scale: float) -> None:
        self.scale = float(scale)

    def run(self, image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Scale one map (the brain mask is unused: nothing is estimated from the study)."""
        del brain
        params = {"scale": self.scale}
        return self.apply(image, params), params

    def apply(self, image: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Scale with given parameters."""
        return np.clip(image / np.float32(params["scale"]), 0.0, 2.0).astype(np.float32)

    def undo(self, array: np.ndarray, params: dict[str, float]) -> np.ndarray:
        """Back to the map's unit."""
        return (array * np.float32(params["scale"])).astype(np.float32)


def role_strategy(spec: NormalizationSpec, role: str) -> DirectNormalization:
    """The strategy for one input role: a fixed scale for quantitative maps, the model's kind for the others."""
    if role in QUANTITATIVE_SCALE:
        return FixedScaleNormalization(QUANTITATIVE_SCALE[role])
    return direct_strategy(spec)


def normalize_target(spec: NormalizationSpec, image: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """A standard-dose image in t1_pre's normalized scale, as a direct model's training target: like ``apply`` of
    t1_pre's parameters, but min-max clips at ``spec.target_max`` instead of 1 (enhancement is brighter than
    the pre-contrast's 99.5th percentile)."""
    if spec.kind != NormalizationKind.MINMAX:
        return direct_strategy(spec).apply(image, params)
    return MinMaxNormalization(spec).apply(image, params, upper=spec.target_max)


def direct_strategy(spec: NormalizationSpec) -> DirectNormalization:
    """The per-modality strategy for a direct model's normalization kind.

    Raises
    ------
    ValueError
        When the kind is ``differential`` (not a per-modality strategy).
    """
    strategies: dict[NormalizationKind, type[ZScoreNormalization | MinMaxNormalization | IdentityNormalization]] = {
        NormalizationKind.ZSCORE: ZScoreNormalization,
        NormalizationKind.MINMAX: MinMaxNormalization,
        NormalizationKind.NONE: IdentityNormalization,
    }
    if spec.kind not in strategies:
        raise ValueError(f"no per-modality strategy for kind {spec.kind.value!r}; known: {sorted(strategies)}")
    return strategies[spec.kind](spec)
