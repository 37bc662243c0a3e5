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
