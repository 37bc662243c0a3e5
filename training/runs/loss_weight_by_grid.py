"""How much of the training loss each grid carries in ce-lowdose-v1 1.5.0's data mix (issue 12).

    .venv/bin/python training/runs/loss_weight_by_grid.py [STEPS]

Draws the first STEPS (default 200) training batches of runs 1.5.0 to 1.8.0 (the same data, grids, patches and
seed; samples from var/train/cache-mm, prepared by `training/runs/ce-lowdose-v1-1.7.0.sh prepare`) and sums each
patch's weighted Huber weights (brain + lambda1 + lambda2 * p) inside the 8-voxel margin, by voxel size. Under the
loss reduction `mean` a grid's share of the gradient follows its share of that weight; under `patch` its share of
the patches.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import torch

from training.datasets import PatchSettings, PhantomVariation
from training.losses import HUBER_LAMBDA1, HUBER_LAMBDA2, PAPER_MARGIN, crop_margin
from training.train import _sampler
from training.train_config import TrainConfig


def main(steps: int) -> None:
    config = TrainConfig(
        model="differential",
        out=Path("var/train/none/ce-lowdose-v1"),
        voxel_condition=True,
        data=("phantom:0-63", "phantom:200-239,field=1.5,dose=0.1-0.17", "phantom:300-339,grid=4"),
        val=("phantom:5000-5001", "phantom:5005-5005"),
        patch=80,
        batch=2,
        variation=PhantomVariation(
            size="full",
            resolutions_mm=(1, 1, 1, 4, 2, 1.25, 1.5, 2, 4),
            exclude_pairs=(("gadobenate", 1.5), ("gadobutrol", 3.0)),
        ),
        patches=PatchSettings(),
        cache_dir=Path("var/train/cache-mm"),
    )
    sampler = _sampler(config)
    weight: collections.defaultdict[float, float] = collections.defaultdict(float)
    patches: collections.Counter[float] = collections.Counter()
    for step in range(steps):
        batch = sampler.batch(step, config.batch)
        for element in range(config.batch):
            voxel_mm = float(batch["condition"][element, -1])  # the raw voxel_mm feature of the patch's subject
            w = batch["brain"][element] + HUBER_LAMBDA1 + HUBER_LAMBDA2 * batch["p"][element]
            weight[voxel_mm] += float(crop_margin(torch.from_numpy(w), PAPER_MARGIN).sum())
            patches[voxel_mm] += 1
    total_weight, total_patches = sum(weight.values()), sum(patches.values())
    lines = [
        f"{steps} steps, {total_patches} patches",
        "| voxel mm | share of the patches (the gradient under 'patch') | share of the loss weight (under 'mean') | "
        "weight per patch |",
        "| --- | --- | --- | --- |",
    ]
    for voxel_mm in sorted(patches):
        share_patches, share_weight = patches[voxel_mm] / total_patches, weight[voxel_mm] / total_weight
        per_patch = weight[voxel_mm] / patches[voxel_mm]
        lines.append(f"| {voxel_mm:g} | {share_patches:.3f} | {share_weight:.3f} | {per_patch:,.0f} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
