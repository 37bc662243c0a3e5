#!/usr/bin/env bash
# ce-lowdose-v1 1.13.0: 1.12.0's network, its contrast faded below the enhancement threshold (issue 12).
#
# 1.12.0 met every bound on the 1 mm main set but left one on the 4 mm set: false enhancement in normal brain 0.11 %
# of the lesion contrast against 1.1.0's 0.03 % (SE 0.03 %). Taken apart on that set, the network's own contrast
# gives 0.23 % there (low-dose averaging off: var/exp; the output ReLU lets its noise brighten, never darken) and the
# low-dose average takes 0.12 % off again. 1.13.0 changes no weight: the manifest turns on gate_below_threshold
# (operators/postprocess.py), y * clip(y / threshold, 0, 1) instead of y, so that below the enhancement threshold
# (3 sigma of the subtraction noise) the image moves smoothly to the mean of x_PC and x_LD. Chosen on a set of
# its own (phantom:3000-3023, 4 mm, seeds used nowhere else), not on the test sets: FE in normal brain 0.099 % ->
# -0.042 %, PSNR_B 34.3 -> 34.7 dB, SSIM_B 0.946 -> 0.948, c-bar 0.753 -> 0.752, MAE_CE 0.0385 -> 0.0397.
#   training/runs/ce-lowdose-v1-1.13.0.sh build      # the model folder var/train/out-1.13.0/ce-lowdose-v1
#   training/runs/ce-lowdose-v1-1.13.0.sh select     # the selection set above, 1.12.0 and 1.13.0 (var/exp)
#   training/runs/ce-lowdose-v1-1.13.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.13.0.sh trust      # the error model (uncertainty.json) refitted to 1.13.0's images
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
FROM=var/train/out-1.12.0/ce-lowdose-v1 OUT=var/train/out-1.13.0
released_model 4193933 ce-lowdose-v1 "$FROM"
case "${1:-}" in
  build)
    rm -rf "$OUT/ce-lowdose-v1" && mkdir -p "$OUT" && cp -r "$FROM" "$OUT/ce-lowdose-v1"
    git show 4193933:models/ce-lowdose-v1/ood.json > "$OUT/ce-lowdose-v1/ood.json"
    .venv/bin/python - "$OUT/ce-lowdose-v1" <<'PY'
import sys
from pathlib import Path

from operators.model_manifest import MANIFEST_FILE, ModelManifest

folder = Path(sys.argv[1])
manifest = ModelManifest.load(folder)
post = manifest.postprocess.model_copy(update={"gate_below_threshold": True})
manifest = manifest.model_copy(update={"version": "1.13.0", "postprocess": post})
(folder / MANIFEST_FILE).write_text(manifest.to_json())
ModelManifest.load(folder)  # valid, and the model file's sha256 still matches
PY
    ;;
  select)
    e=(.venv/bin/gadsynth evaluate --model ce-lowdose-v1 --size small --examples 0 --test-set phantom:3000-3023)
    mkdir -p var/eval/work-select-1.13.0 && ln -sfn ../work-select/studies var/eval/work-select-1.13.0/studies
    "${e[@]}" --models-dir "${FROM%/*}" --work-dir var/eval/work-select --out var/exp/select-1.12.0-4mm
    "${e[@]}" --models-dir "$OUT" --work-dir var/eval/work-select-1.13.0 --out var/exp/select-1.13.0-4mm ;;
  evaluate)
    evaluate_lowdose "$OUT" "${DEST:-evaluation/ce-lowdose-v1-candidate-1.13.0}" ;;
  trust)
    calibrate_uncertainty "$OUT" "${DEST:-evaluation/uncertainty-1.13.0}" ;;
  *)
    echo "usage: $0 build|select|evaluate|trust" >&2; exit 2 ;;
esac
