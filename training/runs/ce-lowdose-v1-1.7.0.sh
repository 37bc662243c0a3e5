#!/usr/bin/env bash
# ce-lowdose-v1 1.7.0: every patch counts the same in the loss, whatever its grid (issue 12).
#
# 1.5.0 under-enhances at 4 mm (c-bar 0.71; 1.1.0, trained at 4 mm only, 0.79) although 44 % of its training
# subjects were on the 4 mm grid, and neither the voxel size as a condition (1.6.0, not shipped) nor more 4 mm
# subjects moved it; 400 steps on 4 mm alone did (training/runs/ce-lowdose-v1-diagnostic-4mm.sh). The reason is the
# loss's reduction: "mean" counts every voxel of the batch the same, and over the first 200 steps a 1 mm patch carried
# 209,000 of loss weight on average, a 4 mm patch (the whole study, 32,600 brain voxels) 38,000: the 4 mm grid drew
# 40 % of the patches and carried 12 % of the loss weight (training/runs/loss_weight_by_grid.py). This run repeats 1.6.0's stage exactly (1.5.0's
# weights with the voxel condition, its data, grids, patches, batch, 1,200 steps at 1e-4 to 1e-6) with
# --loss-reduction patch: each patch's weighted mean, averaged over the batch.
# Result (not shipped; evaluation/ce-lowdose-v1-candidate-1.7.0/SUMMARY.md): the 4 mm set moved toward 1.1.0 (PSNR_L
# 17.6 dB, 1.5.0 16.8, 1.1.0 18.2; c-bar 0.755, 0.708, 0.794; better than 1.5.0 on 7 of 8 figures), but the gain rose
# at 1 mm too: c-hat 1.169, above the 1.15 issue 12 allows (1.5.0 1.14); every 1 mm figure within its SE of 1.5.0.
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1.7.0.sh prepare    # ~30-40 s per 1 mm subject, a few s per coarse one
#   training/runs/ce-lowdose-v1-1.7.0.sh train      # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-1.7.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.7.0.sh trust      # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
voxel_stage 1.7.0 "${1:-}" --loss-reduction patch
