#!/usr/bin/env bash
# ce-lowdose-direct-v1 2.0.0: the Bone-style comparison model with exactly the budget of ce-lowdose-v1 (issue 12).
#
# ce-lowdose-v1 1.5.0 is 1.0.0 (3,500 steps, as this model's 1.0.0) followed by four CPU stages. This model starts
# from its own 1.0.0 (as released at a5f4841) and gets the same four stages, with the same data, grids, patches,
# batch, steps and learning rates; only its own loss (l2) and network (direct U-Net, width 8) differ:
#   a  (ce-lowdose-v1 1.1.0) 1,400 steps on phantom:0-123, small grid (~4 mm), 2 patches of 64^3, lr 1e-4 -> 1e-6
#   b  (ce-lowdose-v1 1.2.0) 2,000 steps on phantom:0-31, grid mix, 2 patches of 80^3, lr 1e-4 -> 1e-6
#   c  (ce-lowdose-v1 1.3.0) 1,200 steps on phantom:0-63, grid mix with twice the coarse share, lr 5e-5 -> 1e-6
#   d  (ce-lowdose-v1 1.5.0) 1,200 steps on c's data plus 40 subjects at 1.5 T and d 0.1-0.17 and 40 at 4 mm, lr 5e-5
# ce-lowdose-v1 1.10.0 is 1.5.0 followed by two more stages of 1,200 steps on d's data, grids, patches and batch at
# lr 1e-4 -> 1e-6 with the patch-balanced loss (1.8.0, then 1.10.0). Their other changes (the voxel size in the
# condition, the gains) have no counterpart in the direct U-Net, which takes no condition; for l2 every voxel
# weighs 1, so the patch-balanced loss equals the mean. Stages e and f repeat those two stages for this model
# (2.1.0: exactly 1.10.0's budget):
#   e  (ce-lowdose-v1 1.8.0)  1,200 steps on d's data, lr 1e-4 -> 1e-6, --loss-reduction patch
#   f  (ce-lowdose-v1 1.10.0) the same again from e
# ce-lowdose-v1 1.12.0 is 1.10.0 with one more such stage (the T1 sequence added to its condition, which again has
# no counterpart here); stage g repeats it for this model (2.2.0: exactly 1.12.0's budget):
#   g  (ce-lowdose-v1 1.12.0) the same again from f (released as 2.2.0, sha256 728d21977146, kept in git)
# The target is the unclipped one (--target-max 4; 1.0.0 clipped x_SD at the pre-contrast's p99.5), so the output
# range changes: a new major version. Every stage is resumable: run it again and it continues from its last
# checkpoint (every 50 steps), reusing prepared samples; after its last step it only exports its folder again.
#   training/runs/ce-lowdose-direct-v1-2.0.0.sh a|b|...|g    # CPU, 2 threads, channels_last: 0.41-0.66 s/step (a), 0.7-1.5 (b-f), by machine
#   training/runs/ce-lowdose-direct-v1-2.0.0.sh all          # a to g, each continued where it stopped (done: skipped)
#   training/runs/ce-lowdose-direct-v1-2.0.0.sh keep d       # d's model folder into git (KEPT), for a later machine
#   training/runs/ce-lowdose-direct-v1-2.0.0.sh prepare [d]  # all stages' (or d's) samples first, two processes
#   training/runs/ce-lowdose-direct-v1-2.0.0.sh evaluate     # STAGE's model (default g: 2.2.0), main and 4 mm sets
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
NAME=ce-lowdose-direct-v1
START=var/models-4mm/$NAME              # 1.0.0 as released
STAGES=var/train/$NAME-2.0.0            # STAGES/{a,b,c}: work folders; STAGES/out-{a,b,c}/NAME: their model folders
# A finished stage's model folder can be kept in git (the `keep` command): a run on another machine (or after this
# one's var/ is lost) restores it and goes on with the next stage, as `all` does on one machine. Not in the image.
KEPT=training/runs/stages/$NAME-2.0.0

. training/runs/common.sh

COMMON=(--model direct --width 8 --target-max 4 --threads 2 --checkpoint-every 50 --val-every 100 --overwrite
        --no-progress --exclude-pair gadobenate@1.5 --exclude-pair gadobutrol@3)
MM=(--phantom-size full --val phantom:5000-5001 --val phantom:5005-5005 --patch 80 --batch 2 --cache var/train/cache-mm)

# c's grid mix; d's data, grids and steps (stages e and f keep them): c's subjects and two sources of their own
CD=("${MM[@]}" --phantom-resolutions 1,1,1,4,2,1.25,1.5,2,4)
D_OWN=(--data phantom:200-239,field=1.5,dose=0.1-0.17 --data phantom:300-339,grid=4)
D=("${CD[@]}" --data phantom:0-63 "${D_OWN[@]}" --steps 1200 --lr-min 1e-6)

