#!/usr/bin/env bash
# ce-lowdose-v1 1.8.0: 1.7.0's stage with the voxel size standardized by 0.02 mm instead of 0.1 (issue 12).
#
# 1.7.0 (every patch counts the same in the loss) moved the 4 mm set toward 1.1.0 (c-bar 0.755, 1.5.0 0.708, 1.1.0
# 0.794; PSNR_L 17.5 dB, 16.8, 18.2) but raised the gain at 1 mm as well (c-hat 1.17, above the 1.15 issue 12
# allows; 1.5.0 1.14): one gain for both grids, although the voxel size is in the condition. Its weights from v reached
# 0.015. Adam moves a weight by about the learning rate per step, whatever the size of its input, so the input's
# scale sets how fast v can change the embedding: this run makes v's input five times larger ((v - 2 mm) / 0.02 mm,
# -50 at 1 mm, +100 at 4 mm) and changes nothing else.
# Result (not shipped; evaluation/ce-lowdose-v1-candidate-1.8.0/SUMMARY.md): v's weights reached 0.012, so v now
# moves the embedding's first layer by up to 1.2 at 4 mm (1.7.0: 0.3), and the figures are 1.7.0's: 4 mm set PSNR_L
# 17.7 dB, c-bar 0.758, c-hat 0.925 (3 of 8 figures worse than 1.1.0 by more than the SE: c-hat and both false
# enhancements); 1 mm main set c-hat 1.161 (still above 1.15), c-bar 0.934, PSNR_L 22.8 dB, c-bar at d = 0.1 0.739.
# A per-channel bias from the condition does not give the two grids their own gains in this budget.
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1.8.0.sh prepare    # ~30-40 s per 1 mm subject, a few s per coarse one
#   training/runs/ce-lowdose-v1-1.8.0.sh train      # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-1.8.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.8.0.sh trust      # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
voxel_stage 1.8.0 "${1:-}" --loss-reduction patch --voxel-scale 0.02
