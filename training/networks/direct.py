"""The direct 3D U-Net of Bone et al. (seed 004): stacked input volumes in, standard-dose T1 in [0, 1] out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from training.networks.blocks import ResidualBlock, SerializableConfig, check_image, is_tracing

__all__ = [
    "DIRECT_INPUTS",
    "LOW_DOSE_DIRECT_INPUTS",
    "ZERO_DOSE_INPUTS",
    "ZERO_DOSE_T1_MAP_INPUTS",
    "DirectUNet",
    "DirectUNetConfig",
]

logger = logging.getLogger(__name__)

#: Inputs the direct network may take (role names, in the tensor order used when a subset is chosen).
DIRECT_INPUTS: tuple[str, ...] = ("t1_pre", "t1_low_dose", "flair", "t2", "adc", "t1_map")
#: The reference end-to-end configuration of 004 that is comparable to the differential model.
LOW_DOSE_DIRECT_INPUTS: tuple[str, ...] = ("t1_pre", "t1_low_dose")
#: The zero-dose variant (no gadolinium at all): T1, T2, FLAIR (ADC optional).
ZERO_DOSE_INPUTS: tuple[str, ...] = ("t1_pre", "t2", "flair")
#: The zero-dose variant that also reads the quantitative T1 map (Piening et al., METHODS.md 5).
ZERO_DOSE_T1_MAP_INPUTS: tuple[str, ...] = ("t1_pre", "t1_map", "t2", "flair")


@dataclass(frozen=True)
class DirectUNetConfig(SerializableConfig):
    """Inputs, width and depth of the direct 3D U-Net.

    Parameters
    ----------
    inputs:
        Role names of the input channels, in tensor order; any non-empty subset of ``DIRECT_INPUTS`` without
        repeats, and it must include ``t1_pre`` (the output grid).
    base_width:
        Channels of the first feature map C (16 in the paper); doubled per level.
    levels:
        Number of stride-2 down-samplings (4 in V-Net); spatial sizes must be multiples of 2**levels.
    convs_per_block:
        3x3x3 convolutions per residual block.
    negative_slope:
        Leaky ReLU slope (0.2).
    max_width:
        Optional cap on the channels of the coarse levels.
    output:
        ``sigmoid`` (Bone et al.): x_SD = sigmoid(head). ``residual``: x_SD = clip(x_PC + head, 0, 1), the network
        learns what the contrast adds to the pre-contrast T1. The zero-dose default: with a sigmoid its output
        collapsed to 0 everywhere within a few hundred steps (val loss frozen at mean(x_SD^2), 2,800 GPU steps at
        lr 3e-4), where the residual form starts at x_PC's loss and can only improve on it.
    output_max:
        Top of the output range: ``output_max * sigmoid`` or a residual clipped to [0, output_max]. 1 (the models
        before issue 12) cannot go brighter than the pre-contrast's 99.5th brain percentile; a model meant to show
        full enhancement uses the manifest's ``target_max``.
    """

    inputs: tuple[str, ...] = LOW_DOSE_DIRECT_INPUTS
    base_width: int = 16
    levels: int = 4
    convs_per_block: int = 2
    negative_slope: float = 0.2
    max_width: int | None = None
    output: Literal["sigmoid", "residual"] = "sigmoid"
    output_max: float = 1.0
    kind: str = field(default="direct_unet", init=False)

    def __post_init__(self) -> None:
        inputs = tuple(self.inputs)
        object.__setattr__(self, "inputs", inputs)
        unknown = [name for name in inputs if name not in DIRECT_INPUTS]
        if not inputs or unknown or len(set(inputs)) != len(inputs):
            raise ValueError(
                f"DirectUNetConfig.inputs must be distinct names from {list(DIRECT_INPUTS)}; found {list(inputs)}"
            )
        if "t1_pre" not in inputs:
            raise ValueError(f"DirectUNetConfig.inputs must include 't1_pre' (the output grid); found {list(inputs)}")
        for name in ("base_width", "levels", "convs_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DirectUNetConfig.{name} must be a positive integer; found {value!r}")
        if self.output not in ("sigmoid", "residual"):
            raise ValueError(f"DirectUNetConfig.output must be 'sigmoid' or 'residual'; found {self.output!r}")
        if not 1.0 <= self.output_max <= 10.0:
            raise ValueError(f"DirectUNetConfig.output_max must be within 1 to 10; found {self.output_max!r}")
        if self.max_width is not None and self.max_width < self.base_width:
            raise ValueError(f"DirectUNetConfig.max_width ({self.max_width}) must be at least base_width")

    @classmethod
    def zero_dose(cls, *, adc: bool = False, t1_map: bool = False, **kwargs: Any) -> DirectUNetConfig:
        """The zero-dose variant: T1, T2, FLAIR (the T1 map too when ``t1_map``, ADC when ``adc``) in, T1ce out
        (residual output by default)."""
        kwargs.setdefault("output", "residual")
        inputs = ZERO_DOSE_T1_MAP_INPUTS if t1_map else ZERO_DOSE_INPUTS
        return cls(inputs=inputs + (("adc",) if adc else ()), **kwargs)

    @property
    def in_channels(self) -> int:
        """Number of input channels."""
        return len(self.inputs)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per level, finest first (``levels + 1`` values)."""
        cap = self.max_width or 1 << 30
        return tuple(min(self.base_width * 2**k, cap) for k in range(self.levels + 1))

    @property
    def spatial_divisor(self) -> int:
        """Spatial sizes must be multiples of this (2**levels): stride-2 kernel-2 convolutions halve exactly."""
        return int(2**self.levels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for checkpoints); ``from_dict`` reverses it."""
        data = super().to_dict()
        if self.output == "sigmoid":
            del data["output"]  # the original form: configs (and run identities) written before the option match
        if self.output_max == 1.0:
            del data["output_max"]  # likewise
        return data


class DirectUNet(nn.Module):
    """V-Net style 3D U-Net: stride-2 kernel-2 convolutions down, transposed convolutions up, residual blocks
    (kernel 3), concatenated skips, leaky ReLU 0.2, a final 1x1x1 convolution and a sigmoid (or a residual on x_PC).

    Forward: ``image`` (N, len(inputs), D, H, W), each size a multiple of ``config.spatial_divisor``
    -> (N, 1, D, H, W) in [0, 1] (``config.output``: a sigmoid, or x_PC plus a residual, clipped). ``condition`` is
    accepted and ignored so both networks share one call.
    """

    def __init__(self, config: DirectUNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DirectUNetConfig()
        widths = config.widths
        slope = config.negative_slope
        convs = config.convs_per_block
        self.stem = nn.Sequential(nn.Conv3d(config.in_channels, widths[0], 3, padding=1), nn.LeakyReLU(slope))
        self.encoder = nn.ModuleList(ResidualBlock(w, convs=convs, negative_slope=slope) for w in widths[:-1])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv3d(widths[k], widths[k + 1], 2, stride=2), nn.LeakyReLU(slope))
            for k in range(config.levels)
        )
        self.bottom = ResidualBlock(widths[-1], convs=convs, negative_slope=slope)
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose3d(widths[k + 1], widths[k], 2, stride=2), nn.LeakyReLU(slope))
            for k in range(config.levels)
        )
        self.merge = nn.ModuleList(
            nn.Sequential(nn.Conv3d(2 * widths[k], widths[k], 3, padding=1), nn.LeakyReLU(slope))
            for k in range(config.levels)
        )
        self.decoder = nn.ModuleList(ResidualBlock(w, convs=convs, negative_slope=slope) for w in widths[:-1])
        self.head = nn.Conv3d(widths[0], 1, 1)
        if config.output == "residual":  # start as the identity x_SD = x_PC; the first gradients shape the residual
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)  # type: ignore[arg-type]  # a Conv3d built with bias=True has one

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        del condition
        check_image(image, self.config.in_channels, network="DirectUNet")
        divisor = self.config.spatial_divisor
        if not is_tracing() and any(n % divisor for n in image.shape[-3:]):
            raise ValueError(
                f"DirectUNet: spatial size must be a multiple of {divisor} (2**levels); found "
                f"{tuple(image.shape[-3:])}. Pad the volume (the manifest's spatial_divisor tells the pipeline)."
            )
        x = self.stem(image)
        skips: list[torch.Tensor] = []
        for k in range(self.config.levels):
            x = self.encoder[k](x)
            skips.append(x)
            x = self.down[k](x)
        x = self.bottom(x)
        for k in reversed(range(self.config.levels)):
            x = self.up[k](x)
            x = self.merge[k](torch.cat([x, skips[k]], dim=1))
            x = self.decoder[k](x)
        if self.config.output == "residual":
            pre = image[:, self.config.inputs.index("t1_pre")].unsqueeze(1)
            residual: torch.Tensor = torch.clamp(pre + self.head(x), 0.0, self.config.output_max)
            return residual
        out: torch.Tensor = torch.sigmoid(self.head(x))
        if self.config.output_max != 1.0:
            out = out * self.config.output_max
        return out
