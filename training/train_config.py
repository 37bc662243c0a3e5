"""What defines a training run: ``TrainConfig``, the network it trains and the manifest its samples are made for."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from operators.model_manifest import ModelManifest
from training.datasets import PatchSettings, PhantomVariation, parse_data_spec
from training.losses import HUBER_EPS, PAPER_MARGIN, LossConfig, LossKind, Reduction
from training.manifests import build_manifest, differential_manifest_fields, direct_manifest_fields
from training.networks import (
    CONDITION_FEATURES,
    DEFAULT_CONDITION_SCALE,
    GRID_CONDITION_FEATURES,
    LOW_DOSE_DIRECT_INPUTS,
    SEQUENCE_CONDITION_FEATURES,
    DifferentialUNetConfig,
    DirectUNetConfig,
    NetworkConfig,
)

__all__ = [
    "DEFAULT_WORK_ROOT",
    "MemoryFormat",
    "ModelKind",
    "TrainConfig",
    "manifest_fields",
    "network_config",
    "preprocessing_manifest",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["differential", "direct", "zerodose", "zerodose-t1map"]
MemoryFormat = Literal["auto", "contiguous", "channels_last"]
_MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
_MODEL_KINDS: tuple[str, ...] = ("differential", "direct", "zerodose", "zerodose-t1map")
#: Where runs keep checkpoints and the sample cache unless told otherwise (``/var/`` is git-ignored).
DEFAULT_WORK_ROOT = Path("var") / "train"
_PLACEHOLDER_SHA256 = "0" * 64
#: Top of the normalized standard-dose target of direct and zero-dose models (1 = the pre-contrast's 99.5th brain
#: percentile). On phantom subjects x_SD reaches 2.6-3.6 at its brain 99.9th percentile and 3.3-3.9 at its maximum
#: (vessels, sinuses, enhancing lesions): models trained before issue 12 clipped their target at 1.
DIRECT_TARGET_MAX = 4.0


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run (the fields in ``identity()`` must match to resume).

    Parameters
    ----------
    model:
        ``differential`` (Pinetz et al.), ``direct`` (Bone et al., T1 pre + low-dose), ``zerodose``
        (T1 pre, T2, FLAIR) or ``zerodose-t1map`` (T1 pre, quantitative T1 map, T2, FLAIR).
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
    huber_eps:
        Threshold of the weighted Huber loss in target units (None = the paper's 0.1): residuals above it are
        penalized linearly, which pulls a prediction toward the median of what the input allows, below it
        quadratically (toward the mean).
    loss_reduction:
        ``mean`` (every voxel of the batch counts the same), ``sum``, or ``patch`` (every patch counts the same,
        whatever its voxel size; see ``training.losses.weighted_huber_loss``).
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
    voxel_condition:
        Differential: the condition also holds the voxel size of the working grid (``GRID_CONDITION_FEATURES``).
    sequence_condition:
        Differential, with ``voxel_condition``: the condition also holds whether the T1 is inversion-prepared
        (``SEQUENCE_CONDITION_FEATURES``; 1 for MPRAGE, 0 for a gradient echo, from the series header).
    voxel_scale:
        With ``voxel_condition``: the voxel size's standardization scale in mm (None = the default, 0.1 mm;
        ``(v - 2 mm) / scale`` enters the embedding). Its weights start at zero and Adam moves a weight by about
        the learning rate per step whatever its input's size, so a smaller scale lets the voxel size change the
        embedding faster.
    condition_gain:
        Differential: the condition also scales the channels of every conditional block (FiLM; the gains start
        at 1 when the run starts from a network without them).
    gain_lr_factor:
        With ``condition_gain``: the gains' weights learn at this multiple of ``lr`` (and of the cosine schedule).
        Adam moves a weight by about its learning rate per step: in 1,200 steps at 1e-4 the gains of run 1.9.0
        moved by at most 8 % (``training/runs/ce-lowdose-v1-1.10.0.sh``).
    target_max:
        Direct and zero-dose models: top of the normalized target and of the network's output (None =
        :data:`DIRECT_TARGET_MAX`; 1 = the clipped range of the models before issue 12).
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
    memory_format:
        Layout of the 5-D activations and weights: ``channels_last`` (channels innermost) lets oneDNN's 3-D
        convolutions run their fast kernels on a CPU, where the default layout takes a slow path for the backward
        pass of narrow (8-channel) layers: 2.5 to 3 times faster training steps on this 2-core machine (``gadsynth
        bench --only train``). ``auto`` = ``channels_last`` on a CPU and ``contiguous`` on a GPU; a resumed run
        keeps the layout its checkpoint was made with, so that it stays bit-identical (checkpoints from before this
        option were ``contiguous``). Not part of ``identity()``: like ``threads``, it changes rounding, not the run.
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
    margin: int = PAPER_MARGIN
    huber_eps: float | None = None
    loss_reduction: Reduction = "mean"
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 100
    val_every: int = 100
    val_per_subject: int = 2
    width: int | None = None
    depth: int | None = None
    embedding_dim: int | None = None
    voxel_condition: bool = False
    sequence_condition: bool = False
    voxel_scale: float | None = None
    condition_gain: bool = False
    gain_lr_factor: float = 1.0
    target_max: float | None = None
    variation: PhantomVariation = field(default_factory=PhantomVariation)
    patches: PatchSettings | None = None
    work_dir: Path | None = None
    cache_dir: Path | None = None
    version: str = "0.1.0"
    overwrite: bool = False
    progress: bool = True
    init_from: Path | None = None
    device: str = "cpu"
    memory_format: MemoryFormat = "auto"

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
        phantom_sources = (t for t in (*self.data, *self.val) if t.strip().startswith("phantom:"))
        for spec in map(parse_data_spec, phantom_sources):
            try:  # a source's own draws must leave a pair the run does not hold out
                self.variation.with_overrides(spec.overrides)
            except ValueError as exc:
                raise ValueError(f"--data {spec.describe()}: {exc}") from None
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be cpu, cuda[:N] or auto; found {self.device!r}")
        if self.memory_format not in _MEMORY_FORMATS:
            raise ValueError(f"--memory-format must be one of {list(_MEMORY_FORMATS)}; found {self.memory_format!r}")
        if self.voxel_condition and self.model != "differential":
            raise ValueError(f"--voxel-condition applies to differential models; found a {self.model} model")
        if self.sequence_condition and not self.voxel_condition:
            raise ValueError("--sequence-condition extends the condition of --voxel-condition; give both")
        if self.voxel_scale is not None and not (self.voxel_condition and self.voxel_scale > 0):
            raise ValueError(f"--voxel-scale needs --voxel-condition and a positive scale; found {self.voxel_scale}")
        if self.condition_gain and self.model != "differential":
            raise ValueError(f"--condition-gain applies to differential models; found a {self.model} model")
        if self.gain_lr_factor != 1.0 and not (self.condition_gain and 0 < self.gain_lr_factor <= 1000):
            raise ValueError(
                f"--gain-lr-factor needs --condition-gain and a factor in (0, 1000]; found {self.gain_lr_factor}"
            )
        if self.target_max is not None and (self.model == "differential" or not 1.0 <= self.target_max <= 10.0):
            raise ValueError(
                f"--target-max applies to direct and zero-dose models, within 1 to 10; found {self.target_max} for "
                f"a {self.model} model"
            )
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
        return LossConfig(
            kind=kind,
            margin=self.margin,
            eps=HUBER_EPS if self.huber_eps is None else self.huber_eps,
            reduction=self.loss_reduction,
        )

    @property
    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else DEFAULT_WORK_ROOT / self.name

    @property
    def cache(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else DEFAULT_WORK_ROOT / "cache"

    def identity(self) -> dict[str, Any]:
        """What determines the training trajectory: a resumed run must agree on all of it."""
        patches = self.patches or PatchSettings()
        optional = {} if self.gain_lr_factor == 1.0 else {"gain_lr_factor": self.gain_lr_factor}
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
            **optional,  # absent at its default: the identities of runs before the option stay as they were
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
            "memory_format": self.memory_format,
        }

    def torch_memory_format(self, device: torch.device, recorded: str | None = None) -> torch.memory_format:
        """The layout to train in on ``device``; ``recorded``: the layout of the checkpoint a run resumes from."""
        wanted: str = self.memory_format
        if wanted == "auto":
            wanted = recorded or ("channels_last" if device.type == "cpu" else "contiguous")
        elif recorded is not None and recorded != wanted:
            logger.warning(
                "resuming a %s checkpoint in the %s layout: the continued run is not bit-identical to an "
                "uninterrupted one",
                recorded,
                wanted,
            )
        return torch.channels_last_3d if wanted == "channels_last" else torch.contiguous_format

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
        if config.voxel_condition:
            n = len(SEQUENCE_CONDITION_FEATURES if config.sequence_condition else GRID_CONDITION_FEATURES)
            sizes["condition_features"] = n
            if config.voxel_scale is not None:
                four = len(CONDITION_FEATURES)
                sizes["condition_scale"] = (
                    *DEFAULT_CONDITION_SCALE[:four],
                    config.voxel_scale,
                    *DEFAULT_CONDITION_SCALE[four + 1 : n],
                )
        if config.condition_gain:
            sizes["condition_gain"] = True
        return DifferentialUNetConfig(**sizes)
    if config.width is not None:
        sizes["base_width"] = config.width
    if config.depth is not None:
        sizes["levels"] = config.depth
    sizes["output_max"] = direct_target_max(config)
    if config.model in ("zerodose", "zerodose-t1map"):
        return DirectUNetConfig.zero_dose(t1_map=config.model == "zerodose-t1map", **sizes)
    return DirectUNetConfig(inputs=LOW_DOSE_DIRECT_INPUTS, **sizes)


def direct_target_max(config: TrainConfig) -> float:
    """The target range of a direct or zero-dose run (see ``TrainConfig.target_max``)."""
    return DIRECT_TARGET_MAX if config.target_max is None else float(config.target_max)


def manifest_fields(config: TrainConfig, network: NetworkConfig, gamma: float) -> dict[str, Any]:
    """Manifest fields (all but sha256) of the model a run exports, with the noise scale ``gamma``."""
    if isinstance(network, DifferentialUNetConfig):
        return differential_manifest_fields(
            name=config.name,
            version=config.version,
            gamma=gamma,
            spatial_divisor=network.spatial_divisor,
            condition_features=network.condition_names,
        )
    return direct_manifest_fields(
        name=config.name,
        version=config.version,
        inputs=network.inputs,
        spatial_divisor=network.spatial_divisor,
        target_max=network.output_max,
    )


def preprocessing_manifest(config: TrainConfig) -> ModelManifest:
    """The manifest the training samples are preprocessed for: the exported model's, before gamma and sha256."""
    return build_manifest(manifest_fields(config, network_config(config), 1.0), _PLACEHOLDER_SHA256)
