#!/usr/bin/env bash
# ce-lowdose-v1 1.10.0: run 1.9.0 again (from 1.8.0's weights, a gain from the condition in every block) with the
# gains learning ten times faster (issue 12).
#
# In 1.9.0 the gains' weights moved by at most 0.011 in 1,200 steps (Adam moves a weight by about the learning rate
# per step), so the gains stayed within 0.96 to 1.08 for every condition. `--gain-lr-factor 10` gives the gains
# their own Adam group at 1e-3 (cosine to 1e-6); everything else is 1.9.0's.
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1.10.0.sh prepare    # 1.8.0's samples (and 1.8.0 itself, if it is not trained here)
#   training/runs/ce-lowdose-v1-1.10.0.sh train      # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-1.10.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.10.0.sh trust      # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
start=var/train/out-1.8.0/ce-lowdose-v1
case "${1:-}" in
  prepare|train)
    [ -f "$start/model.onnx" ] || training/runs/ce-lowdose-v1-1.8.0.sh "$1" ;;
esac
INIT_FROM=$start voxel_stage 1.10.0 "${1:-}" --loss-reduction patch --voxel-scale 0.02 --condition-gain \
  --gain-lr-factor 10
