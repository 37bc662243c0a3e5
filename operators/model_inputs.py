"""Model inputs from the registered study, exactly as the model's manifest asks (METHODS.md sections 2-4)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from operators.brain_mask import BrainMask
from operators.contrast import field_strength
from operators.direct_normalization import role_strategy
from operators.errors import InputDicomError, describe_series
from operators.fast_header import raw_text
from operators.model_manifest import ConditionFeature, ModelManifest, NormalizationKind
from operators.normalization import DifferentialNormalization
from operators.registration import RegisteredStudy
from operators.roles import Role, relaxivity
from operators.series_features import inversion_prepared
from operators.study import ContrastInfo, Volume

__all__ = ["NormalizedInputs", "condition_vector", "normalize"]

logger = logging.getLogger(__name__)


@dataclass
class NormalizedInputs:
    """What the inference and post-processing operators need, on the t1_pre grid.

    Parameters
    ----------
    manifest:
        The model these inputs were made for.
    inputs:
        float32 array (channels, slices, rows, columns) in the manifest's channel order.
    condition:
        float32 condition vector in the manifest's feature order, or None.
    brain:
        bool brain mask (slices, rows, columns).
    reference:
        The t1_pre image: the output grid (origin, spacing, direction).
    x_pc:
        t1_pre in its source intensity scale.
    x_ld:
        The low-dose image on the t1_pre grid in t1_pre's intensity scale (differential: after radiometric
        alignment), or None without a low-dose series.
    s_ld:
        Differential only: the local noise standard deviation of the subtraction (normalized units).
    params:
        JSON-ready record of every normalization parameter needed to undo it (nnU-Net style), plus the
        condition vector with where each value came from.
    """

    manifest: ModelManifest
    inputs: np.ndarray
    condition: np.ndarray | None
    brain: np.ndarray
    reference: sitk.Image
    x_pc: np.ndarray
    x_ld: np.ndarray | None = None
    s_ld: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_sigma_source(self) -> float | None:
        """Noise level of the low-dose subtraction in t1_pre's intensity units (differential only)."""
        value = self.params.get("sigma_source")
        return float(value) if value is not None else None


def _field_strength(volumes: dict[Role, Volume], contrast: dict[Role, ContrastInfo]) -> float | None:
    for info in contrast.values():
        if info.field_strength_t:
            return float(info.field_strength_t)
    for volume in volumes.values():
        if not volume.series.instances:
            continue
        tesla, _ = field_strength({"MagneticFieldStrength": raw_text(volume.series.first, 0x00180087)})
        if tesla is not None:
            return tesla
    return None


def _inversion_prepared(volumes: dict[Role, Volume]) -> float | None:
    """1 when the low-dose T1 (else the pre-contrast one) is inversion-prepared, 0 when it is not, None if unknown."""
    for role in (Role.T1_LOW_DOSE, Role.T1_PRE):
        volume = volumes.get(role)
        if volume is None or not volume.series.instances:
            continue
        prepared = inversion_prepared(volume.series.first)
        if prepared is not None:
            return float(prepared)
    return None


def condition_vector(
    manifest: ModelManifest,
    *,
    contrast: dict[Role, ContrastInfo],
    volumes: dict[Role, Volume],
    sigma: float | None,
    spacing: tuple[float, ...] | None = None,
) -> tuple[np.ndarray | None, dict[str, dict[str, Any]]]:
    """The manifest's condition vector from the study's contrast information.

    Values come from ``contrast[t1_low_dose]`` (dose, field strength, agent and r1, from the selector), else the
    series header (field strength), else the manifest's ``condition.defaults``; ``sigma`` is the normalization's
    noise estimate; ``voxel_mm`` is the geometric mean of ``spacing``, the grid the network runs on;
    ``inversion_prepared`` (1 or 0) is whether the low-dose T1 is inversion-prepared (MPRAGE) or not (gradient echo),
    from its header.

    Returns
    -------
    vector, sources
        float32 vector (None when the model takes no condition) and, per feature, its value and source.

    Raises
    ------
    InputDicomError
        When a feature is unknown for this study and the manifest gives no default (the message names the series
        and the DICOM attributes it would come from).
    """
    if manifest.condition is None:
        return None, {}
    post = contrast.get(Role.T1_LOW_DOSE)
    low = volumes.get(Role.T1_LOW_DOSE)
    series_uid = low.series.series_instance_uid if low else None
    label = describe_series(series_uid, low.series.description if low else None)
    found: dict[ConditionFeature, tuple[float | None, str]] = {
        "dose": (post.dose if post else None, post.source if post else "missing"),
        "field_strength_t": (_field_strength(volumes, contrast), "header"),
        "r1": (post.r1 if post else None, post.source if post else "missing"),
        "sigma": (sigma, "normalization"),
        "voxel_mm": (None if spacing is None else float(np.prod(spacing)) ** (1.0 / len(spacing)), "grid"),
        "inversion_prepared": (_inversion_prepared(volumes), "header"),
    }
    if found["r1"][0] is None and post is not None and post.agent and post.field_strength_t:
        found["r1"] = (relaxivity(post.agent, post.field_strength_t), "agent table")
    attributes = {
        "dose": "ContrastBolusVolume + PatientWeight (or ContrastBolusTotalDose)",
        "field_strength_t": "MagneticFieldStrength",
        "r1": "ContrastBolusAgent",
        "sigma": "(noise estimate)",
        "voxel_mm": "PixelSpacing + slice positions",
        "inversion_prepared": "ScanningSequence / InversionTime",
    }
    values: list[float] = []
    sources: dict[str, dict[str, Any]] = {}
    for feature in manifest.condition.features:
        value, source = found[feature]
        if value is None and feature in manifest.condition.defaults:
            value, source = manifest.condition.defaults[feature], "model default"
        if value is None:
            raise InputDicomError(
                f"Model {manifest.name!r} needs the {feature} of the low-dose series, but {label} does not give it "
                f"(from {attributes[feature]}). Supply it in the request or the selection rules.",
                series_instance_uid=series_uid,
                attribute=attributes[feature],
                expected=f"a value for {feature}",
                found="missing",
            )
        values.append(float(value))
        sources[feature] = {"value": float(value), "source": source}
    return np.asarray(values, dtype=np.float32), sources


