"""The MNI152 2009a template (nilearn's bundled files): brain mask and GM/WM fractions on an LPS grid."""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

__all__ = ["NECK_MM", "Template", "load_template", "template_dir"]

logger = logging.getLogger(__name__)

_TEMPLATE_FILES = {name: f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz" for name in ("t1", "gm", "wm")}
NECK_MM = 60.0  # how far below the template the model reaches (spinal canal and neck)


@dataclass(frozen=True)
class Template:
    """MNI152 2009a brain fractions (uint8, 255 = 1) on a 1 mm LPS grid with identity direction, array (z, y, x).

    The arrays are padded below the template by replicating its lowest slice (the medulla) into a spinal cord.
    ``centre`` is the centre of the brain's bounding box (LPS mm), ``brain_box`` its (low, high) corners.
    """

    brain: npt.NDArray[np.uint8]
    gm: npt.NDArray[np.uint8]
    wm: npt.NDArray[np.uint8]
    origin: tuple[float, float, float]
    centre: npt.NDArray[np.float64]
    brain_box: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]

    def image(self, name: str) -> sitk.Image:
        """One channel as a SimpleITK image (shares no memory with the array)."""
        image = sitk.GetImageFromArray(getattr(self, name))
        image.SetOrigin(self.origin)
        return image


def template_dir() -> Path:
    """Folder of nilearn's bundled MNI152 2009a files, found without importing nilearn (slow to import).

    Raises
    ------
    FileNotFoundError
        When nilearn or its template files are not installed.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nilearn is not installed; the phantom needs its MNI152 2009a template files.")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [f for f in _TEMPLATE_FILES.values() if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"MNI152 template files missing from {folder}: {missing}")
    return folder


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Read the template once per process; brain = T1 > 0, GM and WM fractions limited to the brain."""
    folder = template_dir()
    arrays = {}
    for name, filename in _TEMPLATE_FILES.items():
        image = sitk.ReadImage(str(folder / filename))
        array = sitk.GetArrayFromImage(image)
        # nilearn's files are stored with direction diag(-1, -1, 1) in LPS: flip x and y so the index grows with
        # the LPS coordinate (identity direction).
        direction = np.array(image.GetDirection()).reshape(3, 3)
        for axis, sign in ((2, direction[0, 0]), (1, direction[1, 1])):
            if sign < 0:
                array = np.flip(array, axis=axis)
        arrays[name] = np.ascontiguousarray(array)
        spacing, size = np.array(image.GetSpacing()), np.array(image.GetSize())
        origin_lps = np.array(image.GetOrigin()) + np.minimum(np.diag(direction) * (size - 1) * spacing, 0)
    brain = np.where(arrays["t1"] > 0, 255, 0).astype(np.uint8)
    gm = np.minimum(arrays["gm"], brain)
    wm = np.minimum(arrays["wm"], brain - gm)
    pad = int(NECK_MM)
    padded = [np.concatenate([np.repeat(a[:1], pad, axis=0), a], axis=0) for a in (brain, gm, wm)]
    origin = (float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2]) - pad)
    idx = np.argwhere(brain > 0)
    low = origin_lps + idx.min(axis=0)[::-1].astype(np.float64)
    high = origin_lps + idx.max(axis=0)[::-1].astype(np.float64)
    return Template(
        brain=padded[0],
        gm=padded[1],
        wm=padded[2],
        origin=origin,
        centre=(low + high) / 2.0,
        brain_box=(low, high),
    )
