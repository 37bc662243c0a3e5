#!/usr/bin/env bash
# ce-lowdose-v1 1.10.0: run 1.9.0 again (from 1.8.0's weights, a gain from the condition in every block) with the
# gains learning ten times faster (issue 12).
#
# In 1.9.0 the gains' weights moved by at most 0.011 in 1,200 steps (Adam moves a weight by about the learning rate
# per step), so the gains stayed within 0.96 to 1.08 for every condition. `--gain-lr-factor 10` gives the gains
# their own Adam group at 1e-3 (cosine to 1e-6); everything else is 1.9.0's.
# Result (shipped as ce-lowdose-v1 1.10.0; evaluation/ce-lowdose-v1-1.10.0/SUMMARY.md; sha256 81de90d1686f): the gains
# range from 0.65 to 1.47 and differ between 1 mm and 4 mm. 4 mm set: PSNR_L 18.3 dB, c-bar 0.80, c-hat 0.996 (1.1.0
# 18.2, 0.79, 0.99), within the SE of 1.1.0 or better on 7 of 8 figures, false enhancement in normal brain 0.12 %
# (1.1.0 0.03 %). 1 mm main set: PSNR_L 23.1 dB, c-bar 0.929, c-hat 1.152, c-bar at d = 0.1 0.761 (1.5.0 0.741).
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1.10.0.sh prepare    # 1.8.0's samples (and 1.8.0 itself, if it is not trained here)
#   training/runs/ce-lowdose-v1-1.10.0.sh train      # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-1.10.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.10.0.sh trust      # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
gain_stage 1.10.0 "${1:-}" --gain-lr-factor 10
