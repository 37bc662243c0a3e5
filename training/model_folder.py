"""A model folder back to PyTorch: its recorded network config and its weights read from model.onnx."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

__all__ = ["network_from_folder", "recorded_network_config"]

logger = logging.getLogger(__name__)


def recorded_network_config(folder: Path) -> dict[str, Any] | None:
    """The network config a model folder records (``training.json`` ``network``, else the ONNX metadata).

    Returns None for a model that is no trained network (e.g. the linear baseline, a hand-built ONNX graph).
    """
    record = folder / "training.json"
    if record.is_file():
        network = json.loads(record.read_text(encoding="utf-8")).get("network")
        if isinstance(network, dict):
            return network
    import onnx

    model_file = folder / "model.onnx"
    if not model_file.is_file():
        return None
    proto = onnx.load(str(model_file), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == "network":
            value = json.loads(entry.value)
            return value if isinstance(value, dict) else None
    return None


def network_from_folder(folder: Path, model_file: str = "model.onnx") -> tuple[nn.Module, str]:
    """The PyTorch network of a model folder, built from its recorded config, in eval mode.

    Weights come from the ONNX file's initializers when every state-dict tensor is there by name and shape (the
    exporter keeps parameter names); otherwise the network keeps its random initialization.

    Returns
    -------
    network, weights
        The network and where its weights came from (``"model.onnx"`` or ``"random init (...why...)"``).

    Raises
    ------
    ValueError
        When the folder records no network config, or the config is invalid.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from training.networks import build_network, config_from_dict

    config = recorded_network_config(folder)
    if config is None:
        raise ValueError(f"model folder {folder} records no network config (training.json 'network' or ONNX metadata)")
    network = build_network(config_from_dict(config)).eval()
    state = network.state_dict()
    path = folder / model_file
    arrays = (
        {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer} if path.is_file() else {}
    )
    unmatched = [k for k, v in state.items() if k not in arrays or tuple(arrays[k].shape) != tuple(v.shape)]
    if unmatched:
        reason = f"random init ({len(unmatched)} of {len(state)} tensors not found by name in {model_file}, e.g. "
        return network, reason + f"{unmatched[0]!r})"
    network.load_state_dict({k: torch.from_numpy(np.array(arrays[k])).to(v.dtype) for k, v in state.items()})
    return network, model_file
