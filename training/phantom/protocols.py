"""Exam plan: each series' vendor-flavoured protocol, physics sequence, acquisition grid and timing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from operators.roles import AGENT_CONCENTRATION, STANDARD_DOSE_MMOL_PER_KG
from training.phantom.geometry import SeriesGeometry, rotation_matrix
from training.phantom.options import ALL_ROLES, PhantomOptions
from training.phantom.signal import DiffusionEpi, Flair, Mprage, Sequence, SpoiledGre, Tse, flair_null_ti
from training.phantom.tissues import tissue_params
from training.phantom.types import ContrastHeader, Protocol

__all__ = ["SeriesPlan", "describe_sequence", "model_spacing", "plan_exam"]

logger = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

#: Grid presets per size: (in-plane spacing mm, columns = rows, slices, slice spacing mm, slice thickness mm).
_GRIDS: dict[str, dict[str, tuple[float, int, int, float, float]]] = {
    "full": {
        "t1": (1.0, 256, 192, 1.0, 1.0),
        "t2": (0.9, 256, 32, 5.0, 4.5),
        "flair": (0.9, 256, 30, 5.5, 5.0),
        "adc": (1.8, 128, 30, 5.5, 5.0),
    },
    "small": {
        "t1": (4.0, 64, 48, 4.0, 4.0),
        "t2": (3.6, 64, 24, 6.5, 6.0),
        "flair": (3.6, 64, 24, 6.5, 6.0),
        "adc": (7.2, 32, 24, 6.5, 6.0),
    },
}
#: Acquisition duration (s) per role, and the pause between series.
_DURATION_S = {"t1_pre": 310, "t2": 150, "flair": 215, "adc": 95, "t1_low_dose": 310, "t1_standard_dose": 310}
_GAP_S = 25
_INJECTION_TO_SCAN_S = 90


@dataclass(frozen=True)
class SeriesPlan:
    """One series to simulate: its header protocol, the physics behind it, its grid and its contrast dose."""

    role: str
    protocol: Protocol
    sequences: tuple[Sequence, ...]  # one; two for ADC (b = 0 and b = 1000)
    geometry: SeriesGeometry
    dose: float  # relative gadolinium dose present during the series (0 before contrast)
    header_tr_ms: float
    header_ti_ms: float | None


def model_spacing(options: PhantomOptions) -> float:
    """Spacing (mm) of the subject model grid: 1 mm for 1-2 mm T1 series, 2 mm for coarse (small) ones."""
    t1 = options.resolution_mm if options.resolution_mm is not None else _GRIDS[options.size]["t1"][0]
    return 1.0 if t1 < 3.0 else 2.0


def _t1_physics(options: PhantomOptions) -> tuple[Sequence, float, float | None, float, float]:
    """Physics sequence of the 3D T1 and what the vendor writes as TR, TI, TE and flip angle."""
    te = 2.5 if options.field_strength >= 3.0 else 3.0
    if options.t1_sequence == "gre":  # METHODS.md 7: typical 3D T1w TR 7 ms, TE 3 ms, flip 8 deg
        return SpoiledGre(7.0, 3.0, 8.0), 7.0, None, 3.0, 8.0
    if options.vendor == "siemens":  # MPRAGE: TR is the inversion cycle, TI to the k-space centre (linear order)
        return Mprage(1900.0, 900.0, 7.0, 176, 88, te, 9.0), 1900.0, 900.0, te, 9.0
    if options.vendor == "ge":  # BRAVO: TR is the gradient-echo TR, TI the preparation time to the train start
        return Mprage(2198.0, 450.0 + 70 * 8.2, 8.2, 140, 70, 3.2, 12.0), 8.2, 450.0, 3.2, 12.0
    # Philips 3D TFE with inversion prepulse: TR is the gradient-echo TR; shot interval 3000 ms
    return Mprage(3000.0, 1000.0, 8.1, 160, 80, 3.7, 8.0), 8.1, 1000.0, 3.7, 8.0


# Vendor naming: (SeriesDescription, SequenceName, ScanningSequence, SequenceVariant, ImageType).
def _naming(options: PhantomOptions, role: str) -> tuple[str, str, str, str, tuple[str, ...]]:
    vendor, sag = options.vendor, options.t1_orientation == "sagittal"
    gre = options.t1_sequence == "gre"
    post = {"t1_pre": "", "t1_low_dose": "low", "t1_standard_dose": "full"}.get(role)
    if vendor == "siemens":
        if post is not None:
            base = f"t1_{'fl3d' if gre else 'mprage'}_{'sag' if sag else 'tra'}_p2_iso"
            desc = base + {"": "", "low": "_KM_LD", "full": "_KM"}[post]
            if gre:
                return desc, "*fl3d1", "GR", "SP\\SK", ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
            return desc, "*tfl3d1_16ns", "GR\\IR", "SK\\SP\\MP", ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")
        return {
            "t2": ("t2_tse_tra_p2", "*tse2d1_15", "SE", "SK\\SP\\OSP", ("ORIGINAL", "PRIMARY", "M", "ND", "NORM")),
            "flair": (
                "t2_tirm_tra_dark-fluid",
                "*tir2d1_21",
                "SE\\IR",
                "SK\\SP\\MP\\OSP",
                ("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
            ),
            "adc": (
                "ep2d_diff_3scan_trace_p2_ADC",
                "*ep_b1000t",
                "EP",
                "SK\\SP",
                ("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND", "NORM"),
            ),
        }[role]
    if vendor == "ge":
        if post is not None:
            base = f"{'Sag' if sag else 'Ax'} 3D T1 {'FSPGR' if gre else 'BRAVO'}"
            desc = base + {"": "", "low": " +C LD", "full": " +C"}[post]
            variant = "SK\\SP" if gre else "SK\\SP\\MP"
            return desc, "efgre3d", "GR" if gre else "GR\\IR", variant, ("ORIGINAL", "PRIMARY", "OTHER")
        return {
            "t2": ("Ax T2 FSE", "fse-xl", "SE", "SK", ("ORIGINAL", "PRIMARY", "OTHER")),
            "flair": ("Ax T2 FLAIR", "fse-ir", "SE\\IR", "SK\\MP", ("ORIGINAL", "PRIMARY", "OTHER")),
            "adc": ("Apparent Diffusion Coefficient (mm2/s)", "epi2", "SE\\EP", "SK", ("DERIVED", "PRIMARY", "ADC")),
        }[role]
    if post is not None:
        base = "T1W_3D_FFE" if gre else "T1W_3D_TFE"
        desc = base + ("" if sag else "_tra") + {"": "", "low": "_Gd_LD", "full": "_Gd"}[post]
        name = "T1FFE" if gre else "T1TFE"
        return (
            desc,
            name,
            "GR" if gre else "GR\\IR",
            "SP" if gre else "MP\\SP",
            ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"),
        )
    return {
        "t2": ("T2W_TSE", "TSE", "SE", "SK", ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")),
        "flair": ("T2W_FLAIR", "IRTSE", "SE\\IR", "SK\\MP", ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR")),
        "adc": ("dADC_DWI_SENSE", "DwiSE", "SE\\EP", "SK", ("DERIVED", "PRIMARY", "ADC", "ADC")),
    }[role]


_SERIES_NUMBERS = {
    "siemens": {"t1_pre": 2, "t1_map": 5, "t2": 3, "flair": 4, "adc": 6, "t1_low_dose": 7, "t1_standard_dose": 8},
    "ge": {"t1_pre": 2, "t1_map": 5, "t2": 3, "flair": 4, "adc": 500, "t1_low_dose": 6, "t1_standard_dose": 7},
    "philips": {
        "t1_pre": 201,
        "t1_map": 202,
        "t2": 301,
        "flair": 401,
        "adc": 502,
        "t1_low_dose": 601,
        "t1_standard_dose": 701,
    },
}

#: The quantitative T1 map's naming per vendor: (SeriesDescription suffix to the pre-contrast T1's, ImageType),
#: as MP2RAGE-type reconstructions label their T1 maps (Siemens "..._T1_Images" with T1 MAP in ImageType).
_T1_MAP_NAMING: dict[str, tuple[str, tuple[str, ...]]] = {
    "siemens": ("_T1_Images", ("DERIVED", "PRIMARY", "T1 MAP", "ND")),
    "ge": (" T1 MAP", ("DERIVED", "PRIMARY", "T1MAP")),
    "philips": ("_T1map", ("DERIVED", "PRIMARY", "T1MAP", "T1")),
}


def _t1_map_plan(options: PhantomOptions, pre: SeriesPlan) -> SeriesPlan:
    """The T1 map reconstructed from the pre-contrast 3D T1 acquisition: same grid, time and sequence; DERIVED."""
    suffix, image_type = _T1_MAP_NAMING[options.vendor]
    protocol = dataclasses.replace(
        pre.protocol,
        role="t1_map",
        description=pre.protocol.description + suffix,
        series_number=_SERIES_NUMBERS[options.vendor]["t1_map"],
        image_type=image_type,
    )
    return dataclasses.replace(pre, role="t1_map", protocol=protocol)


def _grid(options: PhantomOptions, kind: str) -> tuple[float, int, int, float, float]:
    spacing, matrix, slices, slice_spacing, thickness = _GRIDS[options.size][kind]
    if options.resolution_mm is None:
        return spacing, matrix, slices, slice_spacing, thickness
    base = _GRIDS[options.size]["t1"][0]
    factor = options.resolution_mm / base
    fov = spacing * matrix
    new_spacing = spacing * factor
    new_matrix = max(8, round(fov / new_spacing))
    if kind == "t1":  # isotropic 3D: the slab keeps its extent
        new_slices = max(8, round(slices * slice_spacing / new_spacing))
        return new_spacing, new_matrix, new_slices, new_spacing, new_spacing
    return new_spacing, new_matrix, slices, slice_spacing, thickness


def _geometry(options: PhantomOptions, role: str, head_centre: F64, pitch_deg: float) -> SeriesGeometry:
    kind = "t1" if role.startswith("t1") else role
    spacing, matrix, slices, slice_spacing, thickness = _grid(options, kind)
    if kind == "t1" and options.t1_orientation == "sagittal":
        direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: +y, -z, -x
        centre = head_centre + np.array([0.0, 5.0, -8.0])
    elif kind == "t1":
        direction = np.eye(3)
        centre = head_centre + np.array([0.0, 5.0, 8.0])
    else:  # 2D axial stacks tilted to the subject's pitch (the technologist's AC-PC alignment)
        direction = rotation_matrix(round(pitch_deg), 0.0, 0.0)
        centre = head_centre + np.array([0.0, 5.0, 0.0])
    return SeriesGeometry.centred(
        np.round(centre),
        spacing=(spacing, spacing, slice_spacing),
        size=(matrix, matrix, slices),
        direction=direction,
        thickness=thickness,
    )


def plan_exam(
    options: PhantomOptions,
    *,
    head_centre_scanner: F64,
    pitch_deg: float,
    start: dt.datetime,
    weight_kg: float,
) -> list[SeriesPlan]:
    """Plan all six series in acquisition order (the caller writes those in ``options.roles``), so that times,
    numbers and grids never depend on which series are written; plus the T1 map when ``options.roles`` asks for
    it (reconstructed from the pre-contrast T1, it takes no scanner time of its own)."""
    b = options.field_strength
    t1_seq, t1_tr, t1_ti, t1_te, t1_flip = _t1_physics(options)
    csf_t1 = tissue_params("csf", b).t1_ms
    flair_tr = 9000.0
    flair_ti = round(flair_null_ti(csf_t1, flair_tr) / 10.0) * 10.0
    t2_te, flair_te, dwi_te = (100.0, 95.0, 72.0) if b >= 3.0 else (95.0, 110.0, 85.0)
    physics: dict[str, tuple[tuple[Sequence, ...], float, float | None, float, float, int]] = {
        "t1": ((t1_seq,), t1_tr, t1_ti, t1_te, t1_flip, 1),
        "t2": ((Tse(5000.0, t2_te),), 5000.0, None, t2_te, 150.0, 15),
        "flair": ((Flair(flair_tr, flair_te, flair_ti),), flair_tr, flair_ti, flair_te, 150.0, 21),
        "adc": (
            (DiffusionEpi(5200.0, dwi_te, 0.0), DiffusionEpi(5200.0, dwi_te, 1000.0)),
            5200.0,
            None,
            dwi_te,
            90.0,
            1,
        ),
    }
    agent = options.canonical_agent
    concentration = AGENT_CONCENTRATION[agent]
    plans = []
    clock = start
    injections: dict[str, dt.datetime] = {}
    for role in ALL_ROLES:
        if role in ("t1_low_dose", "t1_standard_dose"):
            injections[role] = clock
            clock += dt.timedelta(seconds=_INJECTION_TO_SCAN_S)
        acquired = clock
        clock += dt.timedelta(seconds=_DURATION_S[role] + _GAP_S)
        kind = "t1" if role.startswith("t1") else role
        sequences, tr, ti, te, flip, etl = physics[kind]
        dose = {"t1_low_dose": options.dose, "t1_standard_dose": 1.0}.get(role, 0.0)
        contrast = None
        if dose > 0:
            volume = dose * STANDARD_DOSE_MMOL_PER_KG * weight_kg / concentration
            contrast = ContrastHeader(
                agent=agent,
                volume_ml=round(volume, 1),
                dose=dose,
                concentration_mmol_per_ml=concentration,
                start_time=injections[role].time().replace(microsecond=0),
            )
        description, sequence_name, scanning, variant, image_type = _naming(options, role)
        protocol = Protocol(
            role=role,
            description=description,
            series_number=_SERIES_NUMBERS[options.vendor][role],
            sequence_name=sequence_name,
            mr_acquisition_type="3D" if kind == "t1" else "2D",
            scanning_sequence=scanning,
            sequence_variant=variant,
            repetition_time_ms=tr,
            echo_time_ms=te,
            inversion_time_ms=ti,
            flip_angle_deg=flip,
            image_type=image_type,
            acquisition_time=acquired.time().replace(microsecond=0),
            contrast=contrast,
            echo_train_length=etl,
            pixel_bandwidth_hz={"t1": 200.0, "t2": 220.0, "flair": 250.0, "adc": 1500.0}[kind],
        )
        plans.append(
            SeriesPlan(
                role=role,
                protocol=protocol,
                sequences=sequences,
                geometry=_geometry(options, role, head_centre_scanner, pitch_deg),
                dose=dose,
                header_tr_ms=tr,
                header_ti_ms=ti,
            )
        )
    if "t1_map" in options.roles:
        plans.insert(1, _t1_map_plan(options, plans[0]))
    return plans


def describe_sequence(seq: Sequence) -> dict[str, object]:
    """JSON form of a physics sequence for params.json."""
    data: dict[str, object] = {"type": type(seq).__name__}
    data.update({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in vars(seq).items()})
    return data
