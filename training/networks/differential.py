"""The conditional differential U-Net of Pinetz et al. (seed 003): low-dose subtraction in, contrast signal out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional

from training.networks.blocks import (
    BlurDownsample,
    ConditionalResidualBlock,
    ConditionEmbedding,
    GatedFusion,
    SerializableConfig,
    check_image,
)

__all__ = [
    "CONDITION_FEATURES",
    "DIFFERENTIAL_INPUTS",
    "GRID_CONDITION_FEATURES",
    "SEQUENCE_CONDITION_FEATURES",
    "DifferentialUNet",
    "DifferentialUNetConfig",
]

logger = logging.getLogger(__name__)

#: Input channels in tensor order (names as in the model manifest): noise-normalized low-dose subtraction z_LD,
#: low-dose image x_LD, local standard deviation s_LD of the subtraction.
DIFFERENTIAL_INPUTS: tuple[str, ...] = ("z_ld", "x_ld", "s_ld")
#: Condition vector in order (names as in the model manifest): relative dose d, field strength B (T),
#: relaxivity r1 (1/(mM*s)), low-dose noise level sigma_LD (normalized intensity).
CONDITION_FEATURES: tuple[str, ...] = ("dose", "field_strength_t", "r1", "sigma")
#: The condition of a network that also knows its grid: [d, B, r1, sigma] and the voxel size v (mm, the geometric
#: mean of the working grid's spacing). One set of weights for 1 mm and 4 mm voxels settles between the gains each
#: grid needs (issue 12); with v the embedding can shift every block per grid.
GRID_CONDITION_FEATURES: tuple[str, ...] = (*CONDITION_FEATURES, "voxel_mm")
#: The condition of a network that also knows its T1 sequence: [d, B, r1, sigma, v] and q, 1 for an
#: inversion-prepared T1 (MPRAGE), 0 for a spoiled gradient echo. The same low dose enhances differently on the two:
#: ce-lowdose-v1 1.10.0, without q, over-enhanced on gradient echo and under-enhanced on MPRAGE (4 mm c-hat 1.18 vs
#: 0.83 with the agent fixed; issue 12).
SEQUENCE_CONDITION_FEATURES: tuple[str, ...] = (*GRID_CONDITION_FEATURES, "inversion_prepared")
#: Condition lengths a manifest can name, shortest first.
_CONDITIONS: tuple[tuple[str, ...], ...] = (CONDITION_FEATURES, GRID_CONDITION_FEATURES, SEQUENCE_CONDITION_FEATURES)
#: Fixed standardization of [d, B, r1, sigma, v] before the MLP: typical centre and spread of each feature, except
#: v's scale: 0.1 mm, ten times below its spread, so that v (-10 at 1 mm, +20 at 4 mm) moves the embedding ten times
#: faster per step. A feature added to a trained network starts with zero weights, and Adam moves each weight by
#: about the learning rate per step: at a scale of 1 mm, 1,200 fine-tuning steps moved v's weights to at most 0.01
#: (the trained features' reach 0.55) and changed nothing (training/runs/ce-lowdose-v1-1.6.0.sh). q is standardized
#: to -25 / +25 for the same reason (scale 0.02, as the voxel size of the runs from 1.8.0 on).
DEFAULT_CONDITION_OFFSET: tuple[float, ...] = (0.2, 2.25, 4.0, 0.03, 2.0, 0.5)
DEFAULT_CONDITION_SCALE: tuple[float, ...] = (0.1, 0.75, 0.5, 0.02, 0.1, 0.02)
#: Initialization of the output convolution: weights scaled down, bias positive (in units of sigma_LD-normalized
#: intensity), so that the output ReLU passes gradient everywhere when training starts.
HEAD_WEIGHT_SCALE = 0.1
HEAD_BIAS = 0.05


@dataclass(frozen=True)
class DifferentialUNetConfig(SerializableConfig):
    """Width and depth of the conditional differential U-Net (defaults chosen for the 15 s CPU budget).

    Parameters
    ----------
    in_channels:
        Input channels (3: z_LD, x_LD, s_LD).
    condition_features:
        Length of the condition vector: 4 (d, B, r1, sigma), 5 (and the voxel size, ``GRID_CONDITION_FEATURES``) or
        6 (and the inversion preparation, ``SEQUENCE_CONDITION_FEATURES``).
    base_width:
        Channels at the finest scale; doubled per scale (the paper uses 32).
    scales:
        Number of resolution levels (4 in the paper): ``scales - 1`` down-samplings.
    blocks_per_scale:
        Conditional residual blocks per scale, before the down-sampling and again after the up-sampling (2 in the
        paper); one integer for every scale, or one per scale (finest first).
    finest_blocks:
        If set, overrides the block count at the finest scale (default 1: the full-resolution scale dominates the
        run time, and one CRB there instead of two saves about a quarter of it); None keeps ``blocks_per_scale``.
    embedding_dim:
        Size of the condition embedding (128).
    max_width:
        Optional cap on the channels of the coarse scales.
    antialias:
        Down-sample with a fixed 5x5x5 binomial smoothing at stride 2 followed by a learned 3x3x3 convolution
        (the paper's supplement); ``False`` uses a plain learned 3x3x3 convolution with stride 2.
    input_pyramid:
        Feed the down-scaled input images into every coarser scale as well (the paper's figure 9).
    condition_offset, condition_scale:
        Fixed standardization (c - offset) / scale of the condition; None = defaults for [d, B, r1, sigma],
        [d, B, r1, sigma, v] and [d, B, r1, sigma, v, q] (0 / 1 for any other length).
    condition_gain:
        The condition also scales every channel of every conditional residual block (FiLM), besides adding a
        bias: with the voxel size in the condition, each grid can get its own gain (issue 12). False keeps the
        bias-only blocks of every model before 1.9.0 (and their config's dictionary form).
    """

    in_channels: int = 3
    condition_features: int = 4
    base_width: int = 8
    scales: int = 4
    blocks_per_scale: int | tuple[int, ...] = 2
    finest_blocks: int | None = 1
    embedding_dim: int = 128
    max_width: int | None = None
    antialias: bool = True
    input_pyramid: bool = True
    condition_offset: tuple[float, ...] | None = None
    condition_scale: tuple[float, ...] | None = None
    condition_gain: bool = False
    kind: str = field(default="differential_unet", init=False)

    def __post_init__(self) -> None:
        for name in ("in_channels", "condition_features", "base_width", "scales", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DifferentialUNetConfig.{name} must be a positive integer; found {value!r}")
        blocks = self.blocks_per_scale
        if not isinstance(blocks, int):
            blocks = tuple(blocks)
            object.__setattr__(self, "blocks_per_scale", blocks)
            if len(blocks) != self.scales or any(not isinstance(b, int) or b < 1 for b in blocks):
                raise ValueError(
                    f"DifferentialUNetConfig.blocks_per_scale must be a positive integer or {self.scales} of them "
                    f"(one per scale); found {blocks!r}"
                )
        elif blocks < 1:
            raise ValueError(f"DifferentialUNetConfig.blocks_per_scale must be at least 1; found {blocks}")
        if self.finest_blocks is not None and self.finest_blocks < 1:
            raise ValueError(f"DifferentialUNetConfig.finest_blocks must be at least 1; found {self.finest_blocks}")
        if self.max_width is not None and self.max_width < self.base_width:
            raise ValueError(
                f"DifferentialUNetConfig.max_width ({self.max_width}) must be at least base_width ({self.base_width})"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for checkpoints); ``from_dict`` reverses it."""
        data = super().to_dict()
        if not self.condition_gain:
            del data["condition_gain"]  # the original form: configs (and run identities) written before the option
        return data

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per scale, finest first."""
        cap = self.max_width or 1 << 30
        return tuple(min(self.base_width * 2**k, cap) for k in range(self.scales))

    @property
    def blocks(self) -> tuple[int, ...]:
        """Conditional residual blocks per scale, finest first (each on the way down and again on the way up)."""
        if isinstance(self.blocks_per_scale, int):
            blocks = (self.blocks_per_scale,) * self.scales
        else:
            blocks = tuple(self.blocks_per_scale)
        if self.finest_blocks is not None:
            blocks = (self.finest_blocks, *blocks[1:])
        return blocks

    @property
    def spatial_divisor(self) -> int:
        """Sizes that are multiples of this down-sample exactly by 2 at every scale (any size is accepted)."""
        return int(2 ** (self.scales - 1))

    @property
    def condition_names(self) -> tuple[str, ...]:
        """Names of the condition features in order (as in the model manifest).

        Raises
        ------
        ValueError
            When the length is not 4, 5 or 6: no manifest names such a condition.
        """
        for names in _CONDITIONS:
            if len(names) == self.condition_features:
                return names
        raise ValueError(
            f"a differential U-Net's condition is one of {[list(names) for names in _CONDITIONS]}; "
            f"this one has {self.condition_features} feature(s)"
        )

    def resolved_condition_standardization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(offset, scale) actually used for the condition."""
        n = self.condition_features
        known = n in {len(names) for names in _CONDITIONS}
        default_offset = DEFAULT_CONDITION_OFFSET[:n] if known else (0.0,) * n
        default_scale = DEFAULT_CONDITION_SCALE[:n] if known else (1.0,) * n
        offset = self.condition_offset if self.condition_offset is not None else default_offset
        scale = self.condition_scale if self.condition_scale is not None else default_scale
        return tuple(float(v) for v in offset), tuple(float(v) for v in scale)

    @classmethod
    def paper(cls, **kwargs: Any) -> DifferentialUNetConfig:
        """The paper's size: 32 channels at the finest scale, two CRBs at every scale (too slow for a 2-core CPU)."""
        return cls(**{"base_width": 32, "blocks_per_scale": 2, "finest_blocks": None, **kwargs})


class _Down(nn.Module):
    def __init__(self, in_width: int, out_width: int, *, antialias: bool) -> None:
        super().__init__()
        self.blur: nn.Module | None = BlurDownsample(in_width) if antialias else None
        stride = 1 if antialias else 2
        self.conv = nn.Conv3d(in_width, out_width, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blur is not None:
            x = self.blur(x)
        out: torch.Tensor = self.conv(x)
        return out


class DifferentialUNet(nn.Module):
    """Conditional U-Net predicting the noise-free contrast signal y_hat >= 0 from (z_LD, x_LD, s_LD) and c.

    Local operators only (3x3x3 and 1x1x1 convolutions, trilinear interpolation), SiLU, no normalization layers,
    ``blocks_per_scale`` conditional residual blocks per scale on the way down and again on the way up, gated
    upsampling fusion with the skip connection, ReLU at the output. The output convolution is initialized with
    small weights and a positive bias so that the ReLU starts active (a ReLU output that starts negative everywhere
    never receives a gradient).

    Any spatial size is accepted (up-sampling matches the skip's size); multiples of ``config.spatial_divisor``
    (8 with 4 scales) down-sample exactly, which is what the manifest asks the pipeline to pad to.

    Forward: ``image`` (N, in_channels, D, H, W), ``condition`` (N, condition_features) -> (N, 1, D, H, W).
    """

    def __init__(self, config: DifferentialUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DifferentialUNetConfig()
        widths = config.widths
        offset, scale = config.resolved_condition_standardization()
        self.embedding = ConditionEmbedding(config.condition_features, config.embedding_dim, offset=offset, scale=scale)
        self.act = nn.SiLU()
        self.stem = nn.Conv3d(config.in_channels, widths[0], 3, padding=1)
        self.encoder = nn.ModuleList(
            nn.ModuleList(
                ConditionalResidualBlock(w, config.embedding_dim, gain=config.condition_gain) for _ in range(n)
            )
            for w, n in zip(widths, config.blocks, strict=True)
        )
        self.down = nn.ModuleList(
            _Down(widths[k], widths[k + 1], antialias=config.antialias) for k in range(config.scales - 1)
        )
        self.input_blur = BlurDownsample(config.in_channels) if config.input_pyramid else None
        self.input_convs = (
            nn.ModuleList(nn.Conv3d(config.in_channels, w, 3, padding=1) for w in widths[1:])
            if config.input_pyramid
            else None
        )
        self.reduce = nn.ModuleList(nn.Conv3d(widths[k + 1], widths[k], 1) for k in range(config.scales - 1))
        self.fusion = nn.ModuleList(GatedFusion(widths[k]) for k in range(config.scales - 1))
        self.decoder = nn.ModuleList(
            nn.ModuleList(
                ConditionalResidualBlock(widths[k], config.embedding_dim, gain=config.condition_gain)
                for _ in range(config.blocks[k])
            )
            for k in range(config.scales - 1)
        )
        self.head = nn.Conv3d(widths[0], 1, 3, padding=1)
        with torch.no_grad():  # start with the output ReLU active everywhere, else a dead start gets no gradient
            self.head.weight.mul_(HEAD_WEIGHT_SCALE)
            if self.head.bias is not None:
                self.head.bias.fill_(HEAD_BIAS)

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        check_image(image, self.config.in_channels, network="DifferentialUNet")
        embedding = self.act(self.embedding(condition))
        pyramid = image
        x = self.stem(image)
        skips: list[torch.Tensor] = []
        for k, blocks in enumerate(self.encoder):
            if k > 0:
                x = self.down[k - 1](x)
                if self.input_blur is not None and self.input_convs is not None:
                    pyramid = self.input_blur(pyramid)
                    x = x + self.input_convs[k - 1](pyramid)
            for block in cast(nn.ModuleList, blocks):
                x = block(x, embedding)
            skips.append(x)
        for k in reversed(range(self.config.scales - 1)):
            skip = skips[k]
            up = functional.interpolate(self.reduce[k](x), size=skip.shape[-3:], mode="trilinear", align_corners=False)
            x = self.fusion[k](up, skip)
            for block in cast(nn.ModuleList, self.decoder[k]):
                x = block(x, embedding)
        out: torch.Tensor = functional.relu(self.head(self.act(x)))
        return out
