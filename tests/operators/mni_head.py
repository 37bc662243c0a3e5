"""Test images built from the MNI152 template: a T1-weighted head (brain + CSF rim, skull, scalp) in a known pose."""

from __future__ import annotations

import functools
import math

import numpy as np
import SimpleITK as sitk

from operators.brain_mask import template_path
from operators.roles import Role
from operators.study import Series, Volume

__all__ = ["enhancing_pair", "head_image", "head_volume", "mni_head", "rigid", "with_noise"]


@functools.lru_cache(maxsize=2)
def mni_head(spacing_mm: float = 2.0) -> tuple[sitk.Image, sitk.Image]:
    """A T1-weighted head in MNI space at ``spacing_mm`` and its brain mask (UInt8).

    Outside the template brain, by distance: CSF 0-3 mm (dark), skull 3-8 mm (very dark), scalp fat 8-13 mm
    (bright), skin 13-15 mm (grey), then air (0). The grid is padded by 24 mm so the whole head fits.
    """
    template = sitk.Cast(sitk.ReadImage(str(template_path())), sitk.sitkFloat32)
    padded = sitk.ConstantPad(template, [24] * 3, [24] * 3, 0.0)
    brain = sitk.Cast(padded > 0, sitk.sitkUInt8)
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(brain, insideIsPositive=False, useImageSpacing=True))
    values = sitk.GetArrayFromImage(padded) * 0.9 + 10.0 * (sitk.GetArrayFromImage(brain) > 0)
    outside = distance > 0
    for (lo, hi), value in {(0, 3): 25.0, (3, 8): 8.0, (8, 13): 210.0, (13, 15): 90.0}.items():
        values[outside & (distance > lo) & (distance <= hi)] = value
    values[distance > 15] = 0.0
    head = sitk.GetImageFromArray(values.astype(np.float32))
    head.CopyInformation(padded)
    head = sitk.SmoothingRecursiveGaussian(head, 0.6)
    size = [round(sz * sp / spacing_mm) for sz, sp in zip(padded.GetSize(), padded.GetSpacing(), strict=True)]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([spacing_mm] * 3)
    grid.SetDirection(padded.GetDirection())
    grid.SetOrigin(padded.TransformContinuousIndexToPhysicalPoint([(spacing_mm - 1.0) / 2.0] * 3))
    sigma = math.sqrt(max((spacing_mm / 2.0) ** 2 - 0.25, 0.0))
    image = sitk.Resample(sitk.SmoothingRecursiveGaussian(head, max(sigma, 0.01)), grid, sitk.Transform())
    mask = sitk.Resample(sitk.Cast(brain, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear)
    return image, sitk.Cast(mask >= 0.5, sitk.sitkUInt8)


def rigid(
    image: sitk.Image, *, rotation_deg: tuple[float, float, float], translation_mm: tuple[float, float, float]
) -> sitk.Euler3DTransform:
    """An Euler transform about the image centre (angles in degrees about x, y, z)."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))
    transform.SetRotation(*(math.radians(a) for a in rotation_deg))
    transform.SetTranslation(translation_mm)
    return transform


def head_image(
    spacing_mm: float, pose: sitk.Euler3DTransform | None = None, *, scale: float = 1.0, mask: bool = False
) -> sitk.Image:
    """The MNI head as a scanner sees it after the subject, ``scale`` times larger, moved by ``pose``.

    ``pose`` (p_scanner = R (p_subject - c) + c + t) maps subject points to scanner points; the scaling is about
    the same centre c. The image is on the grid of ``mni_head(spacing_mm)``; with ``mask`` the brain mask instead.
    """
    head, brain = mni_head(spacing_mm)
    source = sitk.Cast(brain, sitk.sitkFloat32) if mask else head
    pose = pose or rigid(head, rotation_deg=(0.0, 0.0, 0.0), translation_mm=(0.0, 0.0, 0.0))
    rotation = np.asarray(pose.GetMatrix()).reshape(3, 3)
    inverse = sitk.AffineTransform(3)
    inverse.SetCenter(pose.GetCenter())
    inverse.SetMatrix((rotation.T / scale).ravel().tolist())
    inverse.SetTranslation((-(rotation.T @ np.asarray(pose.GetTranslation())) / scale).tolist())
    out = sitk.Resample(source, head, inverse, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.Cast(out >= 0.5, sitk.sitkUInt8) if mask else out


def with_noise(image: sitk.Image, sigma: float, seed: int) -> sitk.Image:
    """Add white Gaussian noise of standard deviation ``sigma``."""
    array = sitk.GetArrayFromImage(image)
    array = array + np.random.default_rng(seed).normal(0.0, sigma, array.shape).astype(np.float32)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


def enhancing_pair(
    spacing_mm: float,
    *,
    sigma_pc: float,
    sigma_ld: float,
    scale_pc: float = 3.0,
    scale_ld: float = 2.0,
    uptake: float = 120.0,
    noise_gradient: float = 0.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A noisy pre / low-dose pair on the same grid with three enhancing spheres, with its ground truth.

    x_pc = scale_pc * head + n_pc and x_ld = scale_ld * (head + enhancement) + n_ld, where the noise standard
    deviations are sigma_pc and sigma_ld times (1 + noise_gradient * x / width) (spatially varying when
    ``noise_gradient`` > 0). Returns x_pc, x_ld, brain (bool), enhancing (bool), enhancement (noise-free uptake) and
    noise_field (the multiplier).
    """
    head, brain_image = mni_head(spacing_mm)
    clean = sitk.GetArrayFromImage(head).astype(np.float32)
    brain = sitk.GetArrayFromImage(brain_image) > 0
    zz, yy, xx = np.indices(clean.shape)
    enhancement = np.zeros_like(clean)
    radius = max(2.0, 8.0 / spacing_mm)
    for fz, fy, fx in ((0.45, 0.5, 0.4), (0.6, 0.4, 0.6), (0.5, 0.62, 0.32)):
        cz, cy, cx = (int(f * n) for f, n in zip((fz, fy, fx), clean.shape, strict=True))
        enhancement[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = uptake
    noise_field = (1.0 + noise_gradient * xx / clean.shape[2]).astype(np.float32)
    rng = np.random.default_rng(seed)
    x_pc = scale_pc * clean + sigma_pc * noise_field * rng.standard_normal(clean.shape).astype(np.float32)
    x_ld = scale_ld * (clean + enhancement) + sigma_ld * noise_field * rng.standard_normal(clean.shape).astype(
        np.float32
    )
    return {
        "x_pc": x_pc.astype(np.float32),
        "x_ld": x_ld.astype(np.float32),
        "brain": brain,
        "enhancing": enhancement > 0,
        "enhancement": enhancement,
        "noise_field": noise_field,
    }


def head_volume(array: np.ndarray, role: Role, uid: str, spacing_mm: float) -> Volume:
    """An array on the MNI head grid as a pipeline Volume (series number 1 for t1_pre, else 2; no slices)."""
    head, _ = mni_head(spacing_mm)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(head)
    series = Series(uid, "1.2", "MR", 1 if role == Role.T1_PRE else 2, role.value)
    return Volume(role=role, series=series, image=image, slices=[])
