"""NIfTI training subjects: one file per role plus a JSON sidecar with dose, field strength and agent."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from operators.errors import InputDicomError
from operators.model_manifest import ModelManifest
from operators.roles import Role, canonical_agent, relaxivity
from training.datasets.sample import Sample, sample_from_volumes, training_roles

if TYPE_CHECKING:
    from operators.study import Volume

__all__ = ["NIFTI_SIDECAR", "nifti_subjects", "read_sidecar", "sample_from_nifti"]

logger = logging.getLogger(__name__)

#: Name of the JSON sidecar in each NIfTI subject folder: {"dose": 0.25, "field_strength_t": 3.0, "agent": "..."}.
#: A DICOM study folder may hold one too, standing in for what its headers do not say.
NIFTI_SIDECAR = "sidecar.json"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nifti_file(folder: Path, stem: str) -> Path | None:
    for suffix in _NIFTI_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def nifti_subjects(root: Path) -> list[Path]:
    """Subject folders under ``root`` (each holding ``t1_pre.nii[.gz]``); ``root`` itself when it holds one."""
    if _nifti_file(root, Role.T1_PRE.value) is not None:
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and _nifti_file(p, Role.T1_PRE.value) is not None)


def read_sidecar(folder: Path) -> dict[str, Any]:
    """The subject's sidecar, checked: positive ``dose`` and ``field_strength_t``, and ``agent`` or ``r1``.

    Raises
    ------
    InputDicomError
        When the sidecar is missing, not a JSON object, or lacks a value.
    """
    path = folder / NIFTI_SIDECAR
    if not path.is_file():
        raise InputDicomError(
            f"NIfTI subject {folder} has no {NIFTI_SIDECAR}: it must give the low dose, field strength and agent, "
            'e.g. {"dose": 0.25, "field_strength_t": 3.0, "agent": "gadobutrol"}.',
            attribute=NIFTI_SIDECAR,
            expected="a JSON sidecar",
            found="missing",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputDicomError(
            f"{path} is not valid JSON: {exc}", attribute=NIFTI_SIDECAR, expected="JSON", found=str(exc)
        ) from exc
    if not isinstance(data, dict):
        raise InputDicomError(
            f"{path} must hold a JSON object", attribute=NIFTI_SIDECAR, expected="object", found=type(data).__name__
        )
    for key in ("dose", "field_strength_t"):
        value = data.get(key)
        if not isinstance(value, int | float) or not value > 0:
            raise InputDicomError(
                f"{path}: {key!r} must be a positive number; found {value!r}",
                attribute=key,
                expected="a positive number",
                found=repr(value),
            )
    if data.get("r1") is None and not data.get("agent"):
        raise InputDicomError(
            f"{path}: give 'agent' (e.g. gadobutrol) or 'r1' (1/(mM*s))", attribute="agent", expected="agent or r1"
        )
    return data


def _nifti_volume(path: Path, role: Role | None, subject: str) -> Volume:
    import SimpleITK as sitk

    from operators.study import Series, Volume

    image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    series = Series(
        series_instance_uid=f"nifti:{subject}/{path.name}",
        study_instance_uid=f"nifti:{subject}",
        modality="MR",
        series_number=None,
        description=path.name,
    )
    return Volume(role=role, series=series, image=image, slices=[])


def sample_from_nifti(folder: Path, manifest: ModelManifest, *, source: dict[str, Any] | None = None) -> Sample:
    """A training sample from a NIfTI subject folder: ``<role>.nii[.gz]`` per role, ``sidecar.json`` with
    ``dose`` (low dose relative to standard), ``field_strength_t`` and ``agent`` (or ``r1``), and optionally
    ``brain_mask.nii[.gz]`` (else the pipeline's atlas mask). Then the same path as DICOM studies.

    Raises
    ------
    InputDicomError
        When a role's file or the sidecar is missing or invalid, or a later stage fails.
    """
    import SimpleITK as sitk

    from operators.brain_mask import BrainMask
    from operators.study import ContrastInfo

    folder = Path(folder)
    sidecar = read_sidecar(folder)
    volumes: dict[Role, Volume] = {}
    for role in training_roles(manifest):
        path = _nifti_file(folder, role.value)
        if path is None:
            raise InputDicomError(
                f"NIfTI subject {folder} has no {role.value}.nii.gz (needed: "
                f"{[r.value for r in training_roles(manifest)]}).",
                attribute=role.value,
                expected=f"{role.value}.nii.gz",
                found="missing",
            )
        volumes[role] = _nifti_volume(path, role, folder.name)
    field = float(sidecar["field_strength_t"])
    agent = canonical_agent(str(sidecar["agent"])) if sidecar.get("agent") else None
    r1 = float(sidecar["r1"]) if sidecar.get("r1") is not None else relaxivity(str(agent), field)
    contrast = {
        Role.T1_LOW_DOSE: ContrastInfo(float(sidecar["dose"]), agent, field, r1, source="sidecar"),
        Role.T1_STANDARD_DOSE: ContrastInfo(float(sidecar.get("standard_dose", 1.0)), agent, field, r1, "sidecar"),
    }
    mask = None
    mask_path = _nifti_file(folder, "brain_mask")
    if mask_path is not None:
        reference = volumes[Role.T1_PRE].image
        image = sitk.ReadImage(str(mask_path), sitk.sitkFloat32)
        image = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
        mask = BrainMask(mask=sitk.Cast(image > 0.5, sitk.sitkUInt8), transform=sitk.Transform(), quality={})
    info = {"kind": "nifti", "path": str(folder), "sidecar": sidecar, **(source or {})}
    return sample_from_volumes(volumes, contrast, manifest, mask=mask, source=info)
