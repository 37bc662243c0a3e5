#!/usr/bin/env bash
# ce-lowdose-v1 1.5.0: 1.3.0 fine-tuned with more of the two corners where it falls short (issue 12).
#
# 1.3.0 under-enhances at 1.5 T and low dose: c-bar 0.65-0.68 on every lesion of the 1 mm main set's two 1.5 T
# subjects at d = 0.1 (0.99 on the 3 T one's glioblastoma), 0.82-0.90 on its own three training subjects of that
# corner: 3 of its 64 subjects are 1.5 T below d = 0.12. Width 12 (1.4.0) and a larger Huber threshold did not
# move it (evaluation/ce-lowdose-v1-candidate-width12, evaluation/ce-lowdose-v1-diagnostic-huber-eps1). And it lost
# to 1.1.0 on the 4 mm set (c-bar 0.69 vs 0.79): 14 of its 64 subjects were on the 4 mm grid, against 124 for 1.1.0.
# This run keeps every choice of 1.3.0 (network, loss, patches, batch, held-out pairs, validation, the grid list of
# phantom:0-63, so their prepared samples are reused) and adds two sources that draw their own conditions:
#   - phantom:200-239,field=1.5,dose=0.1-0.17: 40 subjects at 1.5 T and the lowest doses, on the same grid mix;
#   - phantom:300-339,grid=4: 40 subjects on the 4 mm grid;
# 1,200 steps from 1.3.0's weights, lr 5e-5 to 1e-6 (1.3.0's own stage); 0.79 s per step, 16 minutes.
# Result (shipped; evaluation/ce-lowdose-v1-1.5.0/SUMMARY.md): 1 mm main set c-bar 0.935 (1.3.0 0.857), c-hat 1.14 (1.07),
# PSNR_L 23.0 dB (22.6), c-bar at d = 0.1 0.741 (0.643); 4 mm set c-bar 0.71 (0.69; 1.1.0 0.79): the 4 mm gap stays.
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1.5.0.sh prepare    # ~30-40 s per new 1 mm subject, a few s per coarse one
#   training/runs/ce-lowdose-v1-1.5.0.sh train      # CPU, 2 threads, channels_last; continues from the last checkpoint
#   training/runs/ce-lowdose-v1-1.5.0.sh evaluate   # the sets of 1.3.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.5.0.sh trust      # the error model (uncertainty.json) fitted to this model
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
RUN=var/train/ce-lowdose-v1-1.5.0
OUT=var/train/out-1.5.0                 # the new model folder is $OUT/ce-lowdose-v1 until it is copied to models/
START=var/models-1.3.0                  # 1.3.0 as released: the starting point
STEPS=${STEPS:-1200}

ARGS=(
  --model differential --out "$OUT/ce-lowdose-v1" --version "${VERSION:-1.5.0}" --work "$RUN"
  --init-from "$START/ce-lowdose-v1"
  --phantom-size full --phantom-resolutions 1,1,1,4,2,1.25,1.5,2,4
  --exclude-pair gadobenate@1.5 --exclude-pair gadobutrol@3
  --data phantom:0-63 --data phantom:200-239,field=1.5,dose=0.1-0.17 --data phantom:300-339,grid=4
  --val phantom:5000-5001 --val phantom:5005-5005
  --patch 80 --batch 2 --steps "$STEPS" --lr 5e-5 --lr-min 1e-6 --threads 2
  --checkpoint-every 50 --val-every 100 --cache var/train/cache-mm --overwrite --no-progress
)

. training/runs/common.sh
start() { released_model 7163602 ce-lowdose-v1 "$START/ce-lowdose-v1"; }

case "${1:-}" in
  prepare)
    start
    $BIN/gadsynth train "${ARGS[@]}" --threads 1 --prepare-only ;;
  train)
    start
    resume_args "$RUN"
    $BIN/gadsynth train "${ARGS[@]}" "${RESUME[@]}" ;;
  evaluate)
    # 1.3.0's results moved to evaluation/ce-lowdose-v1-1.3.0 when this model was released
    evaluate_lowdose "$OUT" "${DEST:-evaluation/ce-lowdose-v1}" ;;
  trust)
    # The error model fitted to this model's own errors; the input check's reference (ood.json) is 1.2.0's.
    calibrate_uncertainty "$OUT" "${DEST:-evaluation/uncertainty}" ;;
  *)
    echo "usage: $0 prepare|train|evaluate|trust" >&2; exit 2 ;;
esac
