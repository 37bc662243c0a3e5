"""Signal equations of the simulated sequences and gadolinium T1 shortening (METHODS.md section 7)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from training.phantom.tissues import TissueParams

__all__ = [
    "DiffusionEpi",
    "Flair",
    "Mprage",
    "Sequence",
    "SpoiledGre",
    "Tse",
    "flair_null_ti",
    "mprage_signal",
    "spgr_signal",
    "t1_with_gadolinium",
    "tissue_signal",
]

logger = logging.getLogger(__name__)

ArrayLike: TypeAlias = float | npt.NDArray[np.floating]


@dataclass(frozen=True)
class SpoiledGre:
    """3D spoiled gradient echo (FLASH / SPGR / FFE)."""

    tr_ms: float
    te_ms: float
    flip_deg: float


@dataclass(frozen=True)
class Mprage:
    """Inversion-prepared 3D turbo gradient echo (MPRAGE / BRAVO / 3D TFE), steady state over inversion cycles.

    ``cycle_ms`` is the time between inversions, ``ti_ms`` the time from the inversion to the k-space centre,
    ``echo_spacing_ms`` the gradient-echo repetition time inside the train, ``readouts`` the train length and
    ``centre_index`` which readout of the train samples the k-space centre (readouts // 2 for linear ordering,
    0 for centric).
    """

    cycle_ms: float
    ti_ms: float
    echo_spacing_ms: float
    readouts: int
    centre_index: int
    te_ms: float
    flip_deg: float
    inversion_efficiency: float = 0.96


@dataclass(frozen=True)
class Tse:
    """2D turbo (fast) spin echo; the effective echo time weights T2."""

    tr_ms: float
    te_ms: float


@dataclass(frozen=True)
class Flair:
    """2D inversion-recovery turbo spin echo (FLAIR) with the inversion time chosen to null CSF."""

    tr_ms: float
    te_ms: float
    ti_ms: float


@dataclass(frozen=True)
class DiffusionEpi:
    """2D spin-echo EPI with fat saturation; ``b_value`` in s/mm^2 (0 for the reference image)."""

    tr_ms: float
    te_ms: float
    b_value: float
    fat_residual: float = 0.05


Sequence: TypeAlias = SpoiledGre | Mprage | Tse | Flair | DiffusionEpi


def t1_with_gadolinium(t1_ms: ArrayLike, concentration_mm: ArrayLike, r1: float) -> ArrayLike:
    """T1 (ms) after gadolinium: 1/T1 = 1/T1_0 + r1 * C, with r1 in 1/(mM*s) and C in mM.

    The concentration already includes the dose (C = d * C_standard); T2 shortening is neglected (short TE).
    """
    return 1.0 / (1.0 / np.asarray(t1_ms, dtype=np.float64) + r1 * np.asarray(concentration_mm) * 1e-3)


def spgr_signal(pd: ArrayLike, t1_ms: ArrayLike, t2s_ms: ArrayLike, seq: SpoiledGre) -> ArrayLike:
    """Spoiled gradient echo: S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE / T2*), E1 = exp(-TR / T1)."""
    alpha = math.radians(seq.flip_deg)
    e1 = np.exp(-seq.tr_ms / np.asarray(t1_ms, dtype=np.float64))
    return pd * math.sin(alpha) * (1.0 - e1) / (1.0 - math.cos(alpha) * e1) * np.exp(-seq.te_ms / np.asarray(t2s_ms))


def mprage_signal(pd: ArrayLike, t1_ms: ArrayLike, t2s_ms: ArrayLike, seq: Mprage) -> ArrayLike:
    """Magnitude of the inversion-prepared turbo gradient echo at the k-space centre (steady state).

    With E = exp(-tau / T1), the train drives Mz towards M* = (1 - E) / (1 - cos(a) E) at rate cos(a) E per
    readout. Starting from Mss before the inversion: Ma = 1 - (1 + eff Mss) exp(-TA / T1) at the train start (TA =
    TI - centre_index * tau), Mb = M* + (Ma - M*) (cos(a) E)^n at its end, and recovery over TD back to
    Mss = 1 - (1 - Mb) exp(-TD / T1). Solving this for Mss gives the closed form used here (Deichmann et al.,
    MRM 2000;44:799-806 derive the same recursion).

    Raises
    ------
    ValueError
        When the timing is impossible (train start before the inversion or train end after the next one).
    """
    tau = seq.echo_spacing_ms
    ta = seq.ti_ms - seq.centre_index * tau
    td = seq.cycle_ms - ta - seq.readouts * tau
    if ta < 0 or td < 0:
        raise ValueError(
            f"MPRAGE timing impossible: TI {seq.ti_ms} ms, cycle {seq.cycle_ms} ms, {seq.readouts} readouts of "
            f"{tau} ms give a delay before the train of {ta:.1f} ms and after it of {td:.1f} ms (both must be >= 0)."
        )
    t1 = np.asarray(t1_ms, dtype=np.float64)
    alpha = math.radians(seq.flip_deg)
    e = np.exp(-tau / t1)
    ce = math.cos(alpha) * e
    m_star = (1.0 - e) / (1.0 - ce)
    a = np.exp(-ta / t1)
    d = np.exp(-td / t1)
    q = ce**seq.readouts
    eff = seq.inversion_efficiency
    m_ss = (1.0 - d + d * m_star * (1.0 - q) + d * q * (1.0 - a)) / (1.0 + eff * a * d * q)
    m_a = 1.0 - a - eff * a * m_ss
    m_centre = m_star + (m_a - m_star) * ce**seq.centre_index
    return np.abs(pd * math.sin(alpha) * m_centre * np.exp(-seq.te_ms / np.asarray(t2s_ms)))


def flair_null_ti(t1_ms: float, tr_ms: float) -> float:
    """Inversion time (ms) that nulls a tissue of the given T1 in an IR sequence: TI = T1 ln(2 / (1 + exp(-TR/T1)))."""
    return t1_ms * math.log(2.0 / (1.0 + math.exp(-tr_ms / t1_ms)))


def tissue_signal(tissue: TissueParams, seq: Sequence, *, concentration_mm: float = 0.0, r1: float = 0.0) -> float:
    """Noise-free magnitude signal of a pure tissue voxel (PD = 1 for water) for one sequence.

    Raises
    ------
    TypeError
        When ``seq`` is not one of the sequence classes of this module.
    """
    t1 = float(t1_with_gadolinium(tissue.t1_ms, concentration_mm, r1))
    if isinstance(seq, SpoiledGre):
        return float(spgr_signal(tissue.pd, t1, tissue.t2s_ms, seq))
    if isinstance(seq, Mprage):
        return float(mprage_signal(tissue.pd, t1, tissue.t2s_ms, seq))
    flow = 0.1 if tissue.flow_void else 1.0  # flowing blood leaves the slice between excitation and refocusing
    if isinstance(seq, Tse):
        return flow * tissue.pd * (1.0 - math.exp(-seq.tr_ms / t1)) * math.exp(-seq.te_ms / tissue.t2_ms)
    if isinstance(seq, Flair):
        mz = 1.0 - 2.0 * math.exp(-seq.ti_ms / t1) + math.exp(-seq.tr_ms / t1)
        return flow * tissue.pd * abs(mz) * math.exp(-seq.te_ms / tissue.t2_ms)
    if isinstance(seq, DiffusionEpi):
        fat = seq.fat_residual if tissue.fat else 1.0
        s0 = flow * fat * tissue.pd * (1.0 - math.exp(-seq.tr_ms / t1)) * math.exp(-seq.te_ms / tissue.t2_ms)
        return s0 * math.exp(-seq.b_value * tissue.adc * 1e-6)
    raise TypeError(f"Unknown sequence type {type(seq).__name__}; expected one of {Sequence}.")