def _array(image: sitk.Image) -> np.ndarray:
    return np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)


def normalize(
    registered: RegisteredStudy,
    mask: BrainMask,
    manifest: ModelManifest,
    *,
    contrast: dict[Role, ContrastInfo] | None = None,
) -> NormalizedInputs:
    """Build the model's input tensor and condition vector, recording how to undo the normalization.

    Parameters
    ----------
    registered:
        Every needed role on the t1_pre grid.
    mask:
        The brain mask on the t1_pre grid.
    manifest:
        The model's manifest: channels, normalization kind and parameters, condition features.
    contrast:
        ``Selection.contrast``: dose, field strength, agent and r1 of the post-contrast series.

    Returns
    -------
    NormalizedInputs

    Raises
    ------
    InputDicomError
        When a role the model requires was not registered, an image is degenerate inside the brain (empty,
        constant, no noise), or a condition feature is missing.
    """
    started = time.perf_counter()
    contrast = contrast or {}
    missing = [r.value for r in manifest.required_roles if r not in registered.images]
    if missing:
        raise InputDicomError(
            f"Model {manifest.name!r} needs roles {[r.value for r in manifest.required_roles]}; "
            f"missing after registration: {missing}.",
            attribute="role",
            expected=", ".join(r.value for r in manifest.required_roles),
            found=", ".join(sorted(r.value for r in registered.images)),
        )
    reference = registered.images[Role.T1_PRE]
    brain = mask.array()
    x_pc = _array(reference)
    spacing = reference.GetSpacing()
    spec = manifest.normalization
    params: dict[str, Any] = {"kind": spec.kind.value}
    x_ld: np.ndarray | None = None
    s_ld: np.ndarray | None = None
    sigma: float | None = None
    channels: dict[str, np.ndarray] = {}
    pre_label = describe_series(
        registered.reference.series.series_instance_uid, registered.reference.series.description
    )
    try:
        if spec.kind == NormalizationKind.DIFFERENTIAL:
            low = _array(registered.images[Role.T1_LOW_DOSE])
            result = DifferentialNormalization(spec).run(
                x_pc, low, brain, spacing_zyx=(spacing[2], spacing[1], spacing[0])
            )
            channels = result.channels(brain)
            params.update(result.params)
            sigma = result.sigma
            s_ld = result.s_ld
            x_ld = result.x_ld * np.float32(result.params["percentile_value_pc"])
        else:
            per_role: dict[str, dict[str, float]] = {}
            for role in manifest.required_roles:
                strategy = role_strategy(spec, role.value)
                normalized, role_params = strategy.run(_array(registered.images[role]), brain)
                if spec.mask_outside_brain:
                    normalized = normalized * brain
                channels[role.value] = normalized
                per_role[role.value] = role_params
            channels["brain_mask"] = brain.astype(np.float32)
            params["per_role"] = per_role
            if Role.T1_LOW_DOSE in registered.images:
                x_ld = _array(registered.images[Role.T1_LOW_DOSE])
    except ValueError as exc:
        if isinstance(exc, InputDicomError):
            raise
        raise InputDicomError(
            f"Cannot normalize the inputs of {pre_label} for model {manifest.name!r}: {exc}.",
            series_instance_uid=registered.reference.series.series_instance_uid,
            attribute="PixelData",
            expected="a T1-weighted brain with positive intensities and noise",
            found=str(exc),
        ) from exc
    condition, sources = condition_vector(
        manifest, contrast=contrast, volumes=registered.volumes, sigma=sigma, spacing=spacing
    )
    params["condition"] = sources
    params["seconds"] = time.perf_counter() - started
    inputs = np.stack([channels[name] for name in manifest.channel_names]).astype(np.float32, copy=False)
    logger.info(
        "normalized %s for %s: channels %s, condition %s, %.2f s",
        pre_label,
        manifest.name,
        manifest.channel_names,
        {k: round(v["value"], 4) for k, v in sources.items()},
        params["seconds"],
    )
    return NormalizedInputs(
        manifest=manifest,
        inputs=inputs,
        condition=condition,
        brain=brain,
        reference=reference,
        x_pc=x_pc,
        x_ld=x_ld,
        s_ld=s_ld,
        params=params,
    )
