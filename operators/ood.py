"""How far a study's inputs are from the data a model was trained on: a few input features and one score.

Every shipped model was trained on phantom studies only, so a study can look unlike anything it has seen: another
voxel size, far more noise, a strong receive-bias field, another contrast weighting (a T2 or FLAIR routed as the
T1), a low-dose series that does not register. :func:`input_features` measures the inputs the model is about to see
(after registration and normalization, before inference, so a refusal costs seconds); :class:`OodReference` holds
each feature's range over a reference set drawn like the model's training data (``ood.json`` in the model folder,
written by ``gadsynth ood-calibrate``); :meth:`OodReference.assess` turns the features into a score.

The score is the largest distance outside a reference range, in units of that feature's robust spread
(``scale``): 0 inside every range, 1 = one spread beyond the furthest training study on some feature.
What it cannot catch: anything the features do not measure (anatomy the phantom lacks, a lesion type never
simulated, artefacts confined to a small region, a wrong but plausible dose), and shifts that move no feature out
of its range.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from operators.errors import InputDicomError

if TYPE_CHECKING:
    from operators.model_inputs import NormalizedInputs
    from operators.registration import RegisteredStudy

__all__ = [
    "FEATURES",
    "OOD_FILE",
    "OodAssessment",
    "OodReference",
    "OutOfDistributionError",
    "input_features",
    "load_reference",
    "noise_sigma",
    "refuse",
]

logger = logging.getLogger(__name__)

#: The reference file in a model folder.
OOD_FILE = "ood.json"

#: Feature name -> (meaning, smallest spread: a floor for features that barely vary in the reference set). The
#: signal-to-noise ratio is a log: a noise level twice the training's largest is as far out as half its smallest.
FEATURES: dict[str, tuple[str, float]] = {
    "voxel_mm_max": ("largest voxel side of the grid the model runs on (mm)", 0.25),
    "voxel_mm_min": ("smallest voxel side of the grid the model runs on (mm)", 0.25),
    "log_snr": (
        "natural log of t1_pre's brain 95th percentile over the noise sigma: that of the low-dose subtraction where "
        "the model has one (anatomy cancels), else the MAD of a 3x3x3 high-pass inside the brain",
        0.1,
    ),
    "intensity_p10": ("10th percentile of t1_pre inside the brain over its 95th (contrast weighting)", 0.03),
    "intensity_p50": ("median of t1_pre inside the brain over its 95th (contrast weighting)", 0.03),
    "bias": ("(p95 - p5) / median of t1_pre's brain smoothed over 20 mm inside the mask (receive-bias field)", 0.03),
    "registration_nmi": ("lowest normalized mutual information of a moved series against t1_pre (1 to 2)", 0.02),
}

_BIAS_SMOOTHING_MM = 20.0


class OutOfDistributionError(InputDicomError):
    """The study's inputs are outside the range the model was validated on, and the settings say to refuse it."""


@dataclass(frozen=True)
class OodAssessment:
    """The score of one study: per-feature value, reference range and distance, and the verdict."""

    score: float
    threshold: float
    features: dict[str, dict[str, Any]]
    reference: str

    @property
    def outside(self) -> bool:
        """Whether the study is outside the validated range (score above the threshold)."""
        return self.score > self.threshold

    @property
    def worst(self) -> str | None:
        """The feature furthest outside its range (None when every feature is inside)."""
        distances = {name: f["distance"] for name, f in self.features.items() if f["distance"] > 0}
        return max(distances, key=lambda name: distances[name]) if distances else None

    @property
    def worst_entry(self) -> dict[str, Any]:
        """The worst feature's value, range, scale and distance ({} when every feature is inside)."""
        return self.features.get(self.worst or "", {})

    def headline(self) -> str:
        """The score against the threshold and the worst feature, in a few words (preview title)."""
        entry = self.worst_entry
        detail = (
            f"{self.worst} {entry['value']:.3g}, reference {entry['low']:.3g} to {entry['high']:.3g}" if entry else ""
        )
        return f"score {self.score:.1f} > {self.threshold:g} ({detail})"

    def describe(self) -> str:
        """One line for the log, the SR and the warnings: the score and the features outside their range."""
        outside = [
            f"{name} {f['value']:.3g} (reference {f['low']:.3g} to {f['high']:.3g})"
            for name, f in sorted(self.features.items(), key=lambda item: -item[1]["distance"])
            if f["distance"] > 0
        ]
        verdict = "outside the validated range" if self.outside else "inside the validated range"
        detail = "; ".join(outside) if outside else "every feature inside its reference range"
        return f"input distribution score {self.score:.2f} (threshold {self.threshold:g}): {verdict}: {detail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for report.json."""
        return {
            "score": round(self.score, 4),
            "threshold": self.threshold,
            "outside_validated_range": self.outside,
            "worst_feature": self.worst,
            "features": self.features,
            "reference": self.reference,
        }


