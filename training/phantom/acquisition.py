"""Scanner effects on a noise-free series: receive bias, intensity scaling, Rician noise and uint16 pixels; ADC maps."""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt

from training.phantom.geometry import SeriesGeometry

__all__ = [
    "VENDOR_SCALE",
    "BiasField",
    "adc_map",
    "g_factor",
    "magnitude_pixels",
    "propagated_adc_sigma",
    "reference_level",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U16 = npt.NDArray[np.uint16]

#: Pixel value the 99th percentile of a series' foreground is scaled to, per vendor (what reconstructions
#: typically store: Siemens ~12-bit scaled images, GE larger integers, Philips in between).
VENDOR_SCALE = {"siemens": 900.0, "ge": 2500.0, "philips": 1500.0}


class BiasField:
    """Smooth multiplicative receive field of the head coil, fixed in scanner coordinates (the head moves in it).

    log b(p) is a random quadratic polynomial of p / 100 mm, scaled so that |log b| <= ``amplitude`` within
    100 mm of the isocentre.
    """

    def __init__(self, rng: np.random.Generator, amplitude: float) -> None:
        linear = rng.uniform(-1.0, 1.0, size=3)
        quadratic = rng.uniform(-1.0, 1.0, size=(3, 3))
        quadratic = (quadratic + quadratic.T) / 2.0
        bound = np.linalg.norm(linear) + np.linalg.norm(quadratic, ord=2)
        self.linear = linear * amplitude / bound if amplitude > 0 else np.zeros(3)
        self.quadratic = quadratic * amplitude / bound if amplitude > 0 else np.zeros((3, 3))

    def on(self, geometry: SeriesGeometry) -> F32:
        """The field sampled on a series grid (slices, rows, columns).

        With u = a + M idx (a = origin / 100, M = direction diag(spacing) / 100), log b is a quadratic polynomial of
        the voxel index, evaluated from 1D and 2D terms instead of per-voxel coordinates.
        """
        a = geometry.origin / 100.0
        m = geometry.direction * np.array(geometry.spacing) / 100.0
        q = m.T @ self.quadratic @ m
        lin = 2.0 * m.T @ self.quadratic @ a + m.T @ self.linear
        const = float(a @ self.quadratic @ a + self.linear @ a)
        idx = [np.arange(n, dtype=np.float64) for n in geometry.size]  # column, row, slice
        one_d = [lin[k] * idx[k] + q[k, k] * idx[k] ** 2 for k in range(3)]
        log_b: F32 = np.asarray(
            (one_d[2] + const)[:, None, None]
            + (one_d[1][:, None] + one_d[0][None, :] + 2.0 * q[0, 1] * np.outer(idx[1], idx[0]))[None, :, :]
            + (2.0 * q[0, 2] * np.outer(idx[2], idx[0]))[:, None, :]
            + (2.0 * q[1, 2] * np.outer(idx[2], idx[1]))[:, :, None],
            dtype=np.float32,
        )
        np.exp(log_b, out=log_b)
        return log_b

    def to_dict(self) -> dict[str, object]:
        return {
            "model": "b(p) = exp(linear . u + u^T quadratic u), u = p_scanner / 100 mm",
            "linear": self.linear.tolist(),
            "quadratic": self.quadratic.tolist(),
        }


def g_factor(geometry: SeriesGeometry) -> F32:
    """Parallel-imaging noise amplification: 1 at the FOV edge rising to 1.5 in the centre of each slice."""
    nx, ny, _ = geometry.size
    u = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) / np.float32(0.25 * nx)
    v = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2) / np.float32(0.25 * ny)
    plane = 1.0 + 0.5 * np.exp(-0.5 * (u[None, :] ** 2 + v[:, None] ** 2))
    return np.broadcast_to(plane.astype(np.float32), geometry.size[::-1])


def reference_level(clean: F32) -> float:
    """99th percentile of the noise-free foreground (voxels above 5% of the maximum), on a fixed subsample."""
    sample = clean.reshape(-1)[::7]
    foreground = sample[sample > 0.05 * float(sample.max())]
    return float(np.percentile(foreground, 99.0)) if foreground.size else 1.0


def magnitude_pixels(clean: F32, sigma: float, rng: np.random.Generator, g: F32 | None = None) -> U16:
    """Rician magnitude |clean + n1 + i n2| with n ~ N(0, (sigma g)^2), rounded to uint16 pixel values."""
    if sigma <= 0:
        return np.clip(np.rint(clean), 0, 65535).astype(np.uint16)
    n1 = rng.standard_normal(clean.shape, dtype=np.float32)
    n2 = rng.standard_normal(clean.shape, dtype=np.float32)
    scale = np.float32(sigma) if g is None else g * np.float32(sigma)
    n1 *= scale
    n2 *= scale
    n1 += clean
    np.square(n1, out=n1)
    np.square(n2, out=n2)
    n1 += n2
    np.sqrt(n1, out=n1)
    np.rint(n1, out=n1)
    return np.clip(n1, 0, 65535).astype(np.uint16)


def adc_map(b0: U16, b1000: U16, *, b_value: float, threshold: float) -> U16:
    """ADC in 1e-6 mm^2/s from the trace images, as scanners store it; 0 where the b = 0 signal is below threshold.

    ADC = ln(S0 / Sb) / b; values are clipped to 0 - 4000 (negative where noise exceeds signal).
    """
    s0 = b0.astype(np.float32)
    sb = np.maximum(b1000.astype(np.float32), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        adc = np.log(np.maximum(s0, 1.0) / sb) * np.float32(1e6 / b_value)
    adc = np.where(s0 >= threshold, adc, 0.0)
    return np.clip(np.rint(adc), 0, 4000).astype(np.uint16)


def propagated_adc_sigma(s0: float, sb: float, sigma0: float, sigma_b: float, b_value: float) -> float:
    """First-order noise (1e-6 mm^2/s) of ADC = ln(S0/Sb)/b for signals s0, sb with Gaussian noise sigma0, sigma_b."""
    if s0 <= 0 or sb <= 0:
        return float("nan")
    return math.sqrt((sigma0 / s0) ** 2 + (sigma_b / sb) ** 2) / b_value * 1e6
