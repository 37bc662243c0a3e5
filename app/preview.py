"""A PNG a newcomer can open: pre-contrast, low-dose, synthetic and the enhancement overlay on a few slices."""

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


def write_preview(out_png: Path, normalized: Any, synthetic: Any, *, count: int = 3) -> Path:
    """Write ``out_png``: one row per slice; columns pre-contrast, low-dose, synthetic T1+C, enhancement overlay.

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
    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.3 * len(rows)), squeeze=False)
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
    fig.suptitle("GadSynth preview - SYNTHETIC images, research use only, not for diagnosis", fontsize=11)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    logger.info("Wrote preview %s (slices %s)", out_png, rows)
    return out_png
