#!/usr/bin/env bash
# ce-lowdose-v1 1.13.0: 1.12.0's network, its contrast faded below the enhancement threshold (issue 12).
#
# 1.12.0 met every bound on the 1 mm main set but left one on the 4 mm set: false enhancement in normal brain 0.11 %
# of the lesion contrast against 1.1.0's 0.03 % (SE 0.03 %). Taken apart on that set, the network's own contrast
# gives 0.23 % there (1.12.0 with the low-dose averaging off, `... apart`; the output ReLU lets its noise brighten,
# never darken) and the low-dose average takes 0.12 % off again. 1.13.0 changes no weight: the manifest turns on
# gate_below_threshold (operators/postprocess.py), y * clip(y / threshold, 0, 1) instead of y, so that below the
# enhancement threshold (3 sigma of the subtraction noise) the image moves smoothly to the mean of x_PC and x_LD.
# Chosen on a set of its own (phantom:3000-3023, 4 mm, seeds used nowhere else; `... select`), not on the test sets:
# FE in normal brain 0.099 % -> -0.042 %, PSNR_B 34.3 -> 34.7 dB, SSIM_B 0.946 -> 0.948, c-bar 0.753 -> 0.752,
# MAE_CE 0.0385 -> 0.0397.
# Result (shipped as ce-lowdose-v1 1.13.0; evaluation/ce-lowdose-v1/SUMMARY.md): 4 mm set FE in normal brain -0.03 %
# (1.1.0 0.03 %, 1.12.0 0.11 %), no figure worse than 1.1.0's by more than the SE; 1 mm main set as 1.12.0 within the
# SE but for FE in normal brain, -0.09 % (1.12.0 -0.07 %; bound 0.1 % in size) and c-bar at d = 0.1 0.833 (0.837).
# Error model refitted: Pearson 0.69 (1.12.0 0.69).
#   training/runs/ce-lowdose-v1-1.13.0.sh build      # the model folder var/train/out-1.13.0/ce-lowdose-v1
#   training/runs/ce-lowdose-v1-1.13.0.sh apart      # 1.12.0 without the low-dose averaging on the 4 mm set
#   training/runs/ce-lowdose-v1-1.13.0.sh select     # the selection set above, 1.12.0 and 1.13.0
#   training/runs/ce-lowdose-v1-1.13.0.sh evaluate   # the sets of 1.5.0 (DEST: where the results go)
#   training/runs/ce-lowdose-v1-1.13.0.sh trust      # the error model (uncertainty.json) refitted to 1.13.0's images
set -euo pipefail
cd "$(dirname "$0")/../.."
. training/runs/common.sh
FROM=var/train/out-1.12.0/ce-lowdose-v1 OUT=var/train/out-1.13.0
released_model 4193933 ce-lowdose-v1 "$FROM"

# switched FOLDER DEST CHANGES: DEST/ce-lowdose-v1, a copy of the model folder FOLDER whose manifest has CHANGES (a
# Python dict's items: post-processing switches, and "version" for the manifest itself)
switched() {
  rm -rf "$2/ce-lowdose-v1" && mkdir -p "$2" && cp -r "$1" "$2/ce-lowdose-v1"
  .venv/bin/python - "$2/ce-lowdose-v1" <<PY
import sys
from pathlib import Path

from operators.model_manifest import MANIFEST_FILE, ModelManifest

folder = Path(sys.argv[1])
manifest = ModelManifest.load(folder)
changes = {$3}
version = changes.pop("version", manifest.version)
post = manifest.postprocess.model_copy(update=changes)
(folder / MANIFEST_FILE).write_text(manifest.model_copy(update={"version": version, "postprocess": post}).to_json())
ModelManifest.load(folder)  # valid, and the model file's sha256 still matches
PY
}
case "${1:-}" in
  build)
    switched "$FROM" "$OUT" '"gate_below_threshold": True, "version": "1.13.0"'
    git show 4193933:models/ce-lowdose-v1/ood.json > "$OUT/ce-lowdose-v1/ood.json" ;;
  apart)
    switched "$FROM" var/exp/noavg '"average_low_dose": False'
    .venv/bin/gadsynth evaluate --model ce-lowdose-v1 --models-dir var/exp/noavg --size small --examples 0 \
      --test-set phantom:1000-1023 --work-dir var/eval/work --out evaluation/ce-lowdose-v1-1.12.0/no-averaging-4mm ;;
  select)
    e=(.venv/bin/gadsynth evaluate --model ce-lowdose-v1 --size small --examples 0 --test-set phantom:3000-3023)
    sel=evaluation/ce-lowdose-v1-selection-1.13.0
    "${e[@]}" --models-dir "${FROM%/*}" --work-dir var/eval/work-select --out $sel/1.12.0
    "${e[@]}" --models-dir "$OUT" --work-dir var/eval/work-select --out $sel/1.13.0 ;;
  evaluate)
    evaluate_lowdose "$OUT" "${DEST:-evaluation/ce-lowdose-v1-candidate-1.13.0}" ;;
  trust)
    calibrate_uncertainty "$OUT" "${DEST:-evaluation/uncertainty-1.13.0}" ;;
  *)
    echo "usage: $0 build|apart|select|evaluate|trust" >&2; exit 2 ;;
esac
