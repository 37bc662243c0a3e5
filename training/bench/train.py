"""Benchmark: one training step (forward, backward, Adam) of each shipped network, in both memory layouts.

PyTorch's CPU 3-D convolutions (oneDNN) take a slow path for the backward pass of narrow layers in the default
(contiguous, channels-first) layout; in ``channels_last_3d`` they use the fast kernels. ``gadsynth train`` trains in
``channels_last`` on a CPU by default (``--memory-format``); this bench measures what that buys, on the networks as
shipped (their ``training.json``), on random patches of the size the 1 mm runs train on.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

__all__ = ["LAYOUTS", "bench_train"]

#: The layouts timed, by their ``--memory-format`` names.
LAYOUTS = ("contiguous", "channels_last")
#: Networks timed: the shipped low-dose model, the Bone-style comparison and the zero-dose model.
NETWORKS = ("ce-lowdose-v1", "ce-lowdose-direct-v1", "ce-zerodose-v1")
#: A condition inside the training range (dose, field strength T, r1, sigma, and for networks that take them the
#: voxel size in mm and the inversion preparation, 1 = MPRAGE).
_CONDITION = (0.2, 3.0, 4.5, 0.05, 1.0, 1.0)


def _step_seconds(config: Any, layout: str, *, patch: int, batch: int, repeats: int) -> tuple[float, float]:
    """Median seconds of ``repeats`` training steps after one warm-up step; and the first step's loss."""
    import torch

    from training.networks import DifferentialUNetConfig, build_network

    memory_format = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    network = build_network(config).train().to(memory_format=memory_format)  # type: ignore[call-overload]  # stubs
    generator = torch.Generator().manual_seed(1)
    image = torch.rand((batch, config.in_channels, patch, patch, patch), generator=generator)
    image = image.contiguous(memory_format=memory_format)
    condition = None
    if isinstance(config, DifferentialUNetConfig):
        condition = torch.tensor([_CONDITION[: config.condition_features]] * batch)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    times: list[float] = []
    first = float("nan")
    for index in range(repeats + 1):
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = network(image, condition).square().mean()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if index == 0:
            first = float(loss.detach())
        else:
            times.append(time.perf_counter() - began)
    return statistics.median(times), first


def bench_train(
    models_dir: Path, *, patch: int = 80, batch: int = 2, repeats: int = 3, threads: int | None = None
) -> dict[str, Any]:
    """Seconds per training step of each network in ``models_dir`` (of :data:`NETWORKS`) in both layouts.

    Returns, per network: the median step in each layout, ``speedup`` (contiguous over channels_last) and the
    relative difference of the first step's loss (the layouts must compute the same thing).
    """
    import torch

    from training.networks import config_from_dict

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or os.cpu_count() or 1)
    results: dict[str, Any] = {
        "patch": patch,
        "batch": batch,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        for name in NETWORKS:
            record = models_dir / name / "training.json"
            if not record.is_file():
                continue
            config = config_from_dict(json.loads(record.read_text())["network"])
            seconds, losses = {}, {}
            for layout in LAYOUTS:
                seconds[layout], losses[layout] = _step_seconds(
                    config, layout, patch=patch, batch=batch, repeats=repeats
                )
            contiguous, channels_last = seconds["contiguous"], seconds["channels_last"]
            results[name] = {
                "contiguous_s": round(contiguous, 3),
                "channels_last_s": round(channels_last, 3),
                "speedup": round(contiguous / channels_last, 2),
                "first_loss_rel_difference": abs(losses["contiguous"] - losses["channels_last"])
                / max(abs(losses["contiguous"]), 1e-12),
            }
    finally:
        torch.set_num_threads(previous)
    return results
