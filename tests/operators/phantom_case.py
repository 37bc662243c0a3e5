"""Small phantom studies (engineer A's simulator) read back through the real ingest, cached per test session."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from operators.roles import Role
from operators.series_selector import select_roles
from operators.series_to_volume import build_volumes
from operators.study import Selection, Volume
from operators.study_loader import load_study
from training.phantom import PhantomOptions, generate_study

__all__ = ["PhantomCase", "phantom_case", "truth_transform"]

_ROOT = Path(tempfile.mkdtemp(prefix="gadsynth-phantom-cases-"))
atexit.register(shutil.rmtree, _ROOT, True)


@dataclass(frozen=True)
class PhantomCase:
    """A generated study: its DICOM read back by the ingest (volumes, selection) and its ground truth."""

    root: Path
    params: dict[str, Any]
    selection: Selection
    volumes: dict[Role, Volume]

    def truth(self, name: str) -> np.ndarray:
        """A truth volume on the t1_pre grid (e.g. ``brain_mask``, ``lesions``, ``y_ld``), indexed (k, j, i)."""
        return np.asarray(sitk.GetArrayFromImage(sitk.ReadImage(str(self.root / "truth" / f"{name}.nii.gz"))))

    def noise_sigma(self, role: Role) -> float:
        """The noise level the simulator used for a series, in its pixel units."""
        return float(self.params["series"][role.value]["noise_sigma"])


@functools.lru_cache(maxsize=4)
def phantom_case(seed: int, **options: Any) -> PhantomCase:
    """Generate (once per session) a small phantom study and read it back with the ingest."""
    root = _ROOT / f"seed{seed}-{abs(hash(tuple(sorted(options.items()))))}"
    generate_study(PhantomOptions(seed=seed, size="small", **options), root)
    selection = select_roles(load_study(root / "dicom"))
    params = json.loads((root / "truth" / "params.json").read_text())
    return PhantomCase(root=root, params=params, selection=selection, volumes=build_volumes(selection))


def truth_transform(case: PhantomCase, role: Role) -> sitk.AffineTransform:
    """The true map from t1_pre physical points to the same anatomy in series ``role``: pose_s o pose_pre^-1."""

    def pose(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        entry = case.params["series"][name]["pose"]
        return np.asarray(entry["rotation"]), np.asarray(entry["translation_mm"]), np.asarray(entry["centre_mm"])

    r_pre, t_pre, centre = pose(Role.T1_PRE.value)
    r_s, t_s, _ = pose(role.value)
    # p_s = R_s R_pre^T (p_pre - c - t_pre) + c + t_s
    transform = sitk.AffineTransform(3)
    transform.SetCenter([float(v) for v in centre])
    transform.SetMatrix([float(v) for v in (r_s @ r_pre.T).ravel()])
    transform.SetTranslation([float(v) for v in t_s - r_s @ r_pre.T @ t_pre])
    return transform
