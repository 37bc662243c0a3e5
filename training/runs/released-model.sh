# Sourced by the run scripts: released_model COMMIT NAME DEST writes models/NAME as it was at COMMIT into DEST
# (a model folder to start from or compare with), unless DEST already holds one.
released_model() {
  local commit=$1 name=$2 dest=$3
  [ -f "$dest/model.onnx" ] && return
  mkdir -p "$dest"
  for f in MODEL_CARD.md manifest.json model.onnx model.onnx.sha256 training.json; do
    git show "$commit:models/$name/$f" > "$dest/$f"
  done
}
