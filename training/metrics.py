"""Image-quality and contrast-enhancement metrics of the evaluation harness (METHODS.md section 6), pure NumPy.

Conventions shared by every function here
-----------------------------------------
* Arrays are 3D volumes on one grid (any axis order); masks are boolean arrays of the same shape.
* ``x`` is the image being scored (a model's synthetic standard dose or a baseline), ``ref`` the reference standard
  dose, ``x_pc`` the pre-contrast image. A *contrast* is an image minus ``x_pc``: the predicted contrast is
  ``x - x_pc`` and the reference contrast ``ref - x_pc`` (the differential view of Pinetz et al., seed 003).
* Intensity data range R (PSNR, L2, MAE): unless given, R = max(ref) inside the brain mask (``brain_range``). The
  phantom's images are non-negative magnitudes, so this is the peak of the reference where it matters; the same R is
  used for the whole-image, brain and lesion PSNR of one subject so that the three are comparable. Vessels and
  venous sinuses inside the brain mask make R the brightest enhancement, as a radiologist's window would.
* SSIM data range: max(ref) - min(ref) over the whole reference image (the skimage / Wang et al. convention).
* Identical images have MSE 0: PSNR is then capped at :data:`PSNR_CAP_DB` (100 dB) rather than infinite, so that
  means stay finite and the JSON output stays valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "DEFAULT_TOP_K_PERCENT",
    "PSNR_CAP_DB",
    "SSIM_SIGMA",
    "brain_range",
    "c_bar",
    "c_hat",
    "ce_region",
    "dice",
    "false_enhancement",
    "jaccard",
    "mae",
    "normal_brain_region",
    "psnr",
    "ssim",
    "top_k_mask",
    "top_k_overlap",
    "tumour_l2",
]

logger = logging.getLogger(__name__)

Array = npt.NDArray[np.floating] | npt.NDArray[np.integer]
Mask = npt.NDArray[np.bool_]

#: PSNR returned when the squared error is zero (identical images), in dB.
PSNR_CAP_DB = 100.0
#: Standard deviation (voxels) of SSIM's 3D Gaussian window (Wang et al. 2004 use 1.5 pixels in 2D).
SSIM_SIGMA = 1.5
#: Window truncation of the Gaussian in standard deviations (3.5 sigma: the 11-tap window of Wang et al.).
SSIM_TRUNCATE = 3.5
#: k of the top-k% thresholded enhancement (seed 000: 1 % to 30 %).
DEFAULT_TOP_K_PERCENT: tuple[int, ...] = tuple(range(1, 31))


def _check_shapes(*arrays: npt.NDArray[np.generic]) -> None:
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"All images and masks must have the same shape. Found shapes {sorted(shapes)}.")


def _mask_or_all(mask: Mask | None, shape: tuple[int, ...], what: str) -> Mask:
    if mask is None:
        return np.ones(shape, dtype=bool)
    region = np.asarray(mask, dtype=bool)
    if region.shape != shape:
        raise ValueError(f"The {what} mask must have the image shape {shape}. Found {region.shape}.")
    if not region.any():
        raise ValueError(f"The {what} mask is empty: a metric needs at least one voxel.")
    return region


def _in_region(
    x: Array, ref: Array, mask: Mask | None, what: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The voxels of ``x`` and ``ref`` (as float64) inside ``mask`` (everywhere when None), after the shape checks."""
    xa, ra = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    _check_shapes(xa, ra)
    region = _mask_or_all(mask, xa.shape, what)
    return xa[region], ra[region]


def _check_range(data_range: float, what: str) -> None:
    if data_range <= 0.0:
        raise ValueError(f"{what} data range must be positive. Found {data_range}.")


def _masks(a: Mask, b: Mask) -> tuple[Mask, Mask]:
    """Both masks as boolean arrays, after the shape check."""
    aa, ba = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    _check_shapes(aa, ba)
    return aa, ba


def brain_range(ref: Array, brain: Mask) -> float:
    """Intensity data range R = max(ref) inside the brain mask (the PSNR / L2 / MAE convention of this module).

    Raises
    ------
    ValueError
        When the mask is empty or the shapes differ, or when R is not positive.
    """
    _check_shapes(np.asarray(ref), np.asarray(brain))
    region = _mask_or_all(brain, np.shape(ref), "brain")
    value = float(np.max(np.asarray(ref, dtype=np.float64)[region]))
    if value <= 0.0:
        raise ValueError(f"The reference must be positive somewhere in the brain to define R. Found max {value}.")
    return value


