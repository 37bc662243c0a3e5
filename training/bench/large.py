"""Bench: a sub-millimetre study (0.5 mm, 512 x 512 x 320 T1 and low-dose T1) through `python -m app`.

The phantom simulator works at 1 mm and coarser; the 0.5 mm study is its full-size study resampled (B-spline)
onto a 0.5 mm grid, slice by slice written as classic MR DICOM with the same headers. The run happens in a child
process, so the peak resident memory reported is the pipeline's own (target: under 4 GiB, a worker's budget).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_large", "make_half_millimetre_study"]

SHAPE = (320, 512, 512)  # slices, rows, columns
SPACING_MM = 0.5


def _write_series(source_dir: Path, out_dir: Path) -> None:
    """One 1 mm series rewritten on the 0.5 mm grid (same orientation and centre, new UIDs, same headers)."""
    import SimpleITK as sitk
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from operators.series_to_volume import build_volume
    from operators.study_loader import load_study

    (series,) = load_study(source_dir).series
    volume = build_volume(series)
    image = volume.image
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()]))
    size = (SHAPE[2], SHAPE[1], SHAPE[0])
    origin = centre - direction @ (SPACING_MM * (np.asarray(size, dtype=float) - 1) / 2.0)
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing((SPACING_MM,) * 3)
    grid.SetOrigin(tuple(float(v) for v in origin))
    grid.SetDirection(image.GetDirection())
    fine = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    values = np.clip(np.rint(sitk.GetArrayViewFromImage(fine)), 0, 4095).astype(np.uint16)
    ds = dcmread(series.instances[0].path)  # the headers of every new slice; the varying ones are set below
    series_uid = generate_uid()
    out_dir.mkdir(parents=True, exist_ok=True)
    for k in range(size[2]):
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = SHAPE[1], SHAPE[2]
        ds.PixelSpacing = [SPACING_MM, SPACING_MM]
        ds.SliceThickness = SPACING_MM
        ds.ImagePositionPatient = [round(float(v), 4) for v in fine.TransformIndexToPhysicalPoint((0, 0, k))]
        ds.PixelData = values[k].tobytes()
        ds.save_as(out_dir / f"IM{k + 1:05d}.dcm")


def make_half_millimetre_study(work: Path, *, seed: int = 1) -> Path:
    """A 0.5 mm T1 + low-dose T1 study (made once in ``work``); returns its DICOM folder."""
    from training.phantom import PhantomOptions, generate_study

    target = work / "half-mm" / "dicom"
    if target.is_dir():
        return target
    source = work / "half-mm-source"
    study = generate_study(PhantomOptions(seed=seed, size="full", roles=("t1_pre", "t1_low_dose")), source)
    for role in ("t1_pre", "t1_low_dose"):
        folder = study.series[role].directory
        if folder is None:
            raise RuntimeError(f"the phantom wrote no {role} series")
        _write_series(folder, target / folder.name)
    return target


def bench_large(work: Path, *, seed: int = 1) -> dict[str, Any]:
    """Wall time, per-stage times and peak RSS of `python -m app` on the 0.5 mm study."""
    from training.bench.cli import _run_child

    study = make_half_millimetre_study(work, seed=seed)
    out = work / "half-mm-out"
    command = [sys.executable, "-m", "app", "-i", str(study), "-o", str(out), "-l", "WARNING"]
    wall, code, peak_mib = _run_child(command)
    report = json.loads((out / "report.json").read_text())
    return {
        "shape": list(SHAPE),
        "spacing_mm": SPACING_MM,
        "status": report.get("status"),
        "exit_code": code,
        "wall_s": round(wall, 2),
        "stages_s": report.get("timings_s", {}),
        "working_grid": (report.get("extra", {}).get("postprocess") or {}).get("working_grid"),
        "peak_rss_mib": round(peak_mib, 1),
        "target_peak_rss_mib": 4096,
    }
