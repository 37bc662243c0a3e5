"""Widen a trained differential U-Net without changing what it computes (a start for a wider fine-tune).

Every scale k of the wider network has W_k >= w_k channels. The first w_k channels take the trained weights; the
others start from the wider network's own initialization, with every weight *from* a new channel *into* a trained
one set to zero. So the trained channels compute exactly what they computed before and the new ones, whatever they
hold, reach neither them nor the output: the wider network starts as the trained one (to rounding). The zero
weights are not frozen: their gradients are the trained channels' gradients times the new channels' activations,
so training brings the new capacity in (the zero-initialized expansion of Net2Net, Chen et al. 2016, without the
noise of a split).

Only the channel counts may differ (``base_width``, and ``max_width`` through it); the condition embedding, the
scales, the blocks and the input channels must be the same.

The condition can grow the same way (:func:`add_condition_state`): a network trained on [d, B, r1, sigma] starts a
network that also takes the voxel size, with zero weights from the new feature into the embedding's first layer, so
it computes what it computed for any value of the new feature until training moves those weights.

The condition's gain can be added the same way (:func:`add_gain_state`): a network with bias-only conditional
blocks starts one whose blocks also scale their channels by (1 + G e) (``condition_gain``), with G zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from training.networks.differential import DifferentialUNet, DifferentialUNetConfig

__all__ = ["add_condition_state", "add_gain_state", "can_add_condition", "can_add_gain", "can_widen", "widen_state"]


def can_widen(narrow: DifferentialUNetConfig, wide: DifferentialUNetConfig) -> bool:
    """True when ``wide`` differs from ``narrow`` only in channel counts, none of them smaller."""
    same = {**narrow.to_dict(), "base_width": 0, "max_width": 0} == {**wide.to_dict(), "base_width": 0, "max_width": 0}
    return same and all(a <= b for a, b in zip(narrow.widths, wide.widths, strict=True)) and narrow != wide


def can_add_condition(narrow: DifferentialUNetConfig, wide: DifferentialUNetConfig) -> bool:
    """True when ``wide`` differs from ``narrow`` only in taking more condition features, the ones both have
    standardized alike (the new features' standardization is ``wide``'s own)."""
    keys = ("condition_features", "condition_offset", "condition_scale")
    rest = {**narrow.to_dict(), **dict.fromkeys(keys)} == {**wide.to_dict(), **dict.fromkeys(keys)}
    n = narrow.condition_features
    if not (rest and wide.condition_features > n):
        return False
    narrow_offset, narrow_scale = narrow.resolved_condition_standardization()
    wide_offset, wide_scale = wide.resolved_condition_standardization()
    return narrow_offset == wide_offset[:n] and narrow_scale == wide_scale[:n]


def can_add_gain(narrow: DifferentialUNetConfig, wide: DifferentialUNetConfig) -> bool:
    """True when ``wide`` differs from ``narrow`` only in having the condition's gain (``condition_gain``)."""
    return not narrow.condition_gain and wide.condition_gain and replace(wide, condition_gain=False) == narrow


def add_gain_state(
    state: Mapping[str, torch.Tensor], narrow: DifferentialUNetConfig, wide: DifferentialUNetConfig
) -> dict[str, torch.Tensor]:
    """The state dict of ``wide`` (blocks with a gain) that computes what ``state`` computes: every gain's weights
    and bias zero (a gain of exactly 1), every other tensor copied.

    Raises
    ------
    ValueError
        When ``wide`` differs in more than the gain, or ``state`` does not fit ``narrow``.
    """
    if not can_add_gain(narrow, wide):
        raise ValueError(f"cannot add the condition's gain to {narrow.to_dict()} to make {wide.to_dict()}")
    _check_state(state, narrow, "add_gain_state")
    result = {key: value.clone() for key, value in state.items()}
    for key, value in DifferentialUNet(wide).state_dict().items():
        if key not in result:
            result[key] = torch.zeros_like(value)
    return result


def add_condition_state(
    state: Mapping[str, torch.Tensor], narrow: DifferentialUNetConfig, wide: DifferentialUNetConfig
) -> dict[str, torch.Tensor]:
    """The state dict of ``wide`` (more condition features) that computes what ``state`` computes.

    The embedding's first linear layer gets zero weights for the new features; its standardization buffers are
    ``wide``'s own (the trained features keep their values: the defaults are shared); every other tensor is copied.

    Raises
    ------
    ValueError
        When ``wide`` differs in more than the condition's length, or ``state`` does not fit ``narrow``.
    """
    if not can_add_condition(narrow, wide):
        raise ValueError(f"cannot extend the condition of {narrow.to_dict()} to {wide.to_dict()}")
    _check_state(state, narrow, "add_condition_state")
    fresh = DifferentialUNet(wide).state_dict()
    result = {key: value.clone() for key, value in state.items()}
    first = "embedding.mlp.0.weight"
    weight = torch.zeros_like(fresh[first])
    weight[:, : narrow.condition_features] = state[first]
    result[first] = weight
    for key in ("embedding.offset", "embedding.scale"):
        if not torch.equal(fresh[key][: narrow.condition_features], state[key]):
            raise ValueError(f"add_condition_state: {key} of the trained features differs from the defaults")
        result[key] = fresh[key].clone()
    return result


