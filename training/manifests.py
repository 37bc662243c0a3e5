"""Manifest fields for the models GadSynth exports (trained networks and the linear baseline), and the checks that a
network and its manifest fit together."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from operators.model_manifest import (
    ConditionSpec,
    InputChannel,
    ModelManifest,
    ModelMode,
    NormalizationKind,
    NormalizationSpec,
    OutputMeaning,
    OutputScale,
    OutputSpec,
    PostprocessSpec,
    TrainingTarget,
)
from operators.roles import QUANTITATIVE_SCALE, Role
from training.losses import sigmoid_target_params
from training.networks import CONDITION_FEATURES, DIFFERENTIAL_INPUTS, DifferentialUNet, DirectUNet, describe_network

__all__ = [
    "DEFAULT_INTENDED_USE",
    "MODEL_FILE",
    "baseline_manifest_fields",
    "build_manifest",
    "check_fits",
    "differential_manifest_fields",
    "direct_manifest_fields",
    "noise_scale_gamma",
]

logger = logging.getLogger(__name__)

#: File name of the ONNX model inside a model folder.
MODEL_FILE = "model.onnx"
DEFAULT_INTENDED_USE = (
    "Research and software testing only: synthesizing a contrast-enhanced brain T1 for method development and "
    "evaluation on phantom and research data. Not a medical device; not for diagnosis or any clinical decision."
)


def noise_scale_gamma(pairs: Sequence[tuple[Any, Any, Any]]) -> float:
    """The paper's gamma = mean over training pairs of <b, s_SD> / <b, s_LD> (brain mask b, local stds s).

    Parameters
    ----------
    pairs:
        (brain mask, s_SD, s_LD) per training subject, as NumPy arrays or tensors of one shape.

    Raises
    ------
    ValueError
        When no pair is given, shapes differ, or a brain-masked sum of s_LD is not positive.
    """
    if not pairs:
        raise ValueError("gamma needs at least one (brain, s_SD, s_LD) training pair")
    ratios = []
    for index, (brain, s_sd, s_ld) in enumerate(pairs):
        b, sd, ld = (torch.as_tensor(a, dtype=torch.float64) for a in (brain, s_sd, s_ld))
        if not b.shape == sd.shape == ld.shape:
            raise ValueError(f"pair {index}: brain, s_SD and s_LD shapes differ: {b.shape}, {sd.shape}, {ld.shape}")
        denominator = float((b * ld).sum())
        if not denominator > 0:
            raise ValueError(f"pair {index}: <b, s_LD> is {denominator:g} (expected > 0: empty brain or zero std)")
        ratios.append(float((b * sd).sum()) / denominator)
    gamma = math.fsum(ratios) / len(ratios)
    logger.info("gamma = %.4f from %d training pair(s)", gamma, len(ratios))
    return gamma


def _low_dose_differential(normalization: NormalizationSpec | None = None) -> dict[str, Any]:
    """The fields every low-dose differential model shares: its mode, roles, tensor names and normalization."""
    return {
        "mode": ModelMode.LOW_DOSE_DIFFERENTIAL,
        "required_roles": [Role.T1_PRE, Role.T1_LOW_DOSE],
        "model_file": MODEL_FILE,
        "input_tensor": "image",
        "condition_tensor": "condition",
        "normalization": normalization or NormalizationSpec(kind=NormalizationKind.DIFFERENTIAL),
    }


def baseline_manifest_fields(*, name: str, version: str, description: str, intended_use: str) -> dict[str, Any]:
    """Manifest fields (all but sha256) of the linear dose-scaling baseline: inputs x_pc, x_ld and the brain mask,
    condition [dose], output y_hat in normalized intensity, any size in one piece (no patches, divisor 1).
    """
    return {
        "name": name,
        "version": version,
        "description": description,
        "intended_use": intended_use,
        **_low_dose_differential(),
        "inputs": [
            InputChannel(name="x_pc", meaning="pre-contrast T1w / its brain 95th percentile"),
            InputChannel(
                name="x_ld", meaning="low-dose T1w / its brain 95th percentile, radiometrically aligned to x_pc"
            ),
            InputChannel(name="brain_mask", meaning="1 inside the MNI152-derived brain mask, 0 outside"),
        ],
        "condition": ConditionSpec(features=["dose"]),
        "output": OutputSpec(
            tensor="y_hat", meaning=OutputMeaning.CONTRAST_SIGNAL, scale=OutputScale.NORMALIZED, gamma=1.0
        ),
        "patch_size": None,
        "spatial_divisor": 1,
        "batch_size": 1,
    }


def _also_conditioned_on(condition_features: Sequence[str]) -> str:
    """The description's tail for the condition features beyond [d, B, r1, sigma]."""
    extras = [
        text
        for feature, text in (
            ("voxel_mm", "the voxel size of its grid"),
            ("inversion_prepared", "whether its T1 is inversion-prepared"),
        )
        if feature in condition_features
    ]
    return f" and on {' and '.join(extras)}" if extras else ""


