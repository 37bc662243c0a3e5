# Sourced by the run scripts.

# released_model COMMIT NAME DEST: write models/NAME as it was at COMMIT into DEST (a model folder to start from or
# compare with), unless DEST already holds one.
released_model() {
  local commit=$1 name=$2 dest=$3
  [ -f "$dest/model.onnx" ] && return
  mkdir -p "$dest"
  for f in MODEL_CARD.md manifest.json model.onnx model.onnx.sha256 training.json; do
    git show "$commit:models/$name/$f" > "$dest/$f"
  done
}

# resume_args WORK: RESUME=(--resume WORK/checkpoints/last.pt) when that checkpoint exists, else RESUME=().
resume_args() {
  RESUME=()
  if [ -f "$1/checkpoints/last.pt" ]; then RESUME=(--resume "$1/checkpoints/last.pt"); fi
}

# evaluate_lowdose MODELS_DIR DEST: ce-lowdose-v1 from MODELS_DIR on the 1 mm main set (into DEST), the 4 mm set and
# the held-out sets (4 mm: doses 0.05 and 0.5, the two held-out agent / field pairs; into DEST/...).
evaluate_lowdose() {
  local new=(.venv/bin/gadsynth evaluate --model ce-lowdose-v1 --models-dir "$1") dest=$2
  "${new[@]}" --test-set phantom:1000-1011 --size full --work-dir var/eval/work-full --out "$dest"
  local held=(--work-dir var/eval/work --size small --examples 1)
  "${new[@]}" "${held[@]}" --test-set phantom:1000-1023 --out "$dest/small-4mm"
  "${new[@]}" "${held[@]}" --test-set phantom:1100-1109 --dose 0.05 --out "$dest/heldout-dose-0.05"
  "${new[@]}" "${held[@]}" --test-set phantom:1100-1109 --dose 0.5 --out "$dest/heldout-dose-0.5"
  "${new[@]}" "${held[@]}" --test-set phantom:1200-1209 --agent gadobenate --field 1.5 \
    --out "$dest/heldout-gadobenate-1.5T"
  "${new[@]}" "${held[@]}" --test-set phantom:1200-1209 --agent gadobutrol --field 3 \
    --out "$dest/heldout-gadobutrol-3T"
}

# calibrate_uncertainty MODELS_DIR DEST: ce-lowdose-v1's error model (uncertainty.json) fitted to its own errors on
# 6 subjects that are neither training nor test subjects, judged on the 1 mm test set.
calibrate_uncertainty() {
  .venv/bin/gadsynth uncertainty-calibrate --model ce-lowdose-v1 --models-dir "$1" --calibration phantom:2000-2005 \
    --test-set phantom:1000-1011 --size full --work-dir var/eval/work-full --out "$2" --compare ''
}

# voxel_stage VERSION COMMAND [FLAGS...]: ce-lowdose-v1 1.5.0's stage again, from 1.5.0's weights, with the voxel
# size in the condition and FLAGS added (runs 1.6.0, 1.7.0 and 1.8.0; issue 12): the same data, grids, patches,
# batch and validation; 1,200 steps (STEPS) at 1e-4 to 1e-6. Work in var/train/ce-lowdose-v1-VERSION, model folder
# var/train/out-VERSION/ce-lowdose-v1. COMMAND: prepare | train | evaluate | trust (DEST: where results go).
# INIT_FROM: the model folder the run starts from (default 1.5.0's).
voxel_stage() {
  local version=$1 command=${2:-}; shift 2 || shift $#
  local run=var/train/ce-lowdose-v1-$version out=var/train/out-$version start=var/models-1.5.0
  local init=${INIT_FROM:-$start/ce-lowdose-v1}
  local data=(--data phantom:0-63 --data phantom:200-239,field=1.5,dose=0.1-0.17 --data phantom:300-339,grid=4)
  local args=(
    --model differential --voxel-condition --out "$out/ce-lowdose-v1" --version "${VERSION:-$version}" --work "$run"
    --init-from "$init"
    --phantom-size full --phantom-resolutions 1,1,1,4,2,1.25,1.5,2,4
    --exclude-pair gadobenate@1.5 --exclude-pair gadobutrol@3
    --val phantom:5000-5001 --val phantom:5005-5005
    --patch 80 --batch 2 --steps "${STEPS:-1200}" --lr 1e-4 --lr-min 1e-6 --threads 2
    --checkpoint-every 50 --val-every 100 --cache var/train/cache-mm --overwrite --no-progress "$@"
  )
  case "$command" in
    prepare)
      # two processes, one per half of the data (the cache is shared; a sample is written once, atomically)
      released_model 1f7250e ce-lowdose-v1 "$start/ce-lowdose-v1"
      .venv/bin/gadsynth train "${args[@]}" --data phantom:0-63 --threads 1 --prepare-only &
      .venv/bin/gadsynth train "${args[@]}" "${data[@]:2}" --threads 1 --prepare-only
      wait ;;
    train)
      released_model 1f7250e ce-lowdose-v1 "$start/ce-lowdose-v1"
      resume_args "$run"
      .venv/bin/gadsynth train "${args[@]}" "${data[@]}" "${RESUME[@]}" ;;
    evaluate)
      evaluate_lowdose "$out" "${DEST:-evaluation/ce-lowdose-v1-candidate-$version}" ;;
    trust)
      # the error model fitted to this model's own errors; the input check's reference (ood.json) is 1.2.0's
      calibrate_uncertainty "$out" "${DEST:-evaluation/uncertainty-$version}" ;;
    *)
      echo "usage: $0 prepare|train|evaluate|trust" >&2; return 2 ;;
  esac
}

# gain_stage VERSION COMMAND [FLAGS...]: voxel_stage with 1.8.0's flags and a gain from the condition in every block
# (runs 1.9.0, 1.10.0 and 1.11.0; issue 12), from the weights of run FROM (default 1.8.0), which is trained first
# when it is not here.
gain_stage() {
  local version=$1 command=${2:-}; shift 2 || shift $#
  local from=${FROM:-1.8.0}
  local start=var/train/out-$from/ce-lowdose-v1
  case "$command" in
    prepare|train)
      [ -f "$start/model.onnx" ] || "training/runs/ce-lowdose-v1-$from.sh" "$command" ;;
  esac
  INIT_FROM=$start voxel_stage "$version" "$command" --loss-reduction patch --voxel-scale 0.02 --condition-gain "$@"
}
