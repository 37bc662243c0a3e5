#!/usr/bin/env bash
# ce-lowdose-v1 1.12.0: the shipped 1.10.0 told its T1 sequence (issue 12).
#
# 1.10.0 left two figures open, c-hat 1.152 on the 1 mm set and false enhancement in normal brain 0.12 % on the 4 mm
# set (1.1.0 0.03 %), and both are the gradient-echo subjects': with the agent fixed, the 4 mm set gives c-hat 1.18
# on spoiled gradient echo and 0.83 on MPRAGE, FE in normal brain 0.28 % and 0.07 %
# (evaluation/ce-lowdose-v1-diagnostic-agent-*). The same low dose enhances differently on the two sequences and
# the condition did not say which one a study is. This run adds a sixth feature, q = 1 for an inversion-prepared
# T1 (ScanningSequence IR or an InversionTime in the header), 0 otherwise (--sequence-condition), with zero weights
# at the start (the network starts as 1.10.0 exactly) and q standardized to -25 / +25 so that its weights can move,
# and repeats 1.10.0's stage from 1.10.0's weights: data, grids, patches, batch, validation, 1,200 steps at 1e-4 to
# 1e-6, the gains at ten times that.
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1.12.0.sh prepare    # ~30-40 s per 1 mm subject, a few s per coarse one
#   training/runs/ce-lowdose-v1-1.12.0.sh train      # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-1.12.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.12.0.sh trust      # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
released_model cf9a25a ce-lowdose-v1 var/train/out-1.10.0/ce-lowdose-v1
FROM=1.10.0 gain_stage 1.12.0 "${1:-}" --gain-lr-factor 10 --sequence-condition