def differential_manifest_fields(
    *,
    name: str,
    version: str,
    gamma: float,
    description: str | None = None,
    intended_use: str = DEFAULT_INTENDED_USE,
    condition_defaults: Mapping[str, float] | None = None,
    condition_features: Sequence[str] = CONDITION_FEATURES,
    patch_size: tuple[int, int, int] | None = None,
    patch_overlap: float = 0.5,
    spatial_divisor: int = 8,
    normalization: NormalizationSpec | None = None,
) -> dict[str, Any]:
    """Manifest fields (all but sha256) of a differential U-Net model: inputs z_ld, x_ld, s_ld, condition
    ``condition_features`` ([d, B, r1, sigma], optionally the voxel size and the inversion preparation), output
    y_hat in units of sigma_LD (scale ``local_std``, non-negative), the target's w, b.
    """
    w, b = sigmoid_target_params(1.0)
    meanings = {
        "z_ld": "noise-normalized low-dose subtraction (z~ - m) / s * sigma_LD",
        "x_ld": "low-dose T1w / its brain 95th percentile, radiometrically aligned to x_pc",
        "s_ld": "local standard deviation of the low-dose subtraction",
    }
    return {
        "name": name,
        "version": version,
        "description": description
        or "Conditional differential U-Net (Pinetz et al.): predicts the standard-dose contrast signal from the "
        "low-dose subtraction, conditioned on dose, field strength, relaxivity and noise level"
        + _also_conditioned_on(condition_features)
        + ".",
        "intended_use": intended_use,
        **_low_dose_differential(normalization),
        "inputs": [InputChannel(name=c, meaning=meanings[c]) for c in DIFFERENTIAL_INPUTS],
        "condition": ConditionSpec.model_validate(
            {"features": list(condition_features), "defaults": dict(condition_defaults or {})}
        ),
        "output": OutputSpec(
            tensor="y_hat",
            meaning=OutputMeaning.CONTRAST_SIGNAL,
            scale=OutputScale.LOCAL_STD,
            gamma=gamma,
            nonnegative=True,
        ),
        "patch_size": patch_size,
        "patch_overlap": patch_overlap,
        "spatial_divisor": spatial_divisor,
        "target": TrainingTarget(sigmoid_w=w, sigmoid_b=b),
        # unenhanced tissue: the mean of x_PC and x_LD (half the noise variance), since ce-lowdose-v1 1.3.0; the
        # contrast faded below the enhancement threshold (no brightening of the whole brain by the noise of a
        # non-negative output), since 1.13.0
        "postprocess": PostprocessSpec(average_low_dose=True, gate_below_threshold=True),
    }


def _direct_input_meaning(role: Role) -> str:
    if role.value in QUANTITATIVE_SCALE:
        return f"{role.value} divided by {QUANTITATIVE_SCALE[role.value]:g} (quantitative: no intensity normalization)"
    return f"{role.value} min-max normalized in the brain"