def widen_state(
    state: Mapping[str, torch.Tensor], narrow: DifferentialUNetConfig, wide: DifferentialUNetConfig, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The state dict of a ``wide`` network that computes what ``state`` (a ``narrow`` network's) computes.

    Raises
    ------
    ValueError
        When the networks differ in more than channel counts, or ``state`` does not fit ``narrow``.
    """
    if not can_widen(narrow, wide):
        raise ValueError(f"cannot widen {narrow.to_dict()} into {wide.to_dict()}: only wider channel counts can be")
    _check_state(state, narrow, "widen_state")
    torch.manual_seed(seed)
    result = {key: value.clone() for key, value in DifferentialUNet(wide).state_dict().items()}
    trained, total = narrow.widths, wide.widths

    def place(key: str, out_groups: list[tuple[int, int]] | None, in_groups: list[tuple[int, int]] | None) -> None:
        """Copy ``state[key]`` into ``result[key]``; each group (trained, total) is one block of channels along
        that axis (GatedFusion's concatenations have two); zero the weights from new inputs into trained outputs."""
        old, new = state[key], result[key]
        outs = _positions(out_groups, old.shape[0])
        if old.ndim == 1:  # a bias (or a buffer): per output channel
            new[outs] = old
            return
        ins = _positions(in_groups, old.shape[1])
        new[outs[:, None], ins[None, :]] = old
        if in_groups is not None:
            fresh = torch.ones(new.shape[1], dtype=torch.bool)
            fresh[ins] = False
            new[outs[:, None], fresh.nonzero().flatten()[None, :]] = 0.0

    def scale(k: int) -> list[tuple[int, int]]:
        return [(trained[k], total[k])]

    def pair(k: int) -> list[tuple[int, int]]:
        return [(trained[k], total[k]), (trained[k], total[k])]

    for key in state:
        parts = key.split(".")
        if parts[-1].startswith("kernel_"):
            continue  # the fixed binomial blur kernels: the wide network's own, one per (wider) channel
        if parts[0] == "embedding":
            result[key] = state[key].clone()  # the condition embedding keeps its size
        elif parts[0] == "stem":
            place(key, scale(0), None)
        elif parts[0] in ("encoder", "decoder"):
            k, layer = int(parts[1]), parts[3]
            place(key, scale(k), None if layer in ("project", "gain") else scale(k))
        elif parts[0] == "down":
            k = int(parts[1])
            place(key, scale(k + 1), scale(k))
        elif parts[0] == "input_convs":
            place(key, scale(int(parts[1]) + 1), None)
        elif parts[0] == "reduce":
            k = int(parts[1])
            place(key, scale(k), scale(k + 1))
        elif parts[0] == "fusion":
            k, layer = int(parts[1]), parts[2]
            if layer == "gates":  # [gate_up; gate_skip] from [upsampled; skip]
                place(key, pair(k), pair(k))
            else:
                place(key, scale(k), scale(k))
        elif parts[0] == "head":
            place(key, [(1, 1)], scale(0) if parts[1] == "weight" else None)
        else:
            raise ValueError(f"widen_state: no rule for parameter {key!r}")
    return result


def _check_state(state: Mapping[str, torch.Tensor], narrow: DifferentialUNetConfig, caller: str) -> None:
    """Raise a ValueError naming ``caller`` when ``state`` is not the state dict of a ``narrow`` network."""
    try:
        DifferentialUNet(narrow).load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{caller}: the weights are not those of {narrow.to_dict()}: {error}") from None


def _positions(groups: list[tuple[int, int]] | None, size: int) -> torch.Tensor:
    """Indices in the wide tensor of the ``size`` trained entries along one axis; ``groups`` None = the same."""
    if groups is None:
        return torch.arange(size)
    indices: list[torch.Tensor] = []
    start = 0
    for used, width in groups:
        indices.append(torch.arange(start, start + used))
        start += width
    positions = torch.cat(indices)
    if positions.numel() != size:
        raise ValueError(f"widen_state: {size} trained channels do not fit the groups {groups}")
    return positions
