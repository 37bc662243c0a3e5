"""GadSynth networks (PyTorch, training only): the conditional differential U-Net and the direct 3D U-Net."""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from training.networks.differential import (
    CONDITION_FEATURES,
    DEFAULT_CONDITION_SCALE,
    DIFFERENTIAL_INPUTS,
    GRID_CONDITION_FEATURES,
    SEQUENCE_CONDITION_FEATURES,
    DifferentialUNet,
    DifferentialUNetConfig,
)
from training.networks.direct import (
    DIRECT_INPUTS,
    LOW_DOSE_DIRECT_INPUTS,
    ZERO_DOSE_INPUTS,
    ZERO_DOSE_T1_MAP_INPUTS,
    DirectUNet,
    DirectUNetConfig,
)

__all__ = [
    "CONDITION_FEATURES",
    "DEFAULT_CONDITION_SCALE",
    "DIFFERENTIAL_INPUTS",
    "DIRECT_INPUTS",
    "GRID_CONDITION_FEATURES",
    "LOW_DOSE_DIRECT_INPUTS",
    "SEQUENCE_CONDITION_FEATURES",
    "ZERO_DOSE_INPUTS",
    "ZERO_DOSE_T1_MAP_INPUTS",
    "DifferentialUNet",
    "DifferentialUNetConfig",
    "DirectUNet",
    "DirectUNetConfig",
    "NetworkConfig",
    "build_network",
    "config_from_dict",
    "describe_network",
]

logger = logging.getLogger(__name__)

NetworkConfig = DifferentialUNetConfig | DirectUNetConfig


def build_network(config: NetworkConfig) -> nn.Module:
    """The network a config describes.

    Raises
    ------
    TypeError
        When ``config`` is not a known network config.
    """
    if isinstance(config, DifferentialUNetConfig):
        return DifferentialUNet(config)
    if isinstance(config, DirectUNetConfig):
        return DirectUNet(config)
    raise TypeError(f"expected DifferentialUNetConfig or DirectUNetConfig; found {type(config).__name__}")


def config_from_dict(data: dict[str, Any]) -> NetworkConfig:
    """Rebuild a network config from its ``to_dict`` form (the ``kind`` key picks the class).

    Raises
    ------
    ValueError
        When ``kind`` is missing or unknown, or the keys do not fit the config.
    """
    kind = data.get("kind")
    if kind == "differential_unet":
        return DifferentialUNetConfig.from_dict(data)
    if kind == "direct_unet":
        return DirectUNetConfig.from_dict(data)
    raise ValueError(f"network config kind must be 'differential_unet' or 'direct_unet'; found {kind!r}")


def describe_network(network: nn.Module) -> tuple[int, int | None, int]:
    """(input channels, condition features or None, spatial divisor) of a GadSynth network.

    Raises
    ------
    TypeError
        When ``network`` is neither a ``DifferentialUNet`` nor a ``DirectUNet``.
    """
    if isinstance(network, DifferentialUNet):
        config = network.config
        return config.in_channels, config.condition_features, config.spatial_divisor
    if isinstance(network, DirectUNet):
        return network.config.in_channels, None, network.config.spatial_divisor
    raise TypeError(f"expected a DifferentialUNet or DirectUNet; found {type(network).__name__}")
