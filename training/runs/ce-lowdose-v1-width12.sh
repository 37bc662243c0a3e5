#!/usr/bin/env bash
# ce-lowdose-v1 width 12 (exported as 1.4.0, sha256 e6a78b38f6ed; NOT RELEASED): 1.3.0 widened from 8 to 12
# channels at the finest scale, fine-tuned on 1.3.0's data (issue 12). Result (evaluation/ce-lowdose-v1-candidate-
# width12/SUMMARY.md): no better than 1.3.0. On the 1 mm main set and the 4 mm set every change is within the
# standard error (c-bar at d = 0.1: 0.644 vs 0.643); on the held-out sets it is worse by more than it in 4 of 40
# figures. 1.3.0 stays; capacity was not what held the low doses back.
#
# 1.3.0 met the 1 mm figures but c-bar at d = 0.1 (0.64) and stayed worse than 1.1.0 on the 4 mm set; it
# under-enhances at the lowest doses on its own training subjects too (lesion contrast 0.75-0.87 of the target at
# d ~ 0.1, 0.9-1.0 at d >= 0.2): a capacity limit, not only a data one. The issue expects a wider network than 8
# channels; the inference budget (1.3 x 1.1.0's 5.8 s on this CPU) allows 12 on the brain box (5.8 s, measured with
# tests/training/bench_networks.py), not 16 (8.2 s). This run keeps every choice of 1.3.0 except:
#   - the network: 12 / 24 / 48 / 96 channels instead of 8 / 16 / 32 / 64, started from 1.3.0's weights widened
#     without changing its output (training.networks.widen: the new channels start with no influence);
#   - 2,000 steps, lr 1e-4 to 1e-6 (the new channels have everything to learn; 1.3.0 used 1,200 at 5e-5).
# Same data (phantom:0-63, the same grid list, so the prepared samples of 1.3.0 are reused), patches, batch, loss,
# held-out pairs and validation. Resumable like the others:
#   training/runs/ce-lowdose-v1-width12.sh train   # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-width12.sh evaluate   # the sets of 1.3.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-width12.sh trust   # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
RUN=var/train/ce-lowdose-v1-1.4.0       # the run's folders keep the version it was exported with
OUT=var/train/out-1.4.0                 # the new model folder is $OUT/ce-lowdose-v1 until it is copied to models/
START=var/models-1.3.0                  # 1.3.0 as released: the starting point
STEPS=${STEPS:-2000}

ARGS=(
  --model differential --width 12 --out "$OUT/ce-lowdose-v1" --version "${VERSION:-1.4.0}" --work "$RUN"
  --init-from "$START/ce-lowdose-v1"
  --phantom-size full --phantom-resolutions 1,1,1,4,2,1.25,1.5,2,4
  --exclude-pair gadobenate@1.5 --exclude-pair gadobutrol@3
  --data phantom:0-63 --val phantom:5000-5001 --val phantom:5005-5005
  --patch 80 --batch 2 --steps "$STEPS" --lr 1e-4 --lr-min 1e-6 --threads 2
  --checkpoint-every 50 --val-every 100 --cache var/train/cache-mm --overwrite --no-progress
)

. training/runs/common.sh
start() { released_model 7163602 ce-lowdose-v1 "$START/ce-lowdose-v1"; }

case "${1:-}" in
  train)
    start
    resume_args "$RUN"
    $BIN/gadsynth train "${ARGS[@]}" "${RESUME[@]}" ;;
  evaluate)
    evaluate_lowdose "$OUT" "${DEST:-evaluation/ce-lowdose-v1-candidate-width12}" ;;
  trust)
    # The uncertainty map's error model fitted to this model's own errors, as for 1.3.0: 6 subjects that are neither
    # training nor test subjects, judged on the 1 mm test set. The input check's reference (ood.json) is 1.2.0's.
    calibrate_uncertainty "$OUT" "${DEST:-var/eval/uncertainty-1.4.0}" ;;
  *)
    echo "usage: $0 train|evaluate|trust" >&2; exit 2 ;;
esac
