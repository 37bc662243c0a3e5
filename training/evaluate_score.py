"""Scoring of one evaluation subject and aggregation over a test set (formulas in ``training.metrics``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from training import metrics as m
from training.evaluate_data import CE_FRACTION, SubjectImages

__all__ = ["LESION_METRICS", "METHODS", "SUBJECT_METRICS", "aggregate", "finite", "score_subject"]

logger = logging.getLogger(__name__)

Reference = Literal["clean", "noisy"]

#: What each scored image is (the keys of every per-method block in the JSON).
METHODS: dict[str, str] = {
    "model": "the model's synthetic series, run through the pipeline from DICOM and read back with SimpleITK",
    "x_pc": "baseline: the acquired pre-contrast series (no enhancement)",
    "x_ld": "baseline: the acquired low-dose series, unprocessed",
    "linear": "baseline: linear dose scaling x_PC + (x_LD - x_PC) / d on the acquired series, d the simulated dose",
    "oracle": "bound: x_PC + y_SD, the acquired pre-contrast plus the exact true contrast (a perfect differential "
    "model)",
}

#: Per-subject metrics and how to read them (higher or lower is better).
SUBJECT_METRICS: dict[str, str] = {
    "psnr_i": "PSNR whole image (dB, higher better)",
    "psnr_b": "PSNR brain (dB, higher better)",
    "ssim_i": "SSIM whole image (higher better)",
    "ssim_b": "SSIM brain (higher better)",
    "mae_b": "MAE brain / R (lower better)",
    "mae_ce": "MAE in contrast-enhancing brain / R (lower better)",
    "t_l2": "tumour-region L2, ((x - ref) / R)^2 (lower better)",
    "rmae_tumour": "MAE in the tumour ROI / R (lower better)",
    "fe_normal": "mean predicted contrast in normal brain / enhancing-lesion contrast (0 ideal)",
    "fe_normal_pos": "mean positive predicted contrast in normal brain / enhancing-lesion contrast (0 ideal)",
}

#: Per-lesion metrics: PSNR_L of every lesion; c-bar / c-hat of enhancing ones; false enhancement of the others.
LESION_METRICS: dict[str, str] = {
    "psnr_l": "PSNR of each enhancing lesion (dB, higher better)",
    "psnr_l_nonenhancing": "PSNR of each non-enhancing lesion (dB, higher better)",
    "c_bar": "mean relative enhancement per enhancing lesion (1 ideal)",
    "c_hat": "maximal relative enhancement per enhancing lesion (1 ideal)",
    "fe_nonenhancing": "mean predicted contrast in a non-enhancing lesion / enhancing-lesion contrast (0 ideal)",
    "fe_nonenhancing_pos": "mean positive predicted contrast in a non-enhancing lesion / enhancing contrast (0 ideal)",
}


def finite(value: float | None) -> float | None:
    """JSON-safe float: NaN / inf become None."""
    if value is None or not np.isfinite(value):
        return None
    return float(value)


def score_subject(
    images: SubjectImages,
    methods: dict[str, np.ndarray],
    *,
    reference: Reference = "clean",
    ks: Sequence[float] = m.DEFAULT_TOP_K_PERCENT,
) -> dict[str, Any]:
    """Every metric of every scored image of one subject (see ``training.metrics`` for the formulas).

    Masks always come from the truth (brain, lesions, lesion parts, true contrast y_SD); the reference image and
    reference contrast follow ``reference``. The predicted contrast is each image minus the acquired x_PC.

    Returns
    -------
    dict
        ``regions`` (voxel counts, data range R, thresholds), ``methods`` (per-method subject metrics with Dice and
        Jaccard lists) and ``lesions`` (per-lesion metrics of every method).
    """
    truth = images.truth
    brain = truth["brain_mask"] > 0
    y_true = truth["y_sd"]
    if reference == "clean":
        ref_image, ref_contrast = truth["x_sd"], y_true
    else:
        ref_image, ref_contrast = images.sd, images.sd - images.pc
    data_range = m.brain_range(ref_image, brain)
    ce_threshold = CE_FRACTION * float(np.percentile(truth["x_pc"][brain], 95))
    ce = m.ce_region(y_true, brain, ce_threshold)
    labels, parts = truth["lesions"], truth["lesion_parts"]
    tumour = labels > 0
    enhancing_ids = [les["id"] for les in images.lesions if les.get("enhancing")]
    enhancing_tissue = (parts == 1) & np.isin(labels, enhancing_ids)
    level = float(y_true[enhancing_tissue].mean()) if enhancing_tissue.any() else None
    normal = m.normal_brain_region(brain, tumour | (parts > 0), y_true, ce_threshold)
    regions = {
        "data_range": data_range,
        "ce_threshold": ce_threshold,
        "enhancing_level": level,
        "voxels": {
            "image": int(brain.size),
            "brain": int(brain.sum()),
            "ce": int(ce.sum()),
            "tumour": int(tumour.sum()),
            "normal_brain": int(normal.sum()),
            "enhancing_tissue": int(enhancing_tissue.sum()),
        },
    }
    per_method: dict[str, dict[str, Any]] = {}
    contrasts = {name: image - images.pc for name, image in methods.items()}
    for name, image in methods.items():
        scores: dict[str, Any] = {
            "psnr_i": m.psnr(image, ref_image, None, data_range=data_range),
            "psnr_b": m.psnr(image, ref_image, brain, data_range=data_range),
            "ssim_i": m.ssim(image, ref_image),
            "ssim_b": m.ssim(image, ref_image, brain),
            "mae_b": m.mae(image, ref_image, brain, data_range=data_range),
            "mae_ce": m.mae(image, ref_image, ce, data_range=data_range) if ce.any() else None,
            "t_l2": m.tumour_l2(image, ref_image, tumour, data_range=data_range) if tumour.any() else None,
            "rmae_tumour": m.mae(image, ref_image, tumour, data_range=data_range) if tumour.any() else None,
            "fe_normal": None,
            "fe_normal_pos": None,
        }
        if level is not None and normal.any():
            scores["fe_normal"], scores["fe_normal_pos"] = m.false_enhancement(contrasts[name], normal, level)
        scores["dice"], scores["jaccard"] = m.top_k_overlap(contrasts[name], ref_contrast, brain, ks)
        per_method[name] = {k: (finite(v) if isinstance(v, float) else v) for k, v in scores.items()}
    lesions = []
    for lesion in images.lesions:
        region = labels == lesion["id"]
        entry: dict[str, Any] = {
            "id": lesion["id"],
            "type": lesion.get("type"),
            "enhancing": bool(lesion.get("enhancing")),
            "diameter_mm": lesion.get("diameter_mm"),
            "voxels": int(region.sum()),
            "methods": {},
        }
        if region.any():
            for name, image in methods.items():
                scores = {"psnr_l": finite(m.psnr(image, ref_image, region, data_range=data_range))}
                if entry["enhancing"]:
                    scores["c_bar"] = finite(m.c_bar(contrasts[name], ref_contrast, region))
                    scores["c_hat"] = finite(m.c_hat(contrasts[name], ref_contrast, region))
                elif level is not None:
                    fe, fe_pos = m.false_enhancement(contrasts[name], region, level)
                    scores["fe"], scores["fe_pos"] = finite(fe), finite(fe_pos)
                entry["methods"][name] = scores
        lesions.append(entry)
    return {
        "regions": regions,
        "methods": per_method,
        "lesions": lesions,
        "model_vs_linear": _agreement(contrasts, {"enhancing": enhancing_tissue, "ce": ce}, data_range),
    }


def _agreement(
    contrasts: dict[str, np.ndarray], regions: dict[str, np.ndarray], data_range: float
) -> dict[str, float | None] | None:
    """How close the model's contrast is to the directly computed linear baseline (meant for ce-baseline-linear).

    For each region (enhancing lesion tissue; the whole CE region): the ratio of mean contrasts model / linear and
    their voxel-wise Pearson correlation; plus the mean |model - linear| contrast in the CE region over R.
    """
    if "model" not in contrasts:
        return None
    model, linear = contrasts["model"], contrasts["linear"]
    result: dict[str, float | None] = {}
    for name, region in regions.items():
        linear_mean = float(linear[region].mean()) if region.any() else 0.0
        ratio = float(model[region].mean()) / linear_mean if linear_mean > 0 else None
        correlation = float(np.corrcoef(model[region], linear[region])[0, 1]) if region.sum() > 2 else None
        result[f"{name}_mean_ratio"] = finite(ratio)
        result[f"{name}_correlation"] = finite(correlation)
    ce = regions["ce"]
    result["ce_mean_abs_diff"] = (
        finite(float(np.mean(np.abs(model[ce] - linear[ce]))) / data_range) if ce.any() else None
    )
    return result


def _stats(values: Sequence[float | None]) -> dict[str, float | int | None]:
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "median": None, "n": 0}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "median": float(np.median(finite)),
        "n": int(finite.size),
    }


def aggregate(subjects: Sequence[dict[str, Any]], ks: Sequence[float]) -> dict[str, Any]:
    """Mean / std (n - 1) / median / n over subjects (subject metrics) and over lesions (lesion metrics).

    Also the mean Dice / Jaccard per k, and the false enhancement in non-enhancing lesions pooled over the test set.
    Subjects whose model run failed are left out for every method (so that all methods are scored on the same set).
    """
    done = [s for s in subjects if s.get("status") == "ok"]
    names: list[str] = []
    for subject in done:
        names.extend(n for n in subject["methods"] if n not in names)
    result: dict[str, Any] = {"methods": {}, "curves": {}}
    for name in names:
        blocks = [s["methods"][name] for s in done if name in s["methods"]]
        summary = {metric: _stats([b.get(metric) for b in blocks]) for metric in SUBJECT_METRICS}
        lesion_blocks = [
            (lesion["enhancing"], lesion["methods"][name])
            for s in done
            for lesion in s["lesions"]
            if name in lesion["methods"]
        ]
        summary["psnr_l"] = _stats([b["psnr_l"] for enh, b in lesion_blocks if enh])
        summary["psnr_l_nonenhancing"] = _stats([b["psnr_l"] for enh, b in lesion_blocks if not enh])
        summary["c_bar"] = _stats([b.get("c_bar") for enh, b in lesion_blocks if enh])
        summary["c_hat"] = _stats([b.get("c_hat") for enh, b in lesion_blocks if enh])
        summary["fe_nonenhancing"] = _stats([b.get("fe") for enh, b in lesion_blocks if not enh])
        summary["fe_nonenhancing_pos"] = _stats([b.get("fe_pos") for enh, b in lesion_blocks if not enh])
        result["methods"][name] = summary
        dices = np.array([b["dice"] for b in blocks], dtype=np.float64)
        jaccards = np.array([b["jaccard"] for b in blocks], dtype=np.float64)
        result["curves"][name] = {
            "k_percent": list(ks),
            "dice_mean": dices.mean(axis=0).tolist() if dices.size else [],
            "jaccard_mean": jaccards.mean(axis=0).tolist() if jaccards.size else [],
            "dice_std": dices.std(axis=0).tolist() if dices.size else [],
        }
    agreements = [s["model_vs_linear"] for s in done if s.get("model_vs_linear")]
    if agreements:
        result["model_vs_linear"] = {key: _stats([a.get(key) for a in agreements]) for key in agreements[0]}
    return result
