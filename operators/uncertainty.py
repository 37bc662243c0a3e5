"""Per-voxel uncertainty of the synthetic image: a calibrated error model, a low-confidence region and summaries.

The map is the predicted standard deviation of the synthetic image's error against the true standard-dose image,
in t1_pre's intensity units. It comes from a heteroscedastic error model fitted, per model, on phantom subjects that
are neither training nor test subjects (``uncertainty.json`` in the model folder, written by
``gadsynth uncertainty-calibrate``):

    E|error| = w_const + sum_k w_k * feature_k        (non-negative least squares; weights >= 0)
    std = sqrt(pi / 2) * E|error|                     (a Gaussian error of that mean absolute value)

The features are computed from what the pipeline already has, at no extra network pass: the predicted contrast's
magnitude (raw and smoothed), its disagreement with the smoothed linear dose scaling of the acquired low-dose
difference and that difference itself (low-dose models), the local noise of the subtraction, and the pre-contrast
noise the synthetic image inherits (the residual of a 3x3x3 median filter: the synthetic image is x_PC + y, so its
error holds x_PC's noise voxel for voxel; with ``average_low_dose`` it is the mean of x_PC and x_LD outside the
enhancement, and the residual is taken of that mean). On the 1 mm phantom test set this model tracks the error
better than the spread over 8 flipped passes or over noise-perturbed inputs, at a few seconds instead of 6 to 8
network passes (``evaluation/uncertainty/``).

The low-confidence region is the brain where the std, smoothed over 2 mm, exceeds the model's threshold
(``low_confidence_std``, as a fraction of t1_pre's brain 95th percentile).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from operators.model_inputs import NormalizedInputs

__all__ = [
    "FEATURES",
    "UNCERTAINTY_FILE",
    "UncertaintyMap",
    "UncertaintyModel",
    "error_features",
    "load_uncertainty_model",
]

logger = logging.getLogger(__name__)

#: The calibration file in a model folder.
UNCERTAINTY_FILE = "uncertainty.json"

#: Smoothing of the contrast magnitude and of the linear scaling (voxels).
SMOOTHING_VOXELS = 1.0

#: The low-confidence region is thresholded on the std smoothed with a Gaussian of this sigma (mm).
LOW_CONFIDENCE_SMOOTHING_MM = 2.0

#: Feature name -> meaning (every feature in t1_pre's intensity units).
FEATURES: dict[str, str] = {
    "abs_contrast": "|predicted contrast| at the voxel",
    "abs_contrast_smooth": f"|predicted contrast| smoothed (Gaussian, {SMOOTHING_VOXELS:g} voxel)",
    "linear_disagreement": f"|smoothed linear dose scaling (x_LD - x_PC) / d - predicted contrast| "
    f"(Gaussian {SMOOTHING_VOXELS:g} voxel; low-dose models)",
    "local_noise": "local noise sigma of the low-dose subtraction scaled by 1 / d (low-dose models)",
    "low_dose_difference": "|x_LD - x_PC| / d at the voxel, unsmoothed (low-dose models)",
    "pre_residual": "|x_PC - its 3x3x3 median| (with average_low_dose: of the x_PC / x_LD mean): the noise the "
    "synthetic image inherits",
}

_GAUSS = math.sqrt(math.pi / 2.0)


@dataclass(frozen=True)
class UncertaintyModel:
    """A fitted error model: the weights, the low-confidence threshold and where they came from."""

    weights: dict[str, float]
    const: float
    low_confidence_std: float
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> UncertaintyModel:
        """Read ``uncertainty.json``.

        Raises
        ------
        ValueError
            When the file is not a GadSynth uncertainty model or names an unknown feature.
        """
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("schema_version") != 1 or "weights" not in data:
            raise ValueError(f"{path} is not a GadSynth uncertainty model (schema_version 1 with 'weights')")
        unknown = sorted(set(data["weights"]) - set(FEATURES))
        if unknown:
            raise ValueError(f"{path}: unknown features {unknown}; known: {sorted(FEATURES)}")
        return cls(
            weights={k: float(v) for k, v in data["weights"].items()},
            const=float(data["const"]),
            low_confidence_std=float(data["low_confidence_std"]),
            provenance=dict(data.get("provenance", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``uncertainty.json`` document."""
        return {
            "schema_version": 1,
            "method": "calibrated error model: E|error| = const + sum of weight * feature (non-negative least "
            "squares on calibration subjects); std = sqrt(pi / 2) * E|error|",
            "features": {name: FEATURES[name] for name in self.weights},
            "weights": self.weights,
            "const": self.const,
            "const_unit": "fraction of t1_pre's brain 95th percentile",
            "low_confidence_std": self.low_confidence_std,
            "low_confidence_unit": "std as a fraction of t1_pre's brain 95th percentile",
            "provenance": self.provenance,
        }

    def std(self, features: dict[str, np.ndarray], scale: float) -> np.ndarray:
        """The predicted standard deviation from the features (t1_pre units; ``scale`` = its brain 95th percentile).

        Raises
        ------
        ValueError
            When a weighted feature is missing (e.g. a low-dose feature for a zero-dose model).
        """
        missing = sorted(name for name, w in self.weights.items() if w > 0 and name not in features)
        if missing:
            raise ValueError(f"the uncertainty model needs features {missing}, which this model's inputs lack")
        mean_abs = np.full(next(iter(features.values())).shape, self.const * scale, dtype=np.float32)
        for name, weight in self.weights.items():
            if weight > 0:
                mean_abs += np.float32(weight) * features[name]
        return (mean_abs * np.float32(_GAUSS)).astype(np.float32)


