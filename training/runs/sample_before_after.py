"""docs/sample-before-after.png: the `make run` sample's truth beside the synthetic images of two model versions.

    .venv/bin/python training/runs/sample_before_after.py OUT.png LABEL=OUTPUT_DIR LABEL=OUTPUT_DIR

Each OUTPUT_DIR is a `gadsynth run` of sample/study/dicom (its synthetic_t1c/ series); beside them the phantom's
noise-free standard dose (sample/study/truth/x_sd.nii.gz), on the same grid as t1_pre. Rows:
the slice (first array axis) through most of the enhancing lesion, and the middle slice along the last axis; one
grey window for all columns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import SimpleITK as sitk

from training.evaluate_data import read_synthetic

STUDY = Path("sample/study")


def main(out: Path, runs: list[tuple[str, Path]]) -> None:
    truth = sitk.ReadImage(str(STUDY / "truth" / "x_sd.nii.gz"))
    images = {"standard dose, noise-free (truth)": sitk.GetArrayFromImage(truth)}
    for label, folder in runs:
        images[label] = read_synthetic(folder / "synthetic_t1c", truth)
    parts = sitk.GetArrayFromImage(sitk.ReadImage(str(STUDY / "truth" / "lesion_parts.nii.gz")))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(STUDY / "truth" / "brain_mask.nii.gz"))) > 0
    axial = int(np.argmax((parts == 1).sum(axis=(1, 2)))) if (parts == 1).any() else parts.shape[0] // 2
    sagittal = parts.shape[2] // 2
    top = float(np.percentile(images["standard dose, noise-free (truth)"][brain], 99.8))
    fig, axes = plt.subplots(2, len(images), figsize=(3.2 * len(images), 6.4), squeeze=False)
    for column, (label, array) in enumerate(images.items()):
        for row, view in enumerate((array[axial], array[:, :, sagittal])):
            ax = axes[row][column]
            ax.imshow(view, cmap="gray", vmin=0.0, vmax=top, origin="lower" if row else "upper")
            ax.set_axis_off()
        axes[0][column].set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    sys.stdout.write(f"wrote {out}\n")


if __name__ == "__main__":
    pairs = [arg.partition("=") for arg in sys.argv[2:]]
    main(Path(sys.argv[1]), [(label, Path(folder)) for label, _, folder in pairs])
