"""Ground truth of a phantom study: NIfTI volumes on the t1_pre grid (SimpleITK, LPS-exact) and params.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from training.phantom.geometry import SeriesGeometry

__all__ = ["TRUTH_VOLUMES", "write_params", "write_volume"]

logger = logging.getLogger(__name__)

#: Truth volumes on the t1_pre grid and what each holds.
TRUTH_VOLUMES: dict[str, str] = {
    "x_pc": "noise-free pre-contrast T1w (pixel scale of the t1_pre series)",
    "x_ld": "noise-free low-dose T1w at the t1_pre pose",
    "x_sd": "noise-free standard-dose T1w at the t1_pre pose",
    "y_sd": "x_sd - x_pc: contrast signal of the standard dose",
    "y_ld": "x_ld - x_pc: contrast signal of the low dose",
    "brain_mask": "uint8 brain (template brain incl. ventricles and lesions), 1 inside",
    "lesions": "uint16 lesion labels (1..N, params.json 'lesions' ids; necrosis included, oedema not)",
    "lesion_parts": "uint8 dominant lesion part (params.json 'lesion_part_codes')",
    "gd_concentration_sd": "gadolinium concentration (mM) at the standard dose, partial-volume weighted",
}


def write_volume(path: Path, array: npt.NDArray[Any], geometry: SeriesGeometry) -> Path:
    """Write one volume as NIfTI with SimpleITK, from the exact acquisition geometry.

    ``sitk.ReadImage`` of the file returns the same LPS origin, spacing and direction as the DICOM series read with
    SimpleITK. Compression level 1: the volumes are large and speed matters more than the last few percent.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(geometry.image(np.ascontiguousarray(array)), str(path), True, 1)
    return path


def write_params(truth_dir: Path, params: dict[str, Any], volume_names: list[str]) -> Path:
    """Write ``params.json`` (with a ``truth_files`` section describing each truth volume)."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    data = dict(params)
    data["truth_files"] = {name: TRUTH_VOLUMES.get(name, "") for name in volume_names}
    path = truth_dir / "params.json"
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot write {type(value).__name__} to params.json")