def psnr(x: Array, ref: Array, mask: Mask | None = None, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB over a region (PSNR_I, PSNR_B or PSNR_L of seed 003).

    PSNR = 10 log10(R^2 / MSE), MSE = mean over the region of (x - ref)^2.

    PSNR_I uses ``mask=None`` (whole image), PSNR_B the brain mask, PSNR_L one lesion's mask (Pinetz et al.,
    seed 003, section 4: "PSNR evaluated on entire images, inside the brain, or individual lesions").

    Parameters
    ----------
    x, ref:
        Scored image and reference.
    mask:
        Region; None for the whole image.
    data_range:
        R; None takes max(ref) inside ``mask`` (pass :func:`brain_range` for every region of one subject).

    Returns
    -------
    float
        PSNR in dB, :data:`PSNR_CAP_DB` when the images are identical in the region.

    Raises
    ------
    ValueError
        When shapes differ, the mask is empty, or R is not positive.
    """
    xs, rs = _in_region(x, ref, mask, "PSNR")
    peak = float(rs.max()) if data_range is None else float(data_range)
    _check_range(peak, "PSNR")
    mse = float(np.mean((xs - rs) ** 2))
    if mse <= (peak * 10.0 ** (-PSNR_CAP_DB / 20.0)) ** 2:
        return PSNR_CAP_DB
    return float(10.0 * np.log10(peak**2 / mse))


def ssim(
    x: Array,
    ref: Array,
    mask: Mask | None = None,
    *,
    data_range: float | None = None,
    sigma: float = SSIM_SIGMA,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity (Wang et al. 2004) with a 3D Gaussian window, averaged over a region.

    SSIM(p) = (2 mu_x mu_r + C1)(2 s_xr + C2) / ((mu_x^2 + mu_r^2 + C1)(s_x^2 + s_r^2 + C2)), with local means,
    variances and covariance from a 3D Gaussian window of std ``sigma`` voxels (truncated at 3.5 sigma),
    C1 = (k1 R)^2, C2 = (k2 R)^2 and R = max(ref) - min(ref) over the whole reference. The SSIM map is computed over
    the whole volume (so the window sees the true neighbourhood at the border of the region) and averaged inside
    ``mask``: whole-image SSIM with ``mask=None``, brain SSIM with the brain mask (seed 004 reports SSIM; seed 003
    Table 2 too).

    Raises
    ------
    ValueError
        When shapes differ, the mask is empty, or the reference is constant (R = 0) and no range is given.
    """
    xa, ra = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    _check_shapes(xa, ra)
    region = _mask_or_all(mask, xa.shape, "SSIM")
    span = float(ra.max() - ra.min()) if data_range is None else float(data_range)
    if span <= 0.0:
        raise ValueError(f"SSIM data range must be positive (the reference is constant?). Found {span}.")
    c1, c2 = (k1 * span) ** 2, (k2 * span) ** 2

    def blur(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        blurred: npt.NDArray[np.float64] = ndimage.gaussian_filter(
            a, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect"
        )
        return blurred

    mu_x, mu_r = blur(xa), blur(ra)
    var_x = blur(xa * xa) - mu_x * mu_x
    var_r = blur(ra * ra) - mu_r * mu_r
    cov = blur(xa * ra) - mu_x * mu_r
    numerator = (2.0 * mu_x * mu_r + c1) * (2.0 * cov + c2)
    denominator = (mu_x * mu_x + mu_r * mu_r + c1) * (var_x + var_r + c2)
    return float(np.mean((numerator / denominator)[region]))


def mae(x: Array, ref: Array, mask: Mask | None = None, *, data_range: float = 1.0) -> float:
    """Mean absolute error over a region, divided by ``data_range``: mean_region |x - ref| / R.

    With the contrast-enhancing region of :func:`ce_region` this is MAE_CE (seed 003 Table 2, after Pinetz et al.);
    with a tumour ROI it is seed 000's rMAE. Pass R = :func:`brain_range` to compare subjects whose pixel scales differ.

    Raises
    ------
    ValueError
        As :func:`psnr`.
    """
    xs, rs = _in_region(x, ref, mask, "MAE")
    _check_range(data_range, "MAE")
    return float(np.mean(np.abs(xs - rs)) / data_range)


def tumour_l2(x: Array, ref: Array, tumour: Mask, *, data_range: float = 1.0) -> float:
    """Tumour-region L2 (t-L2 of Bone et al., seed 004): mean over the tumour of ((x - ref) / R)^2.

    Seed 004 computes it on intensities scaled to [0, 1]; dividing by R = :func:`brain_range` plays that role.

    Raises
    ------
    ValueError
        As :func:`psnr`.
    """
    xs, rs = _in_region(x, ref, tumour, "tumour")
    _check_range(data_range, "L2")
    return float(np.mean(((xs - rs) / data_range) ** 2))


def _lesion_ratio(
    pred_contrast: Array, ref_contrast: Array, lesion: Mask, reduce: Callable[[np.ndarray], Any]
) -> float:
    """reduce(pred in L) / reduce(ref in L), NaN when the reference's is not positive."""
    ps, rs = _in_region(pred_contrast, ref_contrast, lesion, "lesion")
    denominator = float(reduce(rs))
    if denominator <= 0.0:
        return float("nan")
    return float(reduce(ps) / denominator)


def c_bar(pred_contrast: Array, ref_contrast: Array, lesion: Mask) -> float:
    """Mean relative enhancement of one lesion (seed 003, section 4).

    c-bar(x) = sum_{i in L} [x - x_PC]_i / sum_{i in L} [x_SD - x_PC]_i, here with ``pred_contrast = x - x_PC`` and
    ``ref_contrast = x_SD - x_PC``. 1.0 is perfect; x_PC itself scores 0.

    Returns
    -------
    float
        The ratio, or NaN when the reference has no positive contrast in the lesion (a non-enhancing lesion: see
        :func:`false_enhancement` for those).

    Raises
    ------
    ValueError
        When shapes differ or the lesion mask is empty.
    """
    return _lesion_ratio(pred_contrast, ref_contrast, lesion, np.sum)


def c_hat(pred_contrast: Array, ref_contrast: Array, lesion: Mask) -> float:
    """Maximal relative enhancement of one lesion (seed 003, section 4).

    c-hat(x) = max_{i in L} [x - x_PC]_i / max_{i in L} [x_SD - x_PC]_i (contrasts as in :func:`c_bar`), or NaN
    when the reference's largest contrast in the lesion is not positive. Raises as :func:`c_bar`.
    """
    return _lesion_ratio(pred_contrast, ref_contrast, lesion, np.max)


def ce_region(ref_contrast: Array, brain: Mask, threshold: float) -> Mask:
    """Contrast-enhancing brain region for MAE_CE: brain & (x_SD - x_PC > threshold).

    The evaluation passes the noise-free truth contrast y_SD and a threshold of 5 % of the 95th percentile of the
    pre-contrast brain (so that partial-volume fringes of a fraction of a voxel do not count as enhancing). Seed 001
    uses the same construction (post - pre > 0.3 on its normalized scale).

    Raises
    ------
    ValueError
        When shapes differ or the threshold is negative.
    """
    ra, ba = np.asarray(ref_contrast, dtype=np.float64), np.asarray(brain, dtype=bool)
    _check_shapes(ra, ba)
    if threshold < 0.0:
        raise ValueError(f"The enhancement threshold must be >= 0. Found {threshold}.")
    result: Mask = ba & (ra > threshold)
    return result


def normal_brain_region(brain: Mask, abnormal: Mask, ref_contrast: Array, threshold: float, *, margin: int = 1) -> Mask:
    """Normal brain for false enhancement: brain minus lesions / oedema and minus every enhancing structure.

    normal = brain & ~dilate(abnormal | (ref_contrast > threshold), ``margin`` voxels). ``abnormal`` holds the
    lesions with their necrosis and oedema; the contrast term removes vessels, venous sinuses, choroid plexus and
    dura, which enhance in a healthy brain. The margin keeps partial-volume edges out.

    Raises
    ------
    ValueError
        When shapes differ or the margin is negative.
    """
    ba, aa = np.asarray(brain, dtype=bool), np.asarray(abnormal, dtype=bool)
    ra = np.asarray(ref_contrast, dtype=np.float64)
    _check_shapes(ba, aa, ra)
    if margin < 0:
        raise ValueError(f"margin must be >= 0 voxels. Found {margin}.")
    excluded = aa | (ra > threshold)
    if margin and excluded.any():
        excluded = ndimage.binary_dilation(excluded, iterations=margin)
    result: Mask = ba & ~excluded
    return result


def false_enhancement(pred_contrast: Array, region: Mask, reference_level: float) -> tuple[float, float]:
    """Predicted contrast where there should be none, relative to the true contrast of enhancing lesions.

    FE = mean_{i in region} [x - x_PC]_i / S and FE+ = mean_{i in region} max([x - x_PC]_i, 0) / S, where S (the
    ``reference_level``) is the mean true contrast of the enhancing parts of the enhancing lesions. Used inside
    non-enhancing lesions and in normal brain (:func:`normal_brain_region`). FE is a bias: zero-mean noise cancels in
    it; FE+ also counts noise that looks like enhancement (a bright speckle a reader sees). A prediction equal to
    x_PC scores 0 for both.

    Returns
    -------
    tuple of float
        (FE, FE+).

    Raises
    ------
    ValueError
        When shapes differ, the region is empty, or S is not positive.
    """
    pa = np.asarray(pred_contrast, dtype=np.float64)
    region_mask = _mask_or_all(region, pa.shape, "false-enhancement")
    if reference_level <= 0.0:
        raise ValueError(f"The enhancing-lesion contrast level must be positive. Found {reference_level}.")
    values = pa[region_mask]
    return float(values.mean() / reference_level), float(np.maximum(values, 0.0).mean() / reference_level)


def top_k_mask(contrast: Array, roi: Mask, k_percent: float) -> Mask:
    """Top-k% enhancement inside a ROI (seed 000, section 3): the k % of ROI voxels with the largest |contrast|.

    n = round(k / 100 * |ROI|) (at least 1) voxels are taken, in decreasing |contrast|; voxels tied with the n-th
    are all taken, and voxels with zero contrast never are (no enhancement is not enhancement), so x_PC gives an
    empty mask.

    Raises
    ------
    ValueError
        When shapes differ, the ROI is empty, or k is not within (0, 100].
    """
    ca = np.abs(np.asarray(contrast, dtype=np.float64))
    region = _mask_or_all(roi, ca.shape, "ROI")
    if not 0.0 < k_percent <= 100.0:
        raise ValueError(f"k must be a percentage within (0, 100]. Found {k_percent}.")
    values = ca[region]
    count = max(1, round(k_percent / 100.0 * values.size))
    threshold = float(np.partition(values, values.size - count)[values.size - count])
    result: Mask = region & (ca >= threshold) & (ca > 0.0)
    return result


def dice(a: Mask, b: Mask) -> float:
    """Dice score 2 |A & B| / (|A| + |B|); 1.0 when both masks are empty (they agree).

    Raises
    ------
    ValueError
        When the shapes differ.
    """
    aa, ba = _masks(a, b)
    total = int(aa.sum()) + int(ba.sum())
    return 1.0 if total == 0 else float(2.0 * np.logical_and(aa, ba).sum() / total)


def jaccard(a: Mask, b: Mask) -> float:
    """Jaccard index |A & B| / |A | B|; 1.0 when both masks are empty.

    Raises
    ------
    ValueError
        As :func:`dice`.
    """
    aa, ba = _masks(a, b)
    union = int(np.logical_or(aa, ba).sum())
    return 1.0 if union == 0 else float(np.logical_and(aa, ba).sum() / union)


def top_k_overlap(
    pred_contrast: Array,
    ref_contrast: Array,
    roi: Mask,
    ks: Sequence[float] = DEFAULT_TOP_K_PERCENT,
) -> tuple[list[float], list[float]]:
    """Dice and Jaccard of the top-k% |x - x_PC| against the top-k% |x_SD - x_PC|, for each k (seed 000, Fig. 4).

    Seed 000 thresholds per 2D slice inside a tumour ROI; the evaluation here thresholds the 3D brain (documented
    in the report), which also scores enhancement predicted far from any lesion.

    Returns
    -------
    tuple of lists
        (Dice per k, Jaccard per k).

    Raises
    ------
    ValueError
        As :func:`top_k_mask`.
    """
    dices: list[float] = []
    jaccards: list[float] = []
    for k in ks:
        predicted, truth = top_k_mask(pred_contrast, roi, k), top_k_mask(ref_contrast, roi, k)
        dices.append(dice(predicted, truth))
        jaccards.append(jaccard(predicted, truth))
    return dices, jaccards
