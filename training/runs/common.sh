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
