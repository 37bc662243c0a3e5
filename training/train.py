"""The training loop: Adam, cosine learning rate, validation, checkpoints and exact resume, export at the end.

The run's definition is in ``training.train_config``, checkpoints in ``training.checkpoints`` and the model folder
written at the end in ``training.train_export``; the names callers import from here stay importable from here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from operators.model_manifest import ModelManifest
from training.checkpoints import (
    CHECKPOINT_FORMAT,
    checkpoint_state,
    initialize_from,
    load_checkpoint,
    recorded_memory_format,
    resume_from,
    save_step,
)
from training.datasets import (
    Batch,
    PatchSampler,
    PatchSettings,
    SampleCache,
    Subject,
    SubjectStream,
    load_sample,
    parse_data_spec,
    save_sample,
    validation_batches,
)
from training.losses import LossConfig, compute_loss
from training.networks import DirectUNetConfig, build_network
from training.train_config import ModelKind, TrainConfig, network_config, preprocessing_manifest
from training.train_export import export_trained

__all__ = [
    "CHECKPOINT_FORMAT",
    "ModelKind",
    "TrainConfig",
    "TrainResult",
    "load_checkpoint",
    "network_config",
    "prepare",
    "preprocessing_manifest",
    "train",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced."""

    manifest: ModelManifest | None
    checkpoint: Path
    history: dict[str, Any]
    gamma: float | None
    seconds_per_step: float


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _tensors(batch: Batch, device: torch.device, layout: torch.memory_format) -> dict[str, torch.Tensor]:
    tensors = {key: torch.from_numpy(value).to(device, non_blocking=True) for key, value in batch.items()}
    return {key: t.contiguous(memory_format=layout) if t.ndim == 5 else t for key, t in tensors.items()}


