#!/usr/bin/env bash
# ce-lowdose-v1 1.2.0: the 1.1.0 network fine-tuned on the clinical grid (issue 12).
#
# Every step is resumable: run it again and prepared samples, checkpoints and cached evaluation studies are reused.
#   training/runs/ce-lowdose-v1-1mm.sh prepare   # phantom subjects through the pipeline's preprocessing (~30 s per 1 mm subject)
#   training/runs/ce-lowdose-v1-1mm.sh train     # CPU, 2 threads; continues from the last checkpoint if there is one
#   training/runs/ce-lowdose-v1-1mm.sh evaluate  # 1 mm main set, 4 mm set, held-out sets, 1.1.0 beside it
#   STEPS=800 training/runs/ce-lowdose-v1-1mm.sh zerodose  # ce-zerodose-v1 2.0.0 at 1 mm (800 of these steps)
#   training/runs/ce-lowdose-v1-1mm.sh zerodose-evaluate      # 2.0.0 and the released 1.0.0 on the 1 mm and 4 mm sets
# The Bone-style comparison at 1 mm has its own script: training/runs/ce-lowdose-direct-v1-2.0.0.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
RUN=var/train/ce-lowdose-v1-1mm
OUT=var/train/out                       # the new model folder is $OUT/ce-lowdose-v1 until it is copied to models/
PREVIOUS=var/models-1.1.0               # 1.1.0, the starting point and the comparison (git show 'HEAD:models/...')
STEPS=${STEPS:-2000}

# 16 of the 32 training subjects at 1 mm, 4 at 1.25, 4 at 1.5, 5 at 2 and 3 at 4 mm (drawn per seed); two agent /
# field pairs stay held out as before; validation on one 1 mm, one 2 mm and one 4 mm subject. DATA is what every
# model of the 1 mm runs shares (data, patches, batch, steps, learning rate); COMMON adds ce-lowdose-v1's own flags.
DATA=(
  --phantom-size full --phantom-resolutions 1,1,1,1,1,1.25,1.5,2,4
  --exclude-pair gadobenate@1.5 --exclude-pair gadobutrol@3
  --data phantom:0-31 --val phantom:5000-5001 --val phantom:5005-5005
  --patch 80 --batch 2 --steps "$STEPS" --lr 1e-4 --lr-min 1e-6 --threads 2
  --checkpoint-every 50 --val-every 100 --cache var/train/cache-mm --overwrite --no-progress
)
COMMON=(
  --model differential --out "$OUT/ce-lowdose-v1" --version "${VERSION:-1.2.0}" --work "$RUN"
  --init-from "$PREVIOUS/ce-lowdose-v1" "${DATA[@]}"
)

. training/runs/common.sh
previous() { released_model 515cc86 ce-lowdose-v1 "$PREVIOUS/ce-lowdose-v1"; }

case "${1:-}" in
  prepare)
    previous
    $BIN/gadsynth train "${COMMON[@]}" --prepare-only ;;
  train)
    previous
    resume_args "$RUN"
    $BIN/gadsynth train "${COMMON[@]}" "${RESUME[@]}" ;;
  evaluate)
    # The new model: main set at 1 mm (12 subjects, seeds never trained on), the 4 mm set and the held-out sets
    # (4 mm, as 1.1.0's). 1.1.0 beside it on the same sets, on the whole volume as it was released.
    previous
    new=($BIN/gadsynth evaluate --model ce-lowdose-v1 --models-dir "$OUT")
    old=(env GADSYNTH_BRAIN_CROP=false $BIN/gadsynth evaluate --model ce-lowdose-v1 --models-dir "$PREVIOUS")
    full=(--test-set phantom:1000-1011 --size full --work-dir var/eval/work-full)
    small=(--test-set phantom:1000-1023 --size small --work-dir var/eval/work)
    "${new[@]}" "${full[@]}" --out evaluation/ce-lowdose-v1
    "${old[@]}" "${full[@]}" --out evaluation/ce-lowdose-v1-1.1.0/full-size-1mm --examples 1
    "${new[@]}" "${small[@]}" --out evaluation/ce-lowdose-v1/small-4mm --examples 1
    "${old[@]}" "${small[@]}" --out evaluation/ce-lowdose-v1-1.1.0 --examples 1
    held=(--work-dir var/eval/work --size small --examples 1)
    "${new[@]}" "${held[@]}" --test-set phantom:1100-1109 --dose 0.05 --out evaluation/ce-lowdose-v1/heldout-dose-0.05
    "${new[@]}" "${held[@]}" --test-set phantom:1100-1109 --dose 0.5 --out evaluation/ce-lowdose-v1/heldout-dose-0.5
    "${new[@]}" "${held[@]}" --test-set phantom:1200-1209 --agent gadobenate --field 1.5 \
      --out evaluation/ce-lowdose-v1/heldout-gadobenate-1.5T
    "${new[@]}" "${held[@]}" --test-set phantom:1200-1209 --agent gadobutrol --field 3 \
      --out evaluation/ce-lowdose-v1/heldout-gadobutrol-3T ;;
  zerodose)
    # ce-zerodose-v1 at 1 mm: its 4 mm version (as released at a5f4841) fine-tuned on the data, patches, batch and
    # learning rate of this run, with the unclipped target (--target-max 4; the 4 mm version clips at 1). Its samples
    # are prepared like the differential ones (another cache key: other channels). 2.0.0 was run with STEPS=800.
    name=ce-zerodose-v1
    work="var/train/$name-1mm"
    start="var/models-4mm/$name"
    released_model a5f4841 "$name" "$start"
    resume_args "$work"
    # a new major version: the output range changed
    $BIN/gadsynth train --model zerodose --out "$OUT/$name" --version "${VERSION:-2.0.0}" --work "$work" \
      --init-from "$start" --width 8 --target-max 4 "${DATA[@]}" "${RESUME[@]}" ;;
  zerodose-evaluate)
    # The 1 mm retrain (not released: see models/ce-zerodose-v1/MODEL_CARD.md) and the released 1.0.0, both on the
    # brain box, on the 1 mm main set and the 4 mm set; the zero-dose studies carry T2 and FLAIR (another cache key).
    zd=($BIN/gadsynth evaluate --model ce-zerodose-v1)
    full=(--test-set phantom:1000-1011 --size full --work-dir var/eval/work-full)
    small=(--test-set phantom:1000-1023 --size small --work-dir var/eval/work --examples 1)
    "${zd[@]}" --models-dir models "${full[@]}" --out evaluation/ce-zerodose-v1
    "${zd[@]}" --models-dir models "${small[@]}" --out evaluation/ce-zerodose-v1/small-4mm
    "${zd[@]}" --models-dir "$OUT" "${full[@]}" --out evaluation/ce-zerodose-v1-2.0.0
    "${zd[@]}" --models-dir "$OUT" "${small[@]}" --out evaluation/ce-zerodose-v1-2.0.0/small-4mm ;;
  *)
    echo "usage: $0 prepare|train|evaluate|zerodose|zerodose-evaluate" >&2; exit 2 ;;
esac
