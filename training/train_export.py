"""The model folder at the end of a training run: what the run was (for the model card), its limits, the export."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from operators.model_manifest import ModelManifest
from training.datasets import Batch, parse_data_spec
from training.export import write_model_folder
from training.train_config import TrainConfig, manifest_fields, network_config

__all__ = ["describe_start", "export_trained"]

logger = logging.getLogger(__name__)


def describe_start(source: Path) -> str:
    """Where a fine-tuned run started: a model folder's name, version, sha256 and how it was trained; a checkpoint."""
    manifest_path = source / "manifest.json"
    if not manifest_path.is_file():
        return str(source)
    manifest = ModelManifest.load(source)
    text = f"{manifest.name} {manifest.version} (sha256 {manifest.sha256[:12]}"
    record_path = source / "training.json"
    if record_path.is_file():
        before = json.loads(record_path.read_text(encoding="utf-8")).get("training", {})
        if "steps" in before:
            text += f"; {before['steps']} steps on {before.get('data_specs', '?')}, {before.get('trained_on', '?')}"
    return text + ")"


def _drawn_grids(config: TrainConfig) -> dict[float, float]:
    """Share of phantom subjects per voxel size (each source's subjects draw from its own grid list, e.g.
    ``phantom:A-B,grid=4``, or the run's); empty when every subject is on the preset grid."""
    weights: dict[float, float] = {}
    for spec in (parse_data_spec(s) for s in config.data):
        if spec.kind != "phantom":
            continue
        variation = config.variation.with_overrides(spec.overrides)
        own = list(variation.resolutions_mm) or ([variation.resolution_mm] if variation.resolution_mm else [])
        subjects = 1 if spec.stop is None or spec.start is None else spec.stop - spec.start
        for grid in own:
            weights[grid] = weights.get(grid, 0.0) + subjects / len(own)
    total = sum(weights.values())
    return {grid: weights[grid] / total for grid in sorted(weights)}


def export_trained(
    config: TrainConfig, network: torch.nn.Module, gamma: float | None, history: dict[str, Any], check: list[Batch]
) -> ModelManifest:
    """Write the run's model folder (ONNX, checked against PyTorch on the first sample of ``check``), its manifest
    with ``gamma`` and a model card that says how it was trained and where it was not.

    Raises
    ------
    ExportMismatchError
        When ONNX Runtime disagrees with PyTorch (see ``training.export.write_model_folder``).
    """
    fields = manifest_fields(config, network_config(config), gamma if gamma is not None else 1.0)
    train_losses = [entry["loss"] for entry in history["train"]]
    val_losses = [entry["loss"] for entry in history["val"] if entry["loss"] is not None]
    tail = train_losses[-min(len(train_losses), 20) :]
    data_kinds = {parse_data_spec(s).kind for s in config.data}
    summary: dict[str, Any] = {
        "steps": config.steps,
        "data_specs": ", ".join(config.data),
        "loss": config.loss_config.kind,
        "patch": config.patch,
        "batch": config.batch,
        "lr": f"{config.lr:g} -> {config.lr_min:g} (cosine)"
        + ("" if config.gain_lr_factor == 1.0 else f", the gains {config.lr * config.gain_lr_factor:g} to start"),
        "seed": config.seed,
        "final_train_loss": round(float(np.mean(tail)), 6) if tail else None,
        "final_validation_loss": round(val_losses[-1], 6) if val_losses else None,
        "seconds_per_step": round(history["timing"]["seconds_per_step"], 4),
        "trained_on": "; ".join(history["timing"]["devices"]) or "unknown",
    }
    if gamma is not None:
        summary["gamma"] = round(gamma, 6)
    if "phantom" in data_kinds:
        variation = config.variation
        summary["phantom_size"] = f"{variation.resolution_mm} mm" if variation.resolution_mm else variation.size
        grids = _drawn_grids(config)
        if grids:
            summary["phantom_size"] = "mix of " + ", ".join(f"{r:g} mm ({share:.0%})" for r, share in grids.items())
        summary["phantom_doses"] = f"{variation.dose_range[0]:g}-{variation.dose_range[1]:g}"
        held = ", ".join(f"{a}@{f:g} T" for a, f in variation.exclude_pairs)
        summary["held_out_pairs"] = held or "none"
    summary["validation"] = ", ".join(config.val) or "none"
    if config.init_from is not None:
        summary["initialized_from"] = describe_start(Path(config.init_from))
    if data_kinds != {"phantom"}:
        summary["data"] = (
            "Trained on " + ", ".join(config.data) + " (site data and/or NIfTI subjects), preprocessed by GadSynth's "
            "own ingest, registration, brain mask and normalization code."
        )
    limits = []
    if "phantom" in data_kinds:
        grid = summary["phantom_size"]
        if grids:
            limits.append(
                f"Trained on phantom subjects on a {grid} isotropic grids: voxel sizes outside "
                f"{min(grids):g}-{max(grids):g} mm and anisotropic acquisitions "
                "(thick slices) were not in training."
            )
        else:
            limits.append(
                f"Trained on phantom subjects of the `{grid}` grid only (the `small` preset has about 4 mm voxels): "
                "scanner images at about 1 mm present other structure sizes and noise texture than it was trained on "
                "(the Metrics section says whether it was evaluated at 1 mm)."
            )
        doses = (
            f"low doses {summary['phantom_doses']} of standard and " if not config.model.startswith("zerodose") else ""
        )
        limits.append(
            f"Trained on {doses}the (agent, field strength) pairs of the phantom variation except "
            f"{summary['held_out_pairs']}; see the Metrics section for how it degrades outside them."
        )
    first = check[0]
    check_inputs = [(first["image"][:1], first["condition"][:1] if "condition" in first else None)]
    return write_model_folder(
        network,
        config.out,
        fields,
        check_inputs=check_inputs,
        training=summary,
        run=config.to_dict(),
        limits=limits,
        overwrite=True,
    )
