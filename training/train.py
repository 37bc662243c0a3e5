"""The training loop: Adam, cosine learning rate, checkpoints and exact resume, validation, export at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from operators.model_manifest import ModelManifest
from training.datasets import (
    Batch,
    PatchSampler,
    PatchSettings,
    PhantomVariation,
    SampleCache,
    SubjectStream,
    load_sample,
    parse_data_spec,
    save_sample,
    validation_batches,
)
from training.export import write_model_folder
from training.losses import LossConfig, LossKind, compute_loss
from training.manifests import build_manifest, differential_manifest_fields, direct_manifest_fields
from training.networks import (
    LOW_DOSE_DIRECT_INPUTS,
    DifferentialUNetConfig,
    DirectUNetConfig,
    NetworkConfig,
    build_network,
)

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

ModelKind = Literal["differential", "direct", "zerodose"]
_MODEL_KINDS: tuple[str, ...] = ("differential", "direct", "zerodose")
CHECKPOINT_FORMAT = 1
#: Where runs keep checkpoints and the sample cache unless told otherwise (``/var/`` is git-ignored).
DEFAULT_WORK_ROOT = Path("var") / "train"
_PLACEHOLDER_SHA256 = "0" * 64


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run (the fields in ``identity()`` must match to resume).

    Parameters
    ----------
    model:
        ``differential`` (Pinetz et al.), ``direct`` (Bone et al., T1 pre + low-dose) or ``zerodose``
        (T1 pre, T2, FLAIR).
    out:
        The model folder to export to at the end (``models/NAME``; NAME becomes the manifest name).
    steps, batch, patch:
        Optimizer steps, patches per step, patch edge in voxels.
    data, val:
        ``--data`` specs for training and held-out validation (no validation when empty).
    lr, lr_min:
        Adam learning rate, annealed to ``lr_min`` with a cosine over ``steps`` (paper: 1e-4 to 1e-6).
    loss:
        Loss kind; None = the paper's weighted Huber for ``differential``, L2 (Bone et al.) for the others.
    margin:
        Voxels ignored at each patch face in the loss (paper: 8).
    seed:
        Seeds the network initialization, the subject order and every patch draw.
    threads:
        torch intra-op threads.
    checkpoint_every, val_every:
        Steps between checkpoints / validation (a checkpoint and a validation also come at the end).
    val_per_subject:
        Fixed validation patches per held-out subject.
    width, depth, embedding_dim:
        Network size overrides (base width, scales / levels, condition embedding); None = defaults.
    variation:
        How phantom subjects vary.
    patches:
        Patch sampling (size is taken from ``patch``).
    work_dir, cache_dir:
        Checkpoints and history; cached samples (default ``var/train/<name>`` and ``var/train/cache``).
    version:
        Model version written to the manifest.
    overwrite:
        Replace a non-empty model folder at the end.
    progress:
        Show a tqdm progress bar.
    init_from:
        Start from these weights instead of a random initialization: a checkpoint of a run with the same network,
        or a model folder (weights read back from its model.onnx), e.g. to fine-tune a shipped model on a site's
        own studies. Part of ``identity()``.
    device:
        ``cpu``, ``cuda`` or ``auto`` (CUDA when available). Not part of ``identity()``: a run trained on a GPU
        resumes (or exports) on a CPU; only CPU runs resume bit-identically.
    """

    model: ModelKind = "differential"
    out: Path
    steps: int = 1000
    batch: int = 2
    patch: int = 64
    data: tuple[str, ...] = ("phantom:0-199",)
    val: tuple[str, ...] = ("phantom:5000-5003",)
    lr: float = 1e-4
    lr_min: float = 1e-6
    loss: LossKind | None = None
    margin: int = 8
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 100
    val_every: int = 100
    val_per_subject: int = 2
    width: int | None = None
    depth: int | None = None
    embedding_dim: int | None = None
    variation: PhantomVariation = field(default_factory=PhantomVariation)
    patches: PatchSettings | None = None
    work_dir: Path | None = None
    cache_dir: Path | None = None
    version: str = "0.1.0"
    overwrite: bool = False
    progress: bool = True
    init_from: Path | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model not in _MODEL_KINDS:
            raise ValueError(f"--model must be one of {list(_MODEL_KINDS)}; found {self.model!r}")
        for name in ("steps", "batch", "patch", "threads", "checkpoint_every", "val_every", "val_per_subject"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; found {getattr(self, name)}")
        if not 0 < self.lr_min <= self.lr:
            raise ValueError(f"learning rates must satisfy 0 < lr_min <= lr; found lr={self.lr}, lr_min={self.lr_min}")
        if self.margin < 0 or 2 * self.margin >= self.patch:
            raise ValueError(f"margin {self.margin} leaves nothing of a {self.patch}-voxel patch")
        if not self.data:
            raise ValueError("at least one --data source is needed")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be cpu, cuda[:N] or auto; found {self.device!r}")
        patches = self.patches or PatchSettings()
        object.__setattr__(self, "patches", dataclasses.replace(patches, size=(self.patch,) * 3))
        divisor = network_config(self).spatial_divisor
        if self.model != "differential" and self.patch % divisor:
            raise ValueError(f"--patch {self.patch} must be a multiple of {divisor} (2**levels) for the direct U-Net")

    @property
    def name(self) -> str:
        """Model name (the output folder's name)."""
        return Path(self.out).name

    @property
    def loss_config(self) -> LossConfig:
        kind: LossKind = self.loss or ("weighted_huber" if self.model == "differential" else "l2")
        return LossConfig(kind=kind, margin=self.margin)

    @property
    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else DEFAULT_WORK_ROOT / self.name

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else DEFAULT_WORK_ROOT / "cache"

    def identity(self) -> dict[str, Any]:
        """What determines the training trajectory: a resumed run must agree on all of it."""
        patches = self.patches or PatchSettings()
        return {
            "model": self.model,
            "network": network_config(self).to_dict(),
            "steps": self.steps,
            "batch": self.batch,
            "data": list(self.data),
            "lr": self.lr,
            "lr_min": self.lr_min,
            "loss": self.loss_config.to_dict(),
            "seed": self.seed,
            "variation": self.variation.to_dict(),
            "patches": patches.to_dict(),
            "init_from": None if self.init_from is None else str(self.init_from),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (training record)."""
        return {
            **self.identity(),
            "val": list(self.val),
            "val_per_subject": self.val_per_subject,
            "threads": self.threads,
            "checkpoint_every": self.checkpoint_every,
            "val_every": self.val_every,
            "out": str(self.out),
            "version": self.version,
            "device": self.device,
        }

    def torch_device(self) -> torch.device:
        """The device to train on (``auto``: CUDA when torch sees one)."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device}: torch {torch.__version__} sees no CUDA device here")
        return torch.device(self.device)


def network_config(config: TrainConfig) -> NetworkConfig:
    """The network a run trains (defaults: the 15 s CPU budget size of each network)."""
    sizes: dict[str, Any] = {}
    if config.model == "differential":
        if config.width is not None:
            sizes["base_width"] = config.width
        if config.depth is not None:
            sizes["scales"] = config.depth
        if config.embedding_dim is not None:
            sizes["embedding_dim"] = config.embedding_dim
        return DifferentialUNetConfig(**sizes)
    if config.width is not None:
        sizes["base_width"] = config.width
    if config.depth is not None:
        sizes["levels"] = config.depth
    if config.model == "zerodose":
        return DirectUNetConfig.zero_dose(**sizes)
    return DirectUNetConfig(inputs=LOW_DOSE_DIRECT_INPUTS, **sizes)


def _manifest_fields(config: TrainConfig, network: NetworkConfig, gamma: float) -> dict[str, Any]:
    if isinstance(network, DifferentialUNetConfig):
        return differential_manifest_fields(
            name=config.name, version=config.version, gamma=gamma, spatial_divisor=network.spatial_divisor
        )
    return direct_manifest_fields(
        name=config.name, version=config.version, inputs=network.inputs, spatial_divisor=network.spatial_divisor
    )


def preprocessing_manifest(config: TrainConfig) -> ModelManifest:
    """The manifest the training samples are preprocessed for: the exported model's, before gamma and sha256."""
    return build_manifest(_manifest_fields(config, network_config(config), 1.0), _PLACEHOLDER_SHA256)


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


def _tensors(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value).to(device, non_blocking=True) for key, value in batch.items()}


