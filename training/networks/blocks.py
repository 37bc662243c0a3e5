"""Building blocks of the GadSynth networks: condition embedding, CRB, anti-aliased down-sampling, gated fusion,
the V-Net residual block, and the dictionary form both network configs share."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Self

import torch
from torch import nn
from torch.nn import functional

__all__ = [
    "BlurDownsample",
    "ConditionEmbedding",
    "ConditionalResidualBlock",
    "GatedFusion",
    "ResidualBlock",
    "SerializableConfig",
    "check_image",
    "is_tracing",
]

logger = logging.getLogger(__name__)

#: Binomial 5-tap smoothing kernel (Zhang 2019, "Making convolutional networks shift-invariant again").
_BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)


def is_tracing() -> bool:
    """True while ``torch.onnx.export`` traces the network (shape checks must not be baked into the graph)."""
    return bool(torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]


def check_image(image: torch.Tensor, channels: int, *, network: str) -> None:
    """Raise a clear error when ``image`` is not (N, ``channels``, D, H, W); skipped while tracing for export.

    Raises
    ------
    ValueError
        When the tensor has the wrong number of dimensions or channels.
    """
    if is_tracing():
        return
    if image.ndim != 5:
        raise ValueError(
            f"{network}: input must be (N, C, D, H, W) with 5 dimensions; found shape {tuple(image.shape)}"
        )
    if image.shape[1] != channels:
        raise ValueError(f"{network}: input must have {channels} channel(s); found {image.shape[1]}")


class SerializableConfig:
    """Base of the frozen network config dataclasses: ``to_dict`` / ``from_dict`` through JSON-ready values.

    Tuple fields become lists in ``to_dict`` and lists become tuples again in ``from_dict``; the ``kind`` field
    (``init=False``) names the network in the dictionary.
    """

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for checkpoints); ``from_dict`` reverses it."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Rebuild from ``to_dict`` output.

        Raises
        ------
        ValueError
            When ``data`` is for another network kind or has unknown keys.
        """
        kind = cls.__dataclass_fields__["kind"].default
        values = dict(data)
        found = values.pop("kind", kind)
        if found != kind:
            raise ValueError(f"expected a {kind} config; found kind {found!r}")
        known = {f for f in cls.__dataclass_fields__ if f != "kind"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
        build: Callable[..., Self] = cls
        return build(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


class ConditionEmbedding(nn.Module):
    """Two-layer MLP: condition c (N, F) -> embedding e (N, E), after a fixed affine standardization of c.

    Parameters
    ----------
    features:
        Length F of the condition vector.
    embedding_dim:
        Size E of the embedding (128 in the paper).
    offset, scale:
        c is standardized as (c - offset) / scale before the MLP (stored as buffers, so they travel with the
        weights and the ONNX graph).
    """

    def __init__(self, features: int, embedding_dim: int, *, offset: Sequence[float], scale: Sequence[float]) -> None:
        super().__init__()
        if len(offset) != features or len(scale) != features:
            raise ValueError(
                f"condition offset and scale need {features} value(s) each; found {len(offset)} and {len(scale)}"
            )
        if any(s <= 0 for s in scale):
            raise ValueError(f"condition scale values must be positive; found {list(scale)}")
        self.offset: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("offset", torch.tensor(list(offset), dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(list(scale), dtype=torch.float32))
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        if not is_tracing() and (condition.ndim != 2 or condition.shape[1] != self.features):
            raise ValueError(
                f"condition must be (N, {self.features}) = [dose, B, r1, sigma(, voxel_mm(, inversion_prepared))] "
                "per sample; "
                f"found shape {tuple(condition.shape)}"
            )
        embedding: torch.Tensor = self.mlp((condition - self.offset) / self.scale)
        return embedding


class ConditionalResidualBlock(nn.Module):
    """Residual block with the embedding added as a per-channel bias (Ho et al. 2020, without normalization).

    x + conv2(SiLU(conv1(SiLU(x)) + P e)), 3x3x3 convolutions, P a learned projection of the embedding. With
    ``gain``, the embedding also scales each channel (FiLM, Perez et al. 2018):
    x + conv2(SiLU(conv1(SiLU(x)) * (1 + G e) + P e)), with G initialized to zero, so that a block with a gain
    starts computing exactly what the block without it computes.
    """

    def __init__(self, channels: int, embedding_dim: int, *, gain: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.project = nn.Linear(embedding_dim, channels)
        self.gain: nn.Linear | None = None
        if gain:
            self.gain = nn.Linear(embedding_dim, channels)
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """``embedding`` is the activated embedding SiLU(e), shape (N, E)."""
        h = self.conv1(self.act(x))
        if self.gain is not None:
            h = h * (1.0 + self.gain(embedding)[:, :, None, None, None])
        h = h + self.project(embedding)[:, :, None, None, None]
        h = self.conv2(self.act(h))
        out: torch.Tensor = x + h
        return out


class BlurDownsample(nn.Module):
    """Fixed 5x5x5 binomial smoothing with stride 2 (separable, depthwise, zero padding): D -> ceil(D / 2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor(_BINOMIAL_5, dtype=torch.float32)
        taps = taps / taps.sum()
        self.channels = channels
        self.kernel_d: torch.Tensor
        self.kernel_h: torch.Tensor
        self.kernel_w: torch.Tensor
        for axis, name in enumerate(("kernel_d", "kernel_h", "kernel_w")):
            shape = [channels, 1, 1, 1, 1]
            shape[2 + axis] = taps.numel()
            self.register_buffer(name, taps.reshape(shape[2:]).expand(shape).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.conv3d(x, self.kernel_d, stride=(2, 1, 1), padding=(2, 0, 0), groups=self.channels)
        x = functional.conv3d(x, self.kernel_h, stride=(1, 2, 1), padding=(0, 2, 0), groups=self.channels)
        return functional.conv3d(x, self.kernel_w, stride=(1, 1, 2), padding=(0, 0, 2), groups=self.channels)


class GatedFusion(nn.Module):
    """Gated upsampling fusion: f = sigmoid(W1~ [fu; fs]) * W1 fu + sigmoid(W2~ [fu; fs]) * W2 fs (1x1x1 convs).

    W1~ and W2~ are computed by one 1x1x1 convolution 2m -> 2m whose output halves are the two gates.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gates = nn.Conv3d(2 * channels, 2 * channels, 1)
        self.up = nn.Conv3d(channels, channels, 1)
        self.skip = nn.Conv3d(channels, channels, 1)

    def gate_values(self, upsampled: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two gates sigmoid(W1~ [fu; fs]) and sigmoid(W2~ [fu; fs]), each (N, m, D, H, W) in (0, 1)."""
        gates = torch.sigmoid(self.gates(torch.cat([upsampled, skip], dim=1)))
        gate_up, gate_skip = torch.chunk(gates, 2, dim=1)
        return gate_up, gate_skip

    def forward(self, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        gate_up, gate_skip = self.gate_values(upsampled, skip)
        fused: torch.Tensor = gate_up * self.up(upsampled) + gate_skip * self.skip(skip)
        return fused


class ResidualBlock(nn.Module):
    """V-Net style residual block: ``convs`` 3x3x3 convolutions with leaky ReLU, plus the identity."""

    def __init__(self, channels: int, *, convs: int = 2, negative_slope: float = 0.2) -> None:
        super().__init__()
        if convs < 1:
            raise ValueError(f"a residual block needs at least one convolution; found convs={convs}")
        layers: list[nn.Module] = []
        for index in range(convs):
            layers.append(nn.Conv3d(channels, channels, 3, padding=1))
            if index < convs - 1:
                layers.append(nn.LeakyReLU(negative_slope))
        self.body = nn.Sequential(*layers)
        self.act = nn.LeakyReLU(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(x + self.body(x))
        return out
