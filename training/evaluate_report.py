"""Evaluation report: Markdown with metric tables, box plots, Dice / Jaccard curves and example slices (matplotlib)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from training.evaluate_data import SubjectImages

__all__ = ["REPORT_NAME", "example_figure", "summary_rows", "write_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "report.md"
BOXPLOT_NAME = "figures/metrics_boxplot.png"
CURVES_NAME = "figures/dice_jaccard.png"

#: Columns of the summary table: (JSON key in aggregates, header, format).
SUMMARY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("psnr_i", "PSNR_I dB", "{:.2f}"),
    ("psnr_b", "PSNR_B dB", "{:.2f}"),
    ("psnr_l", "PSNR_L dB", "{:.2f}"),
    ("ssim_b", "SSIM_B", "{:.4f}"),
    ("mae_ce", "MAE_CE", "{:.4f}"),
    ("t_l2", "t-L2", "{:.2e}"),
    ("c_bar", "c-bar", "{:.3f}"),
    ("c_hat", "c-hat", "{:.3f}"),
    ("fe_nonenhancing", "FE non-enh", "{:.3f}"),
    ("fe_normal", "FE normal", "{:.3f}"),
)

#: Panels of the box-plot figure: (key, title, per-lesion?).
BOX_PANELS: tuple[tuple[str, str, bool], ...] = (
    ("psnr_b", "PSNR_B (dB)", False),
    ("psnr_l", "PSNR_L, enhancing lesions (dB)", True),
    ("ssim_b", "SSIM brain", False),
    ("mae_ce", "MAE_CE (/R)", False),
    ("c_bar", "c-bar", True),
    ("c_hat", "c-hat", True),
    ("fe_nonenhancing", "FE non-enhancing lesions", True),
    ("fe_normal", "FE normal brain", False),
)


def _method_names(document: dict[str, Any]) -> list[str]:
    return list(document["aggregates"]["methods"])


def metric_values(
    document: Mapping[str, Any],
    method: str,
    key: str,
    lesion: bool,
    keep: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None,
) -> list[float]:
    """A metric's values for one method over an evaluation document's subjects (``lesion``: over its lesions).

    Lesion metrics: ``psnr_l`` over enhancing lesions, ``fe_nonenhancing`` over non-enhancing ones (their ``fe``),
    ``c_bar`` / ``c_hat`` wherever recorded. ``keep(subject, lesion)`` selects subjects and lesions (``lesion`` is
    ``{}`` for a subject-level metric).
    """
    values: list[float] = []
    for subject in document["subjects"]:
        if subject.get("status") != "ok":
            continue
        if not lesion:
            value = subject["methods"].get(method, {}).get(key)
            if value is not None and (keep is None or keep(subject, {})):
                values.append(float(value))
            continue
        for entry in subject["lesions"]:
            block = entry["methods"].get(method)
            if block is None or (keep is not None and not keep(subject, entry)):
                continue
            if key == "psnr_l" and entry["enhancing"]:
                value = block.get("psnr_l")
            elif key == "fe_nonenhancing" and not entry["enhancing"]:
                value = block.get("fe")
            else:
                value = block.get(key) if key in ("c_bar", "c_hat") else None
            if value is not None:
                values.append(float(value))
    return values


def summary_rows(document: dict[str, Any]) -> list[list[str]]:
    """Rows (method, then mean +- std per summary column) of the summary table; the command line prints them too."""
    rows = []
    for name in _method_names(document):
        block = document["aggregates"]["methods"][name]
        row = [name]
        for key, _, fmt in SUMMARY_COLUMNS:
            stats = block.get(key, {})
            if stats.get("mean") is None:
                row.append("-")
            else:
                row.append(f"{fmt.format(stats['mean'])} ± {fmt.format(stats['std'])}")
        rows.append(row)
    return rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _boxplots(document: dict[str, Any], path: Path) -> Path:
    names = _method_names(document)
    figure = Figure(figsize=(16, 7.5), layout="constrained")
    axes = figure.subplots(2, 4)
    for ax, (key, title, lesion) in zip(axes.ravel(), BOX_PANELS, strict=True):
        data = [metric_values(document, name, key, lesion) for name in names]
        shown = [(n, d) for n, d in zip(names, data, strict=True) if d]
        if shown:
            ax.boxplot([d for _, d in shown], tick_labels=[n for n, _ in shown], showmeans=True)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
        if key in ("c_bar", "c_hat"):
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        if key.startswith("fe_"):
            ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    figure.suptitle(f"{document['model']['name']} on {document['test_set']} (reference: {_reference(document)})")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def _curves(document: dict[str, Any], path: Path) -> Path:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    ax_dice, ax_jaccard = figure.subplots(1, 2)
    for name, curve in document["aggregates"]["curves"].items():
        if curve["dice_mean"]:
            ax_dice.plot(curve["k_percent"], curve["dice_mean"], marker=".", label=name)
            ax_jaccard.plot(curve["k_percent"], curve["jaccard_mean"], marker=".", label=name)
    for ax, title in ((ax_dice, "Dice"), (ax_jaccard, "Jaccard")):
        ax.set_xlabel("k (% of brain voxels with the largest |x - x_PC|)")
        ax.set_ylabel(title)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} of top-k% enhancement vs reference")
    ax_dice.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def example_figure(path: Path, images: SubjectImages, prediction: npt.NDArray[np.float32]) -> Path:
    """Write one row of slices: pre, low dose, truth standard dose, prediction, prediction - truth.

    The slice is the one with the most enhancing-lesion voxels (the middle slice when there is none).
    """
    truth = images.truth
    enhancing = (truth["lesion_parts"] == 1) & (truth["lesions"] > 0)
    counts = enhancing.reshape(enhancing.shape[0], -1).sum(axis=1)
    k = int(np.argmax(counts)) if counts.max() > 0 else enhancing.shape[0] // 2
    brain = truth["brain_mask"] > 0
    top = float(np.percentile(truth["x_sd"][brain], 99.5)) if brain.any() else float(truth["x_sd"].max())
    difference = prediction[k] - truth["x_sd"][k]
    span = max(float(np.percentile(np.abs(difference), 99.5)), 1e-6)
    panels = (
        ("pre-contrast (acquired)", images.pc[k], "gray", 0.0, top),
        (f"low dose d={images.dose:g} (acquired)", images.ld[k], "gray", 0.0, top),
        ("standard dose (truth)", truth["x_sd"][k], "gray", 0.0, top),
        ("prediction", prediction[k], "gray", 0.0, top),
        ("prediction - truth", difference, "RdBu_r", -span, span),
    )
    figure = Figure(figsize=(17, 3.8), layout="constrained")
    axes = figure.subplots(1, len(panels))
    for ax, (title, data, cmap, low, high) in zip(axes, panels, strict=True):
        shown = ax.imshow(data, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        if cmap != "gray":
            figure.colorbar(shown, ax=ax, shrink=0.8)
    figure.suptitle(f"seed {images.seed}, slice {k} of the t1_pre grid", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    return path


def _reference(document: dict[str, Any]) -> str:
    return str(document["options"]["reference"])


def write_report(document: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write ``report.md`` and its figures next to the JSON; return their paths (for the JSON's ``files``)."""
    boxplot = _boxplots(document, out_dir / BOXPLOT_NAME)
    curves = _curves(document, out_dir / CURVES_NAME)
    model = document["model"]
    lines = [
        f"# Evaluation of {model['name']} {model['version']}",
        "",
        f"- model sha256: `{model['sha256']}` (mode {model['mode']})",
        f"- test set: `{document['test_set']}` ({len(document['seeds'])} phantom subjects, "
        f"{len(document['failures'])} failed), size `{document['options']['size']}`",
        f"- reference: {document['conventions']['reference']}",
        f"- created: {document['created_at']}",
        "- synthetic phantom data only: these figures say nothing about real patients; not for diagnosis.",
        "",
        "## Summary (mean ± std; lesion metrics over lesions, the rest over subjects)",
        "",
        *_markdown_table(["method", *[h for _, h, _ in SUMMARY_COLUMNS]], summary_rows(document)),
        "",
        "Methods:",
        "",
        *[f"- `{name}`: {text}" for name, text in document["methods"].items()],
        "",
    ]
    agreement = document["aggregates"].get("model_vs_linear")
    if agreement:
        lines += [
            "## Model contrast vs the directly computed linear baseline (enhancing lesion tissue; whole CE region)",
            "",
            *_markdown_table(
                ["figure", "mean", "std", "median", "n"],
                [
                    [key, *(_fmt(stats.get(s)) for s in ("mean", "std", "median")), str(stats["n"])]
                    for key, stats in agreement.items()
                ],
            ),
            "",
        ]
    lines += [
        "## Figures",
        "",
        f"![metrics]({BOXPLOT_NAME})",
        "",
        f"![dice and jaccard]({CURVES_NAME})",
        "",
    ]
    examples = [s for s in document["subjects"] if s.get("example_figure")]
    for subject in examples:
        relative = Path(subject["example_figure"]).relative_to(out_dir)
        lines += [f"![seed {subject['seed']}]({relative.as_posix()})", ""]
    lines += ["## Subjects", ""]
    rows = []
    for subject in document["subjects"]:
        flavour = subject["flavour"]
        block = subject.get("methods", {}).get("model", {})
        rows.append(
            [
                str(subject["seed"]),
                subject["status"],
                f"{flavour['vendor']} {flavour['field_strength']:g} T {flavour['agent']} d={flavour['dose']:g}",
                _fmt(block.get("psnr_b")),
                _fmt(block.get("ssim_b")),
                _fmt(block.get("mae_ce")),
                str(sum(1 for les in subject.get("lesions", []) if les["voxels"] > 0)),
            ]
        )
    lines += _markdown_table(["seed", "status", "flavour", "PSNR_B", "SSIM_B", "MAE_CE", "lesions"], rows)
    lines += ["", "## Conventions", ""]
    lines += [f"- {key}: {text}" for key, text in document["conventions"].items()]
    lines += ["", "## Metric definitions", ""]
    lines += [f"- `{key}`: {text}" for key, text in document["metric_definitions"].items()]
    path = out_dir / REPORT_NAME
    path.write_text("\n".join(lines) + "\n")
    logger.info("evaluate: wrote %s", path)
    return {
        "markdown": str(path),
        "figures": [str(boxplot), str(curves), *(s["example_figure"] for s in examples)],
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
