#!/usr/bin/env bash
# ce-zerodose-t1map-v1 1.0.0: the zero-dose network given the quantitative T1 map beside T1, T2 and FLAIR (issue 15).
#
# An ablation of ce-zerodose-v1 1.0.0: the same network (direct U-Net, width 8, 4 levels, residual output clipped at
# the pre-contrast's 99.5th percentile), data (small phantom subjects 0-59, two agent / field pairs held out),
# patches, batch, steps, learning rate and seed; the one difference is the T1-map input channel. ce-zerodose-v1 was
# trained on a GPU, this one on the 2-core CPU (about 1.5 s per step), so the runs are not bit-identical twins.
#   training/runs/ce-zerodose-t1map-v1.sh train     # resumable: run it again to continue from the last checkpoint
#   training/runs/ce-zerodose-t1map-v1.sh evaluate  # both zero-dose models on the same 24 test studies (with T1 maps)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
OUT=var/train/out
. training/runs/common.sh

case "${1:-}" in
  train)
    resume_args var/train/ce-zerodose-t1map-v1
    "$BIN/gadsynth" train --model zerodose-t1map --out "$OUT/ce-zerodose-t1map-v1" --version 1.0.0 \
      --steps 1600 --batch 8 --patch 64 --data phantom:0-59 --val phantom:5000-5001 \
      --lr 3e-4 --lr-min 1e-6 --seed 0 --width 8 --depth 4 --target-max 1 --threads 2 \
      --checkpoint-every 100 --val-every 64 --exclude-pair gadobenate@1.5 --exclude-pair gadobutrol@3 \
      --no-progress "${RESUME[@]}"
    ;;
  evaluate)
    for model in ce-zerodose-t1map-v1 ce-zerodose-v1; do
      "$BIN/gadsynth" evaluate --model "$model" --test-set phantom:1000-1023 --size small --t1-map \
        --out "var/eval/t1map/$model" --work-dir var/eval/t1map/work
    done
    ;;
  *)
    echo "usage: $0 train|evaluate" >&2
    exit 2
    ;;
esac