def _device_of(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


def _layout_of(network: torch.nn.Module) -> torch.memory_format:
    """The layout the network's 5-D weights are in (its inputs are given the same)."""
    for parameter in network.parameters():
        if (
            parameter.ndim == 5
            and not parameter.is_contiguous()
            and parameter.is_contiguous(memory_format=torch.channels_last_3d)
        ):
            return torch.channels_last_3d
    return torch.contiguous_format


def _parameter_groups(network: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups: one (every parameter at ``lr``), or with ``gain_lr_factor`` two, the conditional
    blocks' gains (``...gain.weight`` / ``...gain.bias``) at ``lr * gain_lr_factor`` after everything else."""
    if config.gain_lr_factor == 1.0:
        return [{"params": list(network.parameters())}]
    named = list(network.named_parameters())
    gains = [p for name, p in named if name.split(".")[-2:-1] == ["gain"]]
    rest = [p for name, p in named if name.split(".")[-2:-1] != ["gain"]]
    return [{"params": rest}, {"params": gains, "lr": config.lr * config.gain_lr_factor}]


def batch_loss(network: torch.nn.Module, batch: Batch, loss: LossConfig) -> torch.Tensor:
    """The loss of one batch on the network's device and in its layout (the network gets the condition only when
    the batch has one)."""
    tensors = _tensors(batch, _device_of(network), _layout_of(network))
    prediction = network(tensors["image"], tensors.get("condition"))
    return compute_loss(loss, prediction, tensors["target"], brain=tensors["brain"], p=tensors["p"])


def _validate(network: torch.nn.Module, batches: list[Batch], loss: LossConfig) -> float | None:
    if not batches:
        return None
    network.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            n = batch["image"].shape[0]
            total += float(batch_loss(network, batch, loss)) * n
            count += n
    network.train()
    return total / count


def _baseline_loss(config: TrainConfig, batches: list[Batch], loss: LossConfig) -> float | None:
    """Validation loss of "no enhancement": y = 0 (differential) or x_SD = x_PC (direct, the t1_pre channel).

    A network whose validation loss is not below this has learned nothing about the contrast (e.g. a dead ReLU
    output predicting 0 everywhere scores exactly this).
    """
    if not batches:
        return None
    network = network_config(config)
    total, count = 0.0, 0
    for batch in batches:
        target = torch.from_numpy(batch["target"])
        if isinstance(network, DirectUNetConfig):
            channel = network.inputs.index("t1_pre")
            prediction = torch.from_numpy(batch["image"][:, channel : channel + 1])
        else:
            prediction = torch.zeros_like(target)
        value = compute_loss(
            loss, prediction, target, brain=torch.from_numpy(batch["brain"]), p=torch.from_numpy(batch["p"])
        )
        total += float(value) * target.shape[0]
        count += target.shape[0]
    return total / count


def _history_file(config: TrainConfig) -> Path:
    return config.work / "history.json"


def _sampler(config: TrainConfig) -> PatchSampler:
    """The run's patch sampler, over its training subjects in order and its sample cache."""
    manifest = preprocessing_manifest(config)
    stream = SubjectStream([parse_data_spec(s) for s in config.data], seed=config.seed)
    cache = SampleCache(config.cache, manifest, config.variation)
    return PatchSampler(stream, cache, config.patches or PatchSettings(), seed=config.seed)


def _validation_subjects(config: TrainConfig) -> Iterator[Subject]:
    return (s for spec in config.val for s in parse_data_spec(spec).subjects())


def _validation_set(config: TrainConfig, cache: SampleCache, subjects: list[Subject]) -> list[Batch]:
    """The fixed validation patches: ``val_per_subject`` from each held-out subject, in batches of ``batch``."""
    settings = config.patches or PatchSettings()
    return validation_batches(
        cache, subjects, settings, seed=config.seed, per_subject=config.val_per_subject, batch_size=config.batch
    )


def prepare(config: TrainConfig, *, pack_to: Path | None = None) -> list[str]:
    """Build (and cache) every sample a run will use, training and validation, without training.

    Run it beforehand, or in a second process beside a ``--threads 1`` run, so that the training loop finds its
    samples cached. With ``pack_to``, the run's samples are also copied there in compact form (float16,
    compressed, same file names): a cache to carry to a GPU machine that has no preprocessing stack
    (``--cache PACK --device cuda`` there). Returns the subject keys prepared.

    Raises
    ------
    ValueError
        When a data spec is invalid.
    """
    sampler = _sampler(config)
    stream, cache = sampler.stream, sampler.cache
    positions = sampler.positions_used(config.steps)
    if stream.endless_start is None:
        positions = range(min(len(positions), len(stream)))  # each subject of a finite pool once
    subjects = []
    for position in tqdm(positions, desc="prepare samples", unit="subject", disable=not config.progress):
        subjects.append(sampler.load(position).subject)
    for subject in _validation_subjects(config):
        cache.get(subject)
        subjects.append(subject)
    logger.info("prepared %d samples in %s", len(subjects), config.cache)
    if pack_to is not None:
        for subject in subjects:
            path = cache.path(subject)
            save_sample(load_sample(path), Path(pack_to) / path.name, compact=True)
        logger.info("packed %d samples into %s", len(subjects), pack_to)
    return [s.key for s in subjects]


def train(config: TrainConfig, *, resume: Path | None = None) -> TrainResult:
    """Train a network as ``config`` says, checkpointing along the way, then export its model folder.

    Parameters
    ----------
    config:
        The run.
    resume:
        A checkpoint of the same run (``identity()`` must match) to continue from; the continued run is
        bit-identical to an uninterrupted one (same batches, same optimizer and scheduler state).

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        When a data spec is invalid, the model folder is not empty (without ``overwrite``), or the checkpoint does
        not fit this run.
    FileExistsError
        Never after training: the model folder is checked before the first step.
    """
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        raise ValueError(f"model folder {out} exists and is not empty; pass --overwrite to replace it at the end")
    sampler = _sampler(config)
    stream, cache = sampler.stream, sampler.cache
    val_subjects = list(_validation_subjects(config))
    train_keys = {s.key for s in stream.subjects}
    overlap = sorted(train_keys & {s.key for s in val_subjects})
    if overlap:
        raise ValueError(f"validation subjects are also training subjects: {overlap[:5]}")
    loss_config = config.loss_config
    device = config.torch_device()
    with _torch_threads(config.threads):
        torch.manual_seed(config.seed)
        network = build_network(network_config(config))
        if config.init_from is not None and resume is None:
            initialize_from(network, network_config(config), Path(config.init_from))
        resumed = load_checkpoint(resume) if resume is not None else None
        layout = config.torch_memory_format(device, recorded_memory_format(resumed) if resumed else None)
        network = network.to(device).to(memory_format=layout)  # type: ignore[call-overload]  # torch's stubs lack it
        optimizer = torch.optim.Adam(_parameter_groups(network, config), lr=config.lr, betas=(0.9, 0.999))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=config.lr_min)
        history: dict[str, Any] = {"train": [], "val": []}
        timing = {"data": 0.0, "compute": 0.0, "steps": 0}
        devices: list[str] = []
        start = 0
        if resume is not None and resumed is not None:
            state = resume_from(resume, config, network, optimizer, scheduler, state=resumed)
            history = {"train": list(state["history"]["train"]), "val": list(state["history"]["val"])}
            sampler.gamma_ratios.update(state["gamma_ratios"])
            timing.update(state.get("timing", {}))
            devices = list(state.get("devices", []))
            start = int(state["step"])
            logger.info("resumed %s at step %d of %d", resume, start, config.steps)
        val = _validation_set(config, cache, val_subjects)
        history["val_baseline"] = _baseline_loss(config, val, loss_config)
        if start == 0 and val:
            history["val"].append({"step": 0, "loss": _validate(network, val, loss_config)})
        network.train()
        checkpoint = config.work / "checkpoints" / "last.pt"
        if start < config.steps:
            devices.append(_describe_device(device, layout))
        bar = tqdm(
            total=config.steps, initial=start, desc=f"train {config.name}", unit="step", disable=not config.progress
        )
        try:
            for step in range(start, config.steps):
                began = time.perf_counter()
                batch = sampler.batch(step, config.batch)
                fetched = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss = batch_loss(network, batch, loss_config)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # honest per-step timing
                lr = float(scheduler.get_last_lr()[0])
                scheduler.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"training loss became {value} at step {step + 1}")
                timing["data"] += fetched - began
                timing["compute"] += time.perf_counter() - fetched
                timing["steps"] += 1
                history["train"].append({"step": step + 1, "loss": value, "lr": lr})
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4g}", lr=f"{lr:.2g}")
                done = step + 1
                if val and (done % config.val_every == 0 or done == config.steps):
                    val_loss = _validate(network, val, loss_config)
                    history["val"].append({"step": done, "loss": val_loss})
                    logger.info("step %d: train loss %.5g, validation loss %.5g", done, value, val_loss)
                if done % config.checkpoint_every == 0 or done == config.steps:
                    state = checkpoint_state(
                        config,
                        step=done,
                        network=network,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        history=history,
                        gamma_ratios=sampler.gamma_ratios,
                        timing=timing,
                        devices=devices,
                        memory_format=_LAYOUT_NAMES[layout],
                    )
                    checkpoint = save_step(config.work / "checkpoints", state)
        finally:
            bar.close()
        # export (and the ONNX check) in the usual layout
        network = network.cpu().to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
        seconds_per_step = (timing["data"] + timing["compute"]) / max(timing["steps"], 1)
        gamma = _gamma(config, sampler)
        history["timing"] = {
            "steps_timed": timing["steps"],
            "seconds_per_step": seconds_per_step,
            "data_seconds_per_step": timing["data"] / max(timing["steps"], 1),
            "compute_seconds_per_step": timing["compute"] / max(timing["steps"], 1),
            "devices": devices,
        }
        history["failed_subjects"] = sampler.failed
        config.work.mkdir(parents=True, exist_ok=True)
        _history_file(config).write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
        exported = export_trained(config, network, gamma, history, val or [sampler.batch(0, 1)])
    return TrainResult(exported, checkpoint, history, gamma, seconds_per_step)


_LAYOUT_NAMES = {torch.channels_last_3d: "channels_last", torch.contiguous_format: "contiguous"}


def _describe_device(device: torch.device, layout: torch.memory_format = torch.contiguous_format) -> str:
    if device.type == "cuda":
        described = f"{torch.cuda.get_device_name(device)} (CUDA, torch {torch.__version__})"
    else:
        described = f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"
    return described + (", channels_last" if layout == torch.channels_last_3d else "")


def _gamma(config: TrainConfig, sampler: PatchSampler) -> float | None:
    """The paper's gamma over every subject the run trained on (loading any not seen in this process)."""
    if config.model != "differential":
        return None
    for position in sampler.positions_used(config.steps):
        key = sampler.stream.at(position).key
        if key not in sampler.gamma_ratios and key not in sampler.failed:  # each subject once, not each position
            sampler.load(position)
    ratios = list(sampler.gamma_ratios.values())
    return math.fsum(ratios) / len(ratios) if ratios else 1.0