@dataclass
class UncertaintyMap:
    """The synthetic image's per-voxel std (t1_pre grid and units), the low-confidence region and summaries."""

    std: np.ndarray
    low_confidence: np.ndarray
    summary: dict[str, Any]


def load_uncertainty_model(model_dir: Path) -> UncertaintyModel | None:
    """The model folder's error model, or None when it has none (no uncertainty map is then written)."""
    path = Path(model_dir) / UNCERTAINTY_FILE
    return UncertaintyModel.from_file(path) if path.is_file() else None


def error_features(
    contrast: np.ndarray, normalized: NormalizedInputs, synthetic: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The features of :data:`FEATURES` that the model's inputs allow, from the predicted contrast (t1_pre units).

    ``synthetic`` (the synthetic image on the same grid) matters only for models whose post-processing averages
    x_PC with x_LD (``average_low_dose``): the noise the synthetic image inherits is then that of the average,
    synthetic - contrast, rather than x_PC's.
    """
    contrast = contrast.astype(np.float32, copy=False)
    x_pc = normalized.x_pc.astype(np.float32, copy=False)
    base = x_pc
    if synthetic is not None and normalized.manifest.postprocess.average_low_dose:
        base = synthetic.astype(np.float32, copy=False) - contrast
    features = {
        "abs_contrast": np.abs(contrast),
        "abs_contrast_smooth": np.abs(ndimage.gaussian_filter(contrast, SMOOTHING_VOXELS)),
        "pre_residual": _median_residual(base, normalized.brain),
    }
    dose = _low_dose(normalized)
    if normalized.x_ld is not None and dose is not None:
        difference = (normalized.x_ld - x_pc) / np.float32(dose)
        features["low_dose_difference"] = np.abs(difference)
        linear = ndimage.gaussian_filter(difference, SMOOTHING_VOXELS)
        features["linear_disagreement"] = np.abs(linear - contrast)
        if normalized.s_ld is not None and "percentile_value_pc" in normalized.params:
            scale = np.float32(normalized.params["percentile_value_pc"] / dose)
            features["local_noise"] = normalized.s_ld.astype(np.float32, copy=False) * scale
    return features


def _median_residual(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """|image - 3x3x3 median| on the brain's bounding box (grown by a voxel), 0 elsewhere."""
    residual = np.zeros(image.shape, dtype=np.float32)
    where = np.argwhere(brain)
    if where.size == 0:
        return residual
    low = np.maximum(where.min(axis=0) - 1, 0)
    high = np.minimum(where.max(axis=0) + 2, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    part = image[box]
    residual[box] = np.abs(part - ndimage.median_filter(part, size=3))
    return residual


def _low_dose(normalized: NormalizedInputs) -> float | None:
    """The relative low dose the model was conditioned on (None for models without a dose)."""
    entry = normalized.params.get("condition", {}).get("dose")
    dose = None if not isinstance(entry, dict) else entry.get("value")
    return None if dose is None or not 0 < float(dose) < 1 else float(dose)


def uncertainty_map(
    model: UncertaintyModel,
    contrast: np.ndarray,
    normalized: NormalizedInputs,
    enhancement: np.ndarray,
    synthetic: np.ndarray | None = None,
) -> UncertaintyMap:
    """The std map, the low-confidence region (brain where std > threshold) and report.json's summary figures."""
    started = time.perf_counter()
    brain = np.asarray(normalized.brain, dtype=bool)
    scale = float(np.percentile(normalized.x_pc[brain], 95)) if brain.any() else 1.0
    std = model.std(error_features(contrast, normalized, synthetic), scale)
    std[~brain] = 0.0  # the model says nothing outside the brain; the synthetic image is the source there
    threshold = model.low_confidence_std * scale
    # the region: the std averaged over a few millimetres, so the pre-contrast noise speckle in the map does not
    # scatter single voxels over the brain; what stays is where the error is large over a region
    spacing_zyx = np.asarray(normalized.reference.GetSpacing()[::-1], dtype=np.float64)
    smoothed = ndimage.gaussian_filter(std, sigma=LOW_CONFIDENCE_SMOOTHING_MM / spacing_zyx)
    low = brain & (smoothed > threshold)

    def figures(region: np.ndarray) -> dict[str, float | None]:
        values = std[region]
        if values.size == 0:
            return {"median": None, "p95": None}
        return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95))}

    voxel_ml = float(np.prod(normalized.reference.GetSpacing())) / 1000.0
    summary = {
        "method": "calibrated error model (uncertainty.json)",
        "unit": "t1_pre intensity units (std of the synthetic image's error)",
        "brain": figures(brain),
        "enhancement": figures(brain & enhancement),
        "threshold": threshold,
        "threshold_fraction_of_p95": model.low_confidence_std,
        "threshold_on": f"std smoothed with a Gaussian of sigma {LOW_CONFIDENCE_SMOOTHING_MM:g} mm",
        "low_confidence_voxels": int(low.sum()),
        "low_confidence_ml": float(low.sum()) * voxel_ml,
        "low_confidence_fraction_of_brain": float(low.sum()) / max(1, int(brain.sum())),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return UncertaintyMap(std=std, low_confidence=low, summary=summary)