@dataclass(frozen=True)
class OodReference:
    """Per-feature ranges over a reference set, the threshold, and where they came from.

    ``ranges`` maps a feature to ``{"low", "high", "scale", "n"}``: the smallest and largest value over the
    reference studies and the robust spread (1.4826 x MAD, at least the feature's floor in :data:`FEATURES`).
    """

    ranges: dict[str, dict[str, float]]
    threshold: float
    reference: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_values(
        cls, values: list[dict[str, float | None]], *, threshold: float, reference: str, **provenance: Any
    ) -> OodReference:
        """Ranges from the features of each reference study (a feature missing from a study is left out there)."""
        ranges: dict[str, dict[str, float]] = {}
        for name, (_, floor) in FEATURES.items():
            seen = np.asarray([v[name] for v in values if v.get(name) is not None], dtype=np.float64)
            if seen.size == 0:
                continue
            mad = float(np.median(np.abs(seen - np.median(seen))))
            ranges[name] = {
                "low": float(seen.min()),
                "high": float(seen.max()),
                "scale": max(1.4826 * mad, floor),
                "n": int(seen.size),
            }
        return cls(ranges=ranges, threshold=threshold, reference=reference, provenance=dict(provenance))

    @classmethod
    def from_file(cls, path: Path) -> OodReference:
        """Read ``ood.json``.

        Raises
        ------
        ValueError
            When the file is not a GadSynth OOD reference.
        """
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("schema_version") != 1 or "ranges" not in data:
            raise ValueError(f"{path} is not a GadSynth OOD reference (schema_version 1 with 'ranges')")
        threshold = float(data["threshold"])
        if not math.isfinite(threshold) or threshold <= 0:
            raise ValueError(f"{path}: threshold must be a positive number; found {data['threshold']!r}")
        return cls(
            ranges={k: {kk: float(vv) for kk, vv in v.items()} for k, v in data["ranges"].items()},
            threshold=threshold,
            reference=str(data.get("reference", "")),
            provenance=dict(data.get("provenance", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``ood.json`` document."""
        return {
            "schema_version": 1,
            "threshold": self.threshold,
            "reference": self.reference,
            "score": "max over features of the distance outside [low, high] divided by scale",
            "features": {name: meaning for name, (meaning, _) in FEATURES.items() if name in self.ranges},
            "ranges": self.ranges,
            "provenance": self.provenance,
        }

    def assess(self, values: dict[str, float | None], *, threshold: float | None = None) -> OodAssessment:
        """Score a study's features against the ranges (features without a range or a value are listed, unscored)."""
        features: dict[str, dict[str, Any]] = {}
        score = 0.0
        for name, value in values.items():
            limits = self.ranges.get(name)
            if value is None or limits is None or not math.isfinite(value):
                continue
            low, high, scale = limits["low"], limits["high"], limits["scale"]
            distance = max(0.0, low - value, value - high) / scale
            score = max(score, distance)
            features[name] = {
                "value": round(float(value), 5),
                "low": round(low, 5),
                "high": round(high, 5),
                "scale": round(scale, 5),
                "distance": round(distance, 4),
            }
        return OodAssessment(
            score=score,
            threshold=self.threshold if threshold is None else threshold,
            features=features,
            reference=self.reference,
        )


def load_reference(model_dir: Path) -> OodReference | None:
    """The model's OOD reference, or None when its folder has none (the study is then not assessed)."""
    path = Path(model_dir) / OOD_FILE
    return OodReference.from_file(path) if path.is_file() else None


def noise_sigma(image: np.ndarray, brain: np.ndarray, *, erode: int = 2) -> float:
    """Noise sigma from the MAD of a 3x3x3 high-pass inside the brain, eroded by ``erode`` voxels (no edge of the
    mask; the whole mask when less than 1000 voxels would be left); 0 for an empty mask."""
    inner = ndimage.binary_erosion(brain, iterations=erode) if erode else brain
    if inner.sum() < 1000:
        inner = brain
    high_pass = image - ndimage.uniform_filter(image, 3)
    values = high_pass[inner]
    if values.size == 0:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad / math.sqrt(1.0 - 1.0 / 27.0)


def _bias(image: np.ndarray, brain: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float | None:
    """Spread of the brain's intensity smoothed over 20 mm (normalized convolution inside the mask): a receive-bias
    field raises it. Every brain voxel counts, so the measure does not follow the field in choosing its voxels."""
    if brain.sum() < 1000:
        return None
    step = [max(1, round(2.0 / s)) for s in spacing_zyx]  # about 2 mm is plenty for a 20 mm smoothing
    sub = (slice(None, None, step[0]), slice(None, None, step[1]), slice(None, None, step[2]))
    weight = brain[sub].astype(np.float32)
    sigma = [_BIAS_SMOOTHING_MM / (s * k) for s, k in zip(spacing_zyx, step, strict=True)]
    numerator = ndimage.gaussian_filter(image[sub] * weight, sigma)
    denominator = ndimage.gaussian_filter(weight, sigma)
    inside = brain[sub] & (denominator > 0.5)  # away from the brain's edge, where the smoothing sees mostly brain
    if inside.sum() < 50:
        return None
    field_values = numerator[inside] / denominator[inside]
    median = float(np.median(field_values))
    if median <= 0:
        return None
    return float((np.percentile(field_values, 95) - np.percentile(field_values, 5)) / median)


def input_features(normalized: NormalizedInputs, registered: RegisteredStudy | None = None) -> dict[str, float | None]:
    """The features of :data:`FEATURES` for one study, from what the model is about to see.

    t1_pre on its own grid and intensity scale (``normalized.x_pc``) and the brain mask give every feature but the
    registration one, which needs the moved series' quality figures (None without a moved series).
    """
    spacing_zyx = tuple(float(s) for s in reversed(normalized.reference.GetSpacing()))
    image = normalized.x_pc.astype(np.float32, copy=False)
    brain = np.asarray(normalized.brain, dtype=bool)
    values = image[brain]
    features: dict[str, float | None] = {
        "voxel_mm_max": max(spacing_zyx),
        "voxel_mm_min": min(spacing_zyx),
    }
    p95 = float(np.percentile(values, 95)) if values.size else 0.0
    if p95 > 0:
        sigma = normalized.noise_sigma_source or noise_sigma(image, brain)
        features["log_snr"] = math.log(p95 / sigma) if sigma > 0 else None
        features["intensity_p10"] = float(np.percentile(values, 10)) / p95
        features["intensity_p50"] = float(np.percentile(values, 50)) / p95
        features["bias"] = _bias(image, brain, spacing_zyx)  # type: ignore[arg-type]
    nmis = [] if registered is None else [r.quality.nmi for r in registered.results.values()]
    features["registration_nmi"] = min(nmis) if nmis else None
    return {k: (None if v is None else round(float(v), 6)) for k, v in features.items()}


def refuse(assessment: OodAssessment, *, series_instance_uid: str | None, label: str) -> OutOfDistributionError:
    """The error that refuses a study outside the validated range (``GADSYNTH_OOD_ACTION=refuse``)."""
    worst = assessment.worst
    feature = assessment.worst_entry
    expected = f"{feature.get('low', 0):.3g} to {feature.get('high', 0):.3g}" if feature else "inside every range"
    return OutOfDistributionError(
        f"{label}: {assessment.describe()}. The settings refuse studies outside the validated range "
        "(GADSYNTH_OOD_ACTION=refuse); set it to 'mark' to produce a result marked as such.",
        series_instance_uid=series_instance_uid,
        attribute=worst,
        expected=expected,
        found=f"{feature.get('value', float('nan')):.3g}" if feature else f"score {assessment.score:.2f}",
    )
