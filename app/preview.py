"""A PNG a newcomer can open: pre-contrast, low-dose, synthetic, the enhancement overlay and (when the model has an
error model) the uncertainty with its low-confidence outline, on a few slices."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

__all__ = ["preview_slices", "write_preview"]

logger = logging.getLogger(__name__)


def preview_slices(mask: np.ndarray, count: int = 3, brain: np.ndarray | None = None) -> list[int]:
    """Slice indices (first array axis) to show: those with the most predicted enhancement, then (when fewer
    slices enhance than are shown) those with the most brain, at least 5 % of the stack apart; never a blank slice
    while the brain has others."""
    depth = mask.shape[0]
    enhancing = mask.reshape(depth, -1).sum(axis=1)
    area = brain.reshape(depth, -1).sum(axis=1) if brain is not None else np.zeros(depth, dtype=np.int64)
    if not area.any():  # no brain mask: prefer the middle of the stack
        area = depth // 2 - np.abs(np.arange(depth) - depth // 2)
    order = np.lexsort((-area, -enhancing))  # most enhancement first, then most brain
    chosen: list[int] = []
    for index in order:
        if all(abs(int(index) - c) >= max(1, depth // 20) for c in chosen):
            chosen.append(int(index))
        if len(chosen) == count:
            break
    return sorted(chosen)


def write_preview(
    out_png: Path,
    normalized: Any,
    synthetic: Any,
    *,
    count: int = 3,
    uncertainty: Any = None,
    outside_validated_range: str | None = None,
) -> Path:
    """Write ``out_png``: one row per slice; columns pre-contrast, low-dose, synthetic T1+C, enhancement overlay,
    and the uncertainty (std) with the low-confidence region outlined when ``uncertainty`` (an
    ``operators.uncertainty.UncertaintyMap``) is given. ``outside_validated_range`` (a sentence) is printed under
    the title when the study's inputs are outside the model's validated range.

    ``normalized`` is the normalization operator's NormalizedInputs (x_pc, x_ld on the t1_pre grid) and
    ``synthetic`` the post-processing operator's SyntheticResult. Images are shown in array order (slice, row,
    column) with the same grey window for the three T1 columns.
    """
    x_pc = np.asarray(normalized.x_pc, dtype=np.float32)
    x_ld = None if normalized.x_ld is None else np.asarray(normalized.x_ld, dtype=np.float32)
    x_syn = sitk.GetArrayFromImage(synthetic.synthetic).astype(np.float32)
    enhancement = sitk.GetArrayFromImage(synthetic.enhancement).astype(np.float32)
    mask = np.asarray(synthetic.mask, dtype=bool)
    brain = np.asarray(normalized.brain, dtype=bool)
    low, high = np.percentile(x_pc[brain] if brain.any() else x_pc, [1, 99.5])
    high = max(high, float(np.percentile(x_syn[brain] if brain.any() else x_syn, 99.5)))
    rows = preview_slices(mask, count, brain)
    columns = [("pre-contrast T1", x_pc), ("low-dose T1", x_ld), ("SYNTHETIC T1+C", x_syn)]
    n_columns = 5 if uncertainty is not None else 4
    fig, axes = plt.subplots(len(rows), n_columns, figsize=(3.25 * n_columns, 3.3 * len(rows)), squeeze=False)
    if uncertainty is not None:
        std = np.asarray(uncertainty.std, dtype=np.float32)
        std_top = max(float(np.percentile(std[brain], 99.5)) if brain.any() else float(std.max()), 1e-6)
    for r, k in enumerate(rows):
        for c, (title, volume) in enumerate(columns):
            ax = axes[r][c]
            if volume is None:
                ax.text(0.5, 0.5, "no low-dose series", ha="center", va="center")
            else:
                ax.imshow(volume[k], cmap="gray", vmin=low, vmax=high)
            ax.set_title(f"{title} (slice {k})", fontsize=9)
            ax.axis("off")
        ax = axes[r][3]
        ax.imshow(x_syn[k], cmap="gray", vmin=low, vmax=high)
        overlay = np.ma.masked_where(~mask[k], enhancement[k])
        ax.imshow(overlay, cmap="autumn", alpha=0.6)
        ax.set_title(f"predicted enhancement (slice {k})", fontsize=9)
        ax.axis("off")
        if uncertainty is not None:
            ax = axes[r][4]
            shown = ax.imshow(std[k], cmap="magma", vmin=0.0, vmax=std_top)
            if uncertainty.low_confidence[k].any():
                ax.contour(
                    uncertainty.low_confidence[k].astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.6
                )
            ax.set_title(f"uncertainty (std), low confidence outlined (slice {k})", fontsize=8)
            ax.axis("off")
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    title = "GadSynth preview - SYNTHETIC images, research use only, not for diagnosis"
    if outside_validated_range:
        title += f"\nOUTSIDE THE VALIDATED RANGE: {outside_validated_range}"
    fig.suptitle(title, fontsize=11, color="black" if not outside_validated_range else "darkred")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    logger.info("Wrote preview %s (slices %s)", out_png, rows)
    return out_png