# restore STAGE: STAGE's model folder from the copy kept in git when this machine does not have one
restore() {
  local out=$STAGES/out-$1/$NAME
  if [ ! -f "$out/model.onnx" ] && [ -f "$KEPT/out-$1/model.onnx" ]; then mkdir -p "$out"; cp "$KEPT/out-$1"/* "$out"/; fi
}

stage() {  # stage NAME FROM VERSION ARGS...: train stage NAME from the model folder FROM
  local name=$1 from=$2 version=$3; shift 3
  if [ "$from" != "$START" ]; then local prev=${from#"$STAGES"/out-}; restore "${prev%%/*}"; fi
  resume_args "$STAGES/$name"
  $BIN/gadsynth train "${COMMON[@]}" --out "$STAGES/out-$name/$NAME" --version "$version" --work "$STAGES/$name" \
    --init-from "$from" "$@" "${RESUME[@]}"
}

case "${1:-}" in
  a)
    released_model a5f4841 "$NAME" "$START"
    stage a "$START" 2.0.0-a --phantom-size small --data phantom:0-123 --val phantom:5000-5001 --patch 64 --batch 2 \
      --steps 1400 --lr 1e-4 --lr-min 1e-6 --cache var/train/cache ;;
  b)
    stage b "$STAGES/out-a/$NAME" 2.0.0-b "${MM[@]}" --phantom-resolutions 1,1,1,1,1,1.25,1.5,2,4 \
      --data phantom:0-31 --steps 2000 --lr 1e-4 --lr-min 1e-6 ;;
  c)
    stage c "$STAGES/out-b/$NAME" 2.0.0-c "${CD[@]}" --data phantom:0-63 --steps 1200 --lr 5e-5 --lr-min 1e-6 ;;
  d)
    stage d "$STAGES/out-c/$NAME" 2.0.0 "${D[@]}" --lr 5e-5 ;;
  e)
    stage e "$STAGES/out-d/$NAME" 2.1.0-e "${D[@]}" --lr 1e-4 --loss-reduction patch ;;
  f)
    stage f "$STAGES/out-e/$NAME" 2.1.0 "${D[@]}" --lr 1e-4 --loss-reduction patch ;;
  g)
    released_model 1e80983 "$NAME" "$STAGES/out-f/$NAME"  # f as released (2.1.0) where this machine did not train it
    stage g "$STAGES/out-f/$NAME" 2.2.0 "${D[@]}" --lr 1e-4 --loss-reduction patch ;;
  all)
    kept=""  # the last stage kept in git and not trained here: it and the stages before it are skipped
    for s in a b c d e f g; do
      restore $s
      if [ -f "$STAGES/out-$s/$NAME/model.onnx" ] && [ ! -d "$STAGES/$s/checkpoints" ]; then kept=$s; fi
    done
    for s in a b c d e f g; do
      if [ -n "$kept" ] && [[ ! "$s" > "$kept" ]]; then echo "stage $s: done (stage $kept is kept in git)"; continue; fi
      "$0" "$s"
    done ;;
  keep)
    [ -f "$STAGES/out-${2:-}/$NAME/model.onnx" ] || { echo "no finished stage '${2:-}' in $STAGES" >&2; exit 2; }
    rm -rf "$KEPT/out-$2" && mkdir -p "$KEPT/out-$2" && cp "$STAGES/out-$2/$NAME"/* "$KEPT/out-$2"/ ;;
  prepare)
    # the samples of all stages (e and f use d's; `prepare d`: only those), one process per core, without overlap;
    # each subject's grid is drawn from its own seed, so the split does not change which samples the stages get.
    prep() { $BIN/gadsynth train "${COMMON[@]}" --out "$STAGES/prepare/$NAME" --work "$STAGES/prepare" "$@" \
               --threads 1 --prepare-only; }
    only=${2:-}
    ([ "$only" = d ] || prep --phantom-size small --data phantom:0-123 --val phantom:5000-5001 --cache var/train/cache
     prep "${CD[@]}" --data phantom:0-63) &
    ([ "$only" = d ] || prep "${MM[@]}" --phantom-resolutions 1,1,1,1,1,1.25,1.5,2,4 --data phantom:0-31
     prep "${CD[@]}" "${D_OWN[@]}") &
    wait ;;
  evaluate)
    restore "${STAGE:-g}"  # from the copy kept in git when this machine did not train it
    new=($BIN/gadsynth evaluate --model "$NAME" --models-dir "$STAGES/out-${STAGE:-g}")
    dest=${DEST:-evaluation/$NAME}
    "${new[@]}" --test-set phantom:1000-1011 --size full --work-dir var/eval/work-full --out "$dest"
    "${new[@]}" --test-set phantom:1000-1023 --size small --work-dir var/eval/work --examples 1 --out "$dest/small-4mm" ;;
  *)
    echo "usage: $0 a|b|c|d|e|f|g|all|keep STAGE|prepare|evaluate" >&2; exit 2 ;;
esac