def _device_of(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


def batch_loss(network: torch.nn.Module, batch: Batch, loss: LossConfig) -> torch.Tensor:
    """The loss of one batch on the network's device (the network gets the condition only when the batch has one)."""
    tensors = _tensors(batch, _device_of(network))
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


def _save_checkpoint(path: Path, state: Mapping[str, Any]) -> Path:
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


def _history_file(config: TrainConfig) -> Path:
    return config.work / "history.json"


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
    manifest = preprocessing_manifest(config)
    stream = SubjectStream([parse_data_spec(s) for s in config.data], seed=config.seed)
    cache = SampleCache(config.cache, manifest, config.variation)
    sampler = PatchSampler(stream, cache, config.patches or PatchSettings(), seed=config.seed)
    positions = sampler.positions_used(config.steps)
    if stream.endless_start is None:
        positions = range(min(len(positions), len(stream)))  # each subject of a finite pool once
    subjects = []
    for position in tqdm(positions, desc="prepare samples", unit="subject", disable=not config.progress):
        subjects.append(sampler.load(position).subject)
    for subject in (s for spec in config.val for s in parse_data_spec(spec).subjects()):
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
    manifest = preprocessing_manifest(config)
    stream = SubjectStream([parse_data_spec(s) for s in config.data], seed=config.seed)
    cache = SampleCache(config.cache, manifest, config.variation)
    patches = config.patches or PatchSettings()
    sampler = PatchSampler(stream, cache, patches, seed=config.seed)
    val_subjects = [s for spec in config.val for s in parse_data_spec(spec).subjects()]
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
            _initialize_from(network, network_config(config), Path(config.init_from))
        network = network.to(device)
        optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, betas=(0.9, 0.999))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps, eta_min=config.lr_min)
        history: dict[str, Any] = {"train": [], "val": []}
        timing = {"data": 0.0, "compute": 0.0, "steps": 0}
        devices: list[str] = []
        start = 0
        if resume is not None:
            state = load_checkpoint(resume)
            _check_resumable(state, config, Path(resume))
            network.load_state_dict(state["network"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            history = {"train": list(state["history"]["train"]), "val": list(state["history"]["val"])}
            sampler.gamma_ratios.update(state["gamma_ratios"])
            timing.update(state.get("timing", {}))
            devices = list(state.get("devices", []))
            start = int(state["step"])
            logger.info("resumed %s at step %d of %d", resume, start, config.steps)
        val = validation_batches(
            cache,
            val_subjects,
            patches,
            seed=config.seed,
            per_subject=config.val_per_subject,
            batch_size=config.batch,
        )
        history["val_baseline"] = _baseline_loss(config, val, loss_config)
        if start == 0 and val:
            history["val"].append({"step": 0, "loss": _validate(network, val, loss_config)})
        network.train()
        checkpoint = config.work / "checkpoints" / "last.pt"
        if start < config.steps:
            devices.append(_describe_device(device))
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
                    state = {
                        "format": CHECKPOINT_FORMAT,
                        "step": done,
                        "identity": config.identity(),
                        "network_config": network_config(config).to_dict(),
                        "network": network.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "history": history,
                        "gamma_ratios": dict(sampler.gamma_ratios),
                        "timing": dict(timing),
                        "devices": devices,
                    }
                    _save_checkpoint(config.work / "checkpoints" / f"step_{done:07d}.pt", state)
                    checkpoint = _save_checkpoint(config.work / "checkpoints" / "last.pt", state)
        finally:
            bar.close()
        network = network.cpu().eval()
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
        exported = _export(config, network, gamma, history, val or [sampler.batch(0, 1)])
    return TrainResult(exported, checkpoint, history, gamma, seconds_per_step)


def _initialize_from(network: torch.nn.Module, wanted: NetworkConfig, source: Path) -> None:
    """Load starting weights from a checkpoint or a model folder whose network is exactly ``wanted``.

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
    if recorded != wanted.to_dict():
        raise ValueError(
            f"--init-from {source}: its network is {recorded}, this run trains {wanted.to_dict()} "
            "(pass the same --model, --width, --depth and --embedding-dim)"
        )
    network.load_state_dict(state)
    logger.info("initialized the network from %s", source)


def _describe_start(source: Path) -> str:
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


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA, torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


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


def _export(
    config: TrainConfig, network: torch.nn.Module, gamma: float | None, history: dict[str, Any], check: list[Batch]
) -> ModelManifest:
    fields = _manifest_fields(config, network_config(config), gamma if gamma is not None else 1.0)
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
        "lr": f"{config.lr:g} -> {config.lr_min:g} (cosine)",
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
        summary["phantom_doses"] = f"{variation.dose_range[0]:g}-{variation.dose_range[1]:g}"
        held = ", ".join(f"{a}@{f:g} T" for a, f in variation.exclude_pairs)
        summary["held_out_pairs"] = held or "none"
    summary["validation"] = ", ".join(config.val) or "none"
    if config.init_from is not None:
        summary["initialized_from"] = _describe_start(Path(config.init_from))
    if data_kinds != {"phantom"}:
        summary["data"] = (
            "Trained on " + ", ".join(config.data) + " (site data and/or NIfTI subjects), preprocessed by GadSynth's "
            "own ingest, registration, brain mask and normalization code."
        )
    limits = []
    if "phantom" in data_kinds:
        grid = summary["phantom_size"]
        limits.append(
            f"Trained on phantom subjects of the `{grid}` grid only (the `small` preset has about 4 mm voxels): "
            "scanner images at about 1 mm present other structure sizes and noise texture to the network, and this "
            "model has not been evaluated on them."
        )
        doses = f"low doses {summary['phantom_doses']} of standard and " if config.model != "zerodose" else ""
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
