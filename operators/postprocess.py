"""Undo the normalization: synthetic standard dose, beyond-standard dose, enhancement map and mask on t1_pre's grid."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from operators.direct_normalization import direct_strategy
from operators.inference import Prediction
from operators.model_inputs import NormalizedInputs
from operators.model_manifest import NormalizationKind, OutputMeaning, OutputScale

__all__ = [
    "BRAIN_MARGIN_MM",
    "SyntheticResult",
    "brain_region",
    "contrast_signal",
    "enhancement_mask",
    "gate_below_threshold",
    "low_dose_average",
    "postprocess",
]

logger = logging.getLogger(__name__)

#: How far beyond the brain mask the synthetic contrast may reach (the atlas mask can miss a little cortex, dura
#: and the vessels on the surface); beyond it the synthetic image is the source image.
BRAIN_MARGIN_MM = 5.0

_MAD_TO_SIGMA = 1.0 / 0.6744897501960817


@dataclass
class SyntheticResult:
    """The pipeline's images, all on the t1_pre grid in t1_pre's intensity scale (float32).

    Parameters
    ----------
    synthetic:
        x_SD~ = x_PC + y, the synthetic standard-dose image (with ``average_low_dose``, plus the part of
        (x_LD - x_PC) / 2 where y is below the enhancement threshold: see :func:`low_dose_average`; with
        ``gate_below_threshold``, y faded below the threshold: see :func:`gate_below_threshold`).
    beyond:
        x_SD+~ = x_LD + y (y as added to ``synthetic``), or None without a low-dose input.
    enhancement:
        y, the predicted contrast signal as the model gave it (not gated: the mask, the preview overlay and the error
        model read it).
    mask:
        bool (slice, row, column): brain & (y > threshold), small components removed; the SEG writer's input.
    threshold:
        The enhancement threshold in intensity units (``threshold_sigma`` * ``noise_sigma``).
    noise_sigma:
        Noise level of y used for the threshold, and ``noise_source`` says how it was estimated.
    model:
        Model name, version and sha256 (for the writers' Contributing Equipment).
    params:
        JSON-ready record for report.json.
    """

    synthetic: sitk.Image
    beyond: sitk.Image | None
    enhancement: sitk.Image
    mask: np.ndarray
    threshold: float
    noise_sigma: float
    noise_source: str
    model: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)


def contrast_signal(prediction: Prediction, normalized: NormalizedInputs) -> np.ndarray:
    """The contrast signal y in t1_pre's intensity units, from the model output and the normalization record.

    Differential models: y = gamma * s_LD * y_hat / sigma_LD (scale ``local_std``) or gamma * y_hat (``normalized``),
    times the brain 95th percentile of x_PC. Direct models (output = image): y = undo(output) - x_PC, and 0 outside
    the brain when their normalization masks it (they are blind there).

    Raises
    ------
    ValueError
        When the normalization record lacks what the manifest's output scale needs.
    """
    manifest = normalized.manifest
    spec = manifest.output
    params = normalized.params
    out = prediction.output.astype(np.float32, copy=False)
    kind = manifest.normalization.kind
    if spec.meaning == OutputMeaning.IMAGE:
        pre = params["per_role"]["t1_pre"]
        synthetic = direct_strategy(manifest.normalization).undo(out, pre)
        y = synthetic - normalized.x_pc
        if manifest.normalization.mask_outside_brain:
            # The model saw (and was trained to give) zeros outside the brain: it says nothing there, so the
            # synthetic image keeps the pre-contrast head instead of a black one.
            y = np.where(normalized.brain, y, np.float32(0.0))
    else:
        if spec.scale == OutputScale.LOCAL_STD:
            if normalized.s_ld is None or "sigma" not in params:
                raise ValueError("output scale 'local_std' needs s_LD and sigma from the differential normalization")
            y = np.float32(spec.gamma / params["sigma"]) * normalized.s_ld * out
        else:
            y = np.float32(spec.gamma) * out
        if kind == NormalizationKind.DIFFERENTIAL:
            y = y * np.float32(params["percentile_value_pc"])
        elif kind == NormalizationKind.ZSCORE:
            y = y * np.float32(params["per_role"]["t1_pre"]["std"])
        elif kind == NormalizationKind.MINMAX:
            pre = params["per_role"]["t1_pre"]
            y = y * np.float32(pre["high"] - pre["low"])
    if spec.nonnegative:
        y = np.maximum(y, np.float32(0.0))
    return np.asarray(y, dtype=np.float32)


def enhancement_mask(
    y: np.ndarray,
    brain: np.ndarray,
    *,
    threshold_sigma: float,
    min_voxels: int,
    fallback_sigma: float | None,
) -> tuple[np.ndarray, float, float, str]:
    """Binary enhancement: brain & (y > threshold_sigma * sigma_y), components smaller than ``min_voxels`` dropped.

    sigma_y, the noise of y, comes from the negative half of y in the brain (contrast is non-negative, so negative
    values are noise) when at least 1% of the brain is negative; else ``fallback_sigma`` (the subtraction noise);
    else 1.4826 * MAD of y in the brain.

    Returns
    -------
    mask, threshold, sigma_y, source
    """
    values = y[brain]
    negative = values[values < 0]
    if negative.size >= max(50, values.size // 100):
        sigma, source = float(np.median(-negative)) * _MAD_TO_SIGMA, "negative half of y in the brain"
    elif fallback_sigma is not None and fallback_sigma > 0:
        sigma, source = float(fallback_sigma), "noise of the low-dose subtraction"
    elif values.size:
        sigma, source = float(np.median(np.abs(values - np.median(values)))) * 1.4826, "MAD of y in the brain"
    else:
        sigma, source = 0.0, "empty brain mask"
    threshold = threshold_sigma * sigma
    mask = brain & (y > threshold)
    if min_voxels > 1 and mask.any():
        labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
        kept = sitk.RelabelComponent(labels, minimumObjectSize=min_voxels)
        mask = sitk.GetArrayViewFromImage(kept) > 0
    return np.asarray(mask, dtype=bool), threshold, sigma, source


def _image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.CopyInformation(reference)
    return image


def _spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    x, y, z = image.GetSpacing()
    return float(z), float(y), float(x)


def brain_region(brain: np.ndarray, spacing_zyx: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """The brain mask grown by ``margin_mm`` (Euclidean distance in mm, computed on the mask's bounding box)."""
    region = np.zeros(brain.shape, dtype=bool)
    if not brain.any():
        return region
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing_zyx]
    box = tuple(
        slice(max(0, int(idx.min()) - p), min(n, int(idx.max()) + p + 1))
        for idx, p, n in zip(np.nonzero(brain), pad, brain.shape, strict=True)
    )
    distance = ndimage.distance_transform_edt(~brain[box], sampling=spacing_zyx)
    region[box] = distance <= margin_mm
    return region


def low_dose_average(
    x_pc: np.ndarray, x_ld: np.ndarray, y: np.ndarray, threshold: float, region: np.ndarray
) -> np.ndarray:
    """What averaging the unenhanced tissue of x_PC and x_LD adds to x_PC + y: w * (x_LD - x_PC) / 2 in ``region``.

    w = clip(1 - y / threshold, 0, 1): 1 where the model predicts no contrast (there x_PC and x_LD are two
    acquisitions of the same tissue, and their mean has about half the noise variance of either), 0 from the
    enhancement threshold up (there x_LD holds contrast of its own, which y already accounts for). Outside
    ``region`` it is 0, so the synthetic image stays the source there.
    """
    weight = np.clip(1.0 - y / np.float32(threshold), 0.0, 1.0).astype(np.float32)
    weight[~region] = 0.0
    return np.asarray(weight * (x_ld - x_pc) * np.float32(0.5), dtype=np.float32)


def gate_below_threshold(y: np.ndarray, threshold: float) -> np.ndarray:
    """y * clip(y / threshold, 0, 1): the contrast itself from the threshold up, fading quadratically to 0 below it.

    Below the enhancement threshold y is mostly the network's noise, and since y >= 0 that noise only brightens:
    its mean over the brain is a false enhancement everywhere (issue 12: 0.23 % of the lesion contrast in normal
    brain at 4 mm). Weighted by y / threshold, a noise voxel at one sigma keeps a third of its value and the bias
    falls by more than half; contrast above the threshold, where the mask and the readers look, is untouched.
    ``1 - weight`` is the weight :func:`low_dose_average` gives x_LD, so the two blend to one.
    """
    weight = np.clip(y / np.float32(threshold), 0.0, 1.0).astype(np.float32)
    return np.asarray(y * weight, dtype=np.float32)


def postprocess(prediction: Prediction, normalized: NormalizedInputs) -> SyntheticResult:
    """Turn the model output into the synthetic images and the enhancement mask, on t1_pre's grid and scale.

    The contrast signal is kept only inside the brain mask grown by :data:`BRAIN_MARGIN_MM`: outside it (scalp,
    face, neck, the first and last slices) the synthetic image is the pre-contrast image, voxel for voxel.

    Raises
    ------
    ValueError
        When the normalization record lacks what the manifest's output needs.
    """
    started = time.perf_counter()
    manifest = normalized.manifest
    post = manifest.postprocess
    region = brain_region(normalized.brain, _spacing_zyx(normalized.reference), BRAIN_MARGIN_MM)
    y = np.where(region, contrast_signal(prediction, normalized), np.float32(0.0))
    mask, threshold, sigma, source = enhancement_mask(
        y,
        normalized.brain,
        threshold_sigma=post.threshold_sigma,
        min_voxels=post.min_voxels,
        fallback_sigma=normalized.noise_sigma_source,
    )
    gated = post.gate_below_threshold and threshold > 0
    added = gate_below_threshold(y, threshold) if gated else y
    synthetic = normalized.x_pc + added
    x_ld = normalized.x_ld
    averaged = post.average_low_dose and x_ld is not None and threshold > 0
    if averaged and x_ld is not None:
        synthetic += low_dose_average(normalized.x_pc, x_ld, y, threshold, region)
    beyond = normalized.x_ld + added if normalized.x_ld is not None else None
    if post.clip_negative:
        np.copyto(synthetic, np.maximum(synthetic, 0.0), where=region)
        if beyond is not None:
            np.copyto(beyond, np.maximum(beyond, 0.0), where=region)
    voxel_ml = float(np.prod(normalized.reference.GetSpacing())) / 1000.0
    params: dict[str, Any] = {
        "output_meaning": manifest.output.meaning.value,
        "output_scale": manifest.output.scale.value,
        "gamma": manifest.output.gamma,
        "threshold": threshold,
        "threshold_sigma": post.threshold_sigma,
        "noise_sigma_y": sigma,
        "noise_source": source,
        "enhancing_voxels": int(mask.sum()),
        "enhancing_ml": float(mask.sum()) * voxel_ml,
        "min_voxels": post.min_voxels,
        "average_low_dose": bool(averaged),
        "gate_below_threshold": bool(gated),
        "seconds": 0.0,
    }
    params["seconds"] = time.perf_counter() - started
    logger.info(
        "post-processing %s: enhancement threshold %.4g (%g x %.4g, %s), %.2f ml enhancing",
        manifest.name,
        threshold,
        post.threshold_sigma,
        sigma,
        source,
        params["enhancing_ml"],
    )
    reference = normalized.reference
    return SyntheticResult(
        synthetic=_image(synthetic, reference),
        beyond=_image(beyond, reference) if beyond is not None else None,
        enhancement=_image(y, reference),
        mask=mask,
        threshold=threshold,
        noise_sigma=sigma,
        noise_source=source,
        model={"name": prediction.model_name, "version": prediction.model_version, "sha256": prediction.model_sha256},
        params=params,
    )