def direct_manifest_fields(
    *,
    name: str,
    version: str,
    inputs: Sequence[str],
    spatial_divisor: int,
    description: str | None = None,
    intended_use: str = DEFAULT_INTENDED_USE,
    patch_size: tuple[int, int, int] | None = None,
    patch_overlap: float = 0.5,
    normalization: NormalizationSpec | None = None,
    target_max: float = 1.0,
) -> dict[str, Any]:
    """Manifest fields (all but sha256) of a direct U-Net model: one channel per role, min-max normalization to
    [0, 1] inside the brain, output = the standard-dose image in t1_pre's normalized scale. Low-dose mode when
    ``t1_low_dose`` is an input, zero-dose mode otherwise. ``target_max``: the top of the standard-dose target's
    normalized range (see ``NormalizationSpec.target_max``), when no ``normalization`` is given.
    """
    roles = [Role(name) for name in inputs]
    mode = ModelMode.LOW_DOSE_DIRECT if Role.T1_LOW_DOSE in roles else ModelMode.ZERO_DOSE_DIRECT
    kind = "low-dose" if mode == ModelMode.LOW_DOSE_DIRECT else "zero-dose"
    return {
        "name": name,
        "version": version,
        "description": description
        or f"Direct 3D U-Net (Bone et al.), {kind}: synthesizes the standard-dose T1 from "
        f"{', '.join(r.value for r in roles)}.",
        "intended_use": intended_use,
        "mode": mode,
        "required_roles": roles,
        "model_file": MODEL_FILE,
        "input_tensor": "image",
        "condition_tensor": None,
        "inputs": [InputChannel(name=r.value, meaning=_direct_input_meaning(r)) for r in roles],
        "normalization": normalization
        or NormalizationSpec(kind=NormalizationKind.MINMAX, mask_outside_brain=True, target_max=target_max),
        "condition": None,
        "output": OutputSpec(tensor="y_hat", meaning=OutputMeaning.IMAGE, scale=OutputScale.NORMALIZED),
        "patch_size": patch_size,
        "patch_overlap": patch_overlap,
        "spatial_divisor": spatial_divisor,
        "target": None,
    }


def build_manifest(fields: Mapping[str, Any], sha256: str) -> ModelManifest:
    """The manifest from its fields and the model's sha256.

    Raises
    ------
    ValueError
        When the fields do not validate (the message lists each problem).
    """
    values = {**fields, "sha256": sha256}
    try:
        return ModelManifest(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"the manifest fields are invalid: {problems}") from exc


def check_fits(network: torch.nn.Module, manifest: ModelManifest) -> None:
    """Check that a network and a manifest agree: channels (and their order), condition, divisor, output meaning.

    Raises
    ------
    ValueError
        At the first disagreement, naming both sides.
    TypeError
        When ``network`` is not a GadSynth network.
    """
    channels, features, divisor = describe_network(network)
    label = f"{type(network).__name__} vs manifest {manifest.name!r}"
    if len(manifest.inputs) != channels:
        raise ValueError(
            f"{label}: the network takes {channels} input channel(s), the manifest lists "
            f"{len(manifest.inputs)} ({manifest.channel_names})"
        )
    wanted = None if manifest.condition is None else len(manifest.condition.features)
    if wanted != features:
        raise ValueError(
            f"{label}: the network takes {features or 'no'} condition value(s), the manifest {wanted or 'no'} condition"
        )
    if manifest.spatial_divisor % divisor and isinstance(network, DirectUNet):
        raise ValueError(
            f"{label}: spatial_divisor {manifest.spatial_divisor} must be a multiple of {divisor} (2**levels)"
        )
    if isinstance(network, DifferentialUNet) and manifest.output.meaning != OutputMeaning.CONTRAST_SIGNAL:
        raise ValueError(
            f"{label}: a differential U-Net outputs the contrast signal; the manifest says "
            f"{manifest.output.meaning.value!r}"
        )
    if isinstance(network, DirectUNet):
        names = tuple(manifest.channel_names)
        if names != network.config.inputs:
            raise ValueError(
                f"{label}: channel order {list(names)} differs from the network's {list(network.config.inputs)}"
            )
