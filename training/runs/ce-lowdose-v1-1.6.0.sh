#!/usr/bin/env bash
# ce-lowdose-v1 1.6.0: 1.5.0 told the voxel size of its grid (issue 12).
#
# 1.5.0 is on target at 1 mm (c-bar 0.94) and under-enhances at 4 mm (c-bar 0.71; 1.1.0, trained at 4 mm only,
# 0.79), although 44 % of its subjects were on the 4 mm grid: it under-enhances its own 4 mm training subjects too
# (summed predicted / true contrast 0.74-0.77 against 1.1.0's 0.77-0.82). One set of weights for every voxel size
# settles between the gains each grid needs. This run gives the condition a fifth feature, the geometric mean of
# the working grid's spacing (--voxel-condition), with zero weights from it into the embedding at the start
# (training.networks.widen.add_condition_state: the network starts as 1.5.0 exactly), and repeats 1.5.0's stage:
# its data, grids, patches, batch, held-out pairs and validation; 1,200 steps at a higher first learning rate
# (1e-4 to 1e-6) so that the new weights, which start at zero, can move.
# A first run standardized v by 1 mm (RUN and OUT then ended in -scale1): its weights from v moved to at most 0.01 and
# the 4 mm set did not move (c-bar 0.710 vs 1.5.0's 0.708, PSNR_L 16.7 vs 16.8 dB; evaluation/ce-lowdose-v1-candidate-
# 1.6.0-scale1). v is now standardized by 0.1 mm (DEFAULT_CONDITION_SCALE), ten times the effective learning rate.
# Result of this second run (not shipped; evaluation/ce-lowdose-v1-candidate-1.6.0/SUMMARY.md): the same. Weights
# from v at most 0.0098; 4 mm set c-bar 0.710, PSNR_L 16.7 dB; 1 mm main set PSNR_L 22.6 dB (1.5.0 23.0), c-bar
# 0.923 (0.935), c-bar at d = 0.1 0.739 (0.741), every figure within its SE of 1.5.0. The voxel size is not what
# the 4 mm grid lacks.
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1.6.0.sh prepare    # ~30-40 s per 1 mm subject, a few s per coarse one
#   training/runs/ce-lowdose-v1-1.6.0.sh train      # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-1.6.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.6.0.sh trust      # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
voxel_stage 1.6.0 "${1:-}"
