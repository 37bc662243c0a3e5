"""Training checkpoints: what one holds, saving it atomically, reading it back, resuming a run exactly, and
starting a run from the weights of another (a checkpoint or a model folder)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from training.networks import DifferentialUNetConfig, NetworkConfig
from training.networks.widen import (
    add_condition_state,
    add_gain_state,
    can_add_condition,
    can_widen,
    widen_state,
)
from training.train_config import TrainConfig, network_config

__all__ = [
    "CHECKPOINT_FORMAT",
    "checkpoint_state",
    "initialize_from",
    "load_checkpoint",
    "recorded_memory_format",
    "resume_from",
    "save_checkpoint",
    "save_step",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def checkpoint_state(
    config: TrainConfig,
    *,
    step: int,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: dict[str, Any],
    gamma_ratios: Mapping[str, float],
    timing: Mapping[str, float],
    devices: list[str],
    memory_format: str = "contiguous",
) -> dict[str, Any]:
    """Everything a run needs to continue bit-identically after ``step`` optimizer steps (CPU runs), and the
    ``memory_format`` it trains in (the layout it must continue in to stay so)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "identity": config.identity(),
        "network_config": network_config(config).to_dict(),
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "gamma_ratios": dict(gamma_ratios),
        "timing": dict(timing),
        "devices": devices,
        "memory_format": memory_format,
    }


def recorded_memory_format(state: Mapping[str, Any]) -> str:
    """The layout a checkpoint's run trained in (``contiguous`` for checkpoints from before the option)."""
    return str(state.get("memory_format", "contiguous"))


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> Path:
    """torch.save atomically (a crash never leaves a truncated checkpoint under the final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".pt", dir=path.parent)
    os.close(handle)
    try:
        torch.save(dict(state), temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def save_step(folder: Path, state: Mapping[str, Any]) -> Path:
    """Save ``state`` as ``step_NNNNNNN.pt`` and as ``last.pt`` in ``folder``; return the path of ``last.pt``."""
    save_checkpoint(folder / f"step_{state['step']:07d}.pt", state)
    return save_checkpoint(folder / "last.pt", state)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by ``train``.

    Raises
    ------
    ValueError
        When the file is not a GadSynth checkpoint of the current format.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a GadSynth training checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _check_resumable(state: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    saved, wanted = state["identity"], config.identity()
    differences = [f"{k}: checkpoint {saved.get(k)!r}, now {wanted[k]!r}" for k in wanted if saved.get(k) != wanted[k]]
    if differences:
        raise ValueError(f"cannot resume from {path}: the run differs in " + "; ".join(differences))


def resume_from(
    path: Path,
    config: TrainConfig,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint of the same run into the network, optimizer, scheduler and torch's RNG; return it (the
    caller takes the history, the sampler's gamma ratios, the timing and the step from it). ``state``: the
    checkpoint already read from ``path`` (it is read otherwise).

    Raises
    ------
    ValueError
        When the file is not a checkpoint, or ``config`` differs from the checkpointed run's ``identity()``.
    """
    if state is None:
        state = load_checkpoint(path)
    _check_resumable(state, config, Path(path))
    network.load_state_dict(state["network"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state


def _differential_config(recorded: Mapping[str, Any]) -> DifferentialUNetConfig | None:
    if recorded.get("kind") != "differential_unet":
        return None
    return DifferentialUNetConfig.from_dict(recorded)


def initialize_from(network: torch.nn.Module, wanted: NetworkConfig, source: Path) -> None:
    """Load starting weights from a checkpoint or a model folder whose network is ``wanted``.

    The networks must match in everything but the direct networks' ``output_max`` (the top of the output range
    holds no weights): a residual network's weights mean the same under another clip, and a sigmoid network's head
    re-learns the scale. That lets a model trained with a clipped target start the run that lifts the clip. A
    differential network may also start a wider one (more channels, everything else the same): the trained weights
    fill the first channels of every scale and the wider network computes what they computed
    (``training.networks.widen``). Likewise a differential network may start one that also takes the voxel size
    (the new condition feature starts with no influence), or one whose conditional blocks also scale their channels
    (``condition_gain``; the gains start at exactly 1), or both.

    Raises
    ------
    ValueError
        When the source is missing, records another network, or its weights cannot be read.
    """
    from training.model_folder import network_from_folder, recorded_network_config
    from training.networks import config_from_dict

    if source.is_dir():
        loaded, weights = network_from_folder(source)
        if weights != "model.onnx":
            raise ValueError(f"--init-from {source}: no weights to start from ({weights})")
        recorded = config_from_dict(recorded_network_config(source) or {}).to_dict()
        state = loaded.state_dict()
    else:
        checkpoint = load_checkpoint(source)
        recorded, state = checkpoint["network_config"], checkpoint["network"]
    wanted_fields = wanted.to_dict()
    narrow = _differential_config(recorded)
    gained = wanted  # the network trained; with a gain added below, the network without it is matched first
    gain_from: DifferentialUNetConfig | None = None
    if isinstance(wanted, DifferentialUNetConfig) and narrow and wanted.condition_gain and not narrow.condition_gain:
        gain_from = replace(wanted, condition_gain=False)
        wanted, wanted_fields = gain_from, gain_from.to_dict()
    if narrow is not None and isinstance(wanted, DifferentialUNetConfig) and can_widen(narrow, wanted):
        logger.info(
            "initializing from %s widened from %s to %s channels: the new channels start with no influence on the "
            "output (training.networks.widen)",
            source,
            list(narrow.widths),
            list(wanted.widths),
        )
        state = widen_state(state, narrow, wanted)
        recorded = wanted_fields
    elif narrow is not None and isinstance(wanted, DifferentialUNetConfig) and can_add_condition(narrow, wanted):
        logger.info(
            "initializing from %s with the condition %s extended to %s: the new features start with no influence on "
            "the output (training.networks.widen)",
            source,
            list(narrow.condition_names),
            list(wanted.condition_names),
        )
        state = add_condition_state(state, narrow, wanted)
        recorded = wanted_fields
    if {**recorded, "output_max": None} == {**wanted_fields, "output_max": None} and recorded != wanted_fields:
        logger.info(
            "initializing from %s with another output range: %s there, %s here",
            source,
            recorded.get("output_max", 1.0),
            wanted_fields.get("output_max", 1.0),
        )
    elif recorded != wanted_fields:
        raise ValueError(
            f"--init-from {source}: its network is {recorded}, this run trains {gained.to_dict()} "
            "(pass the same --model, --width, --depth and --embedding-dim)"
        )
    if gain_from is not None:
        logger.info(
            "initializing from %s with a gain added to every conditional block: the gains start at 1 "
            "(training.networks.widen)",
            source,
        )
        assert isinstance(gained, DifferentialUNetConfig)
        state = add_gain_state(state, gain_from, gained)
    network.load_state_dict(state)
    logger.info("initialized the network from %s", source)
