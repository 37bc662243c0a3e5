"""MODEL_CARD.md for an exported model: intended use, training data, metrics from the evaluation JSON, limits."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from operators.model_manifest import ModelManifest, ModelMode

__all__ = ["DEFAULT_TRAINING_DATA", "metrics_table", "render_model_card"]

logger = logging.getLogger(__name__)

DEFAULT_TRAINING_DATA = (
    "Synthetic phantoms only. Every training subject was simulated by GadSynth's own phantom generator "
    "(`training/phantom`: MNI152-based anatomy, spoiled gradient-echo and inversion-prepared (MPRAGE) signal "
    "models, gadolinium T1 shortening, simulated lesions, noise and motion). No real patient images were used to "
    "train this model."
)

_MODE_TEXT = {
    ModelMode.LOW_DOSE_DIFFERENTIAL: "low-dose, differential: predicts the contrast signal y from a pre-contrast "
    "and a low-dose T1w; x_SD = x_PC + y (standard-dose equivalent) and x_LD + y (beyond standard dose)",
    ModelMode.LOW_DOSE_DIRECT: "low-dose, direct: synthesizes the standard-dose T1w directly from the stacked inputs",
    ModelMode.ZERO_DOSE_DIRECT: "zero-dose, direct: synthesizes a contrast-enhanced T1w without any gadolinium "
    "input; clinically weaker than the low-dose modes (METHODS.md section 1)",
}


def _mode_text(manifest: ModelManifest) -> str:
    text = _MODE_TEXT[manifest.mode]
    if manifest.postprocess.average_low_dose:
        text += (
            "; where y is below the enhancement threshold, the standard-dose equivalent is averaged with x_LD "
            "(x_PC + y + w (x_LD - x_PC) / 2, w falling from 1 at y = 0 to 0 at the threshold): two acquisitions of "
            "the same unenhanced tissue, about half the noise variance"
        )
    if manifest.postprocess.gate_below_threshold:
        text += (
            "; below the enhancement threshold the contrast added is y * y / threshold (faded to 0), so that the "
            "network's noise, which a non-negative output can only turn into brightening, does not enhance the "
            "whole brain"
        )
    return text


_COMMON_LIMITS = (
    "Trained on synthetic phantoms: performance on real scanners, vendors, sequences and pathologies is unknown "
    "until it is evaluated on real data.",
    "Enhancement that is absent or too faint in the inputs cannot be recovered; small lesions near the noise level "
    "may be missed, and false enhancement can appear at misregistration edges or artefacts.",
    "Inputs outside the training range (dose, field strength, contrast agent, resolution, noise) degrade the output.",
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif (number := _number(value)) is not None:
            flat[name] = number
    return flat


def _methods(evaluation: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("methods", "metrics"):
        block = evaluation.get(key)
        if isinstance(block, Mapping) and block and all(isinstance(v, Mapping) for v in block.values()):
            return block
    return {k: v for k, v in evaluation.items() if isinstance(v, Mapping)}


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def metrics_table(evaluation: Mapping[str, Any], *, model: str | None = None) -> str:
    """A Markdown table, one row per metric and one column per method (the model first, then the baselines).

    Accepted shapes: ``{"methods": {method: {metric: value}}, ...}``, the same under ``"metrics"``, or
    ``{method: {metric: value}}``. Nested metric objects are flattened with dots (``dice_topk.5``); non-numeric
    values are left out. Returns "" when no numeric metric is found.
    """
    methods = {name: _flatten(values) for name, values in _methods(evaluation).items()}
    methods = {name: values for name, values in methods.items() if values}
    if not methods:
        return ""
    order = sorted(methods, key=lambda name: name != model)
    rows: list[str] = []
    for values in methods.values():
        rows.extend(metric for metric in values if metric not in rows)
    lines = [
        "| metric | " + " | ".join(order) + " |",
        "| --- |" + " ---: |" * len(order),
    ]
    lines += [f"| {row} | " + " | ".join(_format(methods[m].get(row)) for m in order) + " |" for row in rows]
    return "\n".join(lines)


def _context(evaluation: Mapping[str, Any]) -> str:
    keys = [k for k, v in evaluation.items() if not isinstance(v, Mapping | list) and k not in ("methods", "metrics")]
    return ", ".join(f"{k}: {evaluation[k]}" for k in keys)


def render_model_card(
    manifest: ModelManifest,
    *,
    network_config: Mapping[str, Any],
    parameters: int,
    onnx_check: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None,
    training: Mapping[str, Any] | None,
    limits: Sequence[str],
    opset: int,
) -> str:
    """MODEL_CARD.md text for a model folder (see ``training.export.write_model_folder``)."""
    training = dict(training or {})
    data_text = str(training.pop("data", DEFAULT_TRAINING_DATA))
    kind = str(network_config.get("kind", "network"))
    config_text = ", ".join(f"{k}={v}" for k, v in network_config.items() if k != "kind")
    channels = ", ".join(f"`{c.name}` ({c.meaning})" if c.meaning else f"`{c.name}`" for c in manifest.inputs)
    condition = (
        "none"
        if manifest.condition is None
        else f"`{manifest.condition_tensor}` (N, {len(manifest.condition.features)}) = "
        f"[{', '.join(manifest.condition.features)}]"
    )
    sections = [
        f"# {manifest.name} {manifest.version}",
        "",
        f"**What it is.** {manifest.description}",
        "",
        f"Mode: {_mode_text(manifest)}. Network: `{kind}` ({config_text}); {parameters:,} parameters.",
        "",
        f"**Intended use.** {manifest.intended_use}",
        "",
        "**Not for diagnosis.** Synthetic images must never replace a real contrast-enhanced acquisition, and must "
        "not be used for diagnosis, treatment planning or any other clinical decision.",
        "",
        f"**Training data.** {data_text}",
    ]
    if training:
        sections += ["", "Training run: " + ", ".join(f"{k}: {v}" for k, v in training.items()) + "."]
    sections += ["", "## Metrics", ""]
    table = metrics_table(evaluation, model=manifest.name) if evaluation else ""
    if table:
        context = _context(evaluation or {})
        if context:
            sections += [f"Evaluation ({context}); full results in `evaluation.json`.", ""]
        sections += [table]
    else:
        sections += ["Not evaluated yet: no evaluation results were given when this folder was written."]
    sections += ["", "## Limits", ""]
    sections += [f"- {text}" for text in (*_COMMON_LIMITS, *limits)]
    divisor = manifest.spatial_divisor
    sections += [
        "",
        "## Files",
        "",
        f"- `{manifest.model_file}`: ONNX opset {opset}; input `{manifest.input_tensor}` (N, {len(manifest.inputs)}, "
        f"D, H, W) = {channels}; condition {condition}; output `{manifest.output.tensor}` (N, 1, D, H, W) = "
        f"{manifest.output.meaning.value}. Spatial axes are dynamic; sizes that are multiples of {divisor} are "
        "expected.",
        f"- sha256 of `{manifest.model_file}`: `{manifest.sha256}` (also in `{manifest.model_file}.sha256`).",
        f"- ONNX Runtime vs PyTorch on {onnx_check.get('cases')} check case(s): max |difference| "
        f"{_format(_number(onnx_check.get('max_abs_difference')))} (tolerance {onnx_check.get('tolerance')}).",
        "- `manifest.json` (inputs, normalization, condition, output scaling), `training.json` (network config and "
        "training record)" + (", `evaluation.json`." if evaluation else "."),
        "",
    ]
    return "\n".join(sections)
