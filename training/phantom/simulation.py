"""One exam in progress: subject model, exam plan, and the simulated pixels and truth of each series."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.uid import generate_uid

from operators.roles import relaxivity
from training.phantom.acquisition import (
    VENDOR_SCALE,
    BiasField,
    adc_map,
    g_factor,
    magnitude_pixels,
    propagated_adc_sigma,
    reference_level,
)
from training.phantom.anatomy import build_anatomy
from training.phantom.composition import Composition, ValueOf
from training.phantom.geometry import Pose, SeriesGeometry, resample_box_to_series, resample_to_series, rotation_matrix
from training.phantom.lesions import LESION_PART_CODES, Lesion, lesion_components, place_lesions
from training.phantom.options import ALL_ROLES, PhantomOptions
from training.phantom.protocols import model_spacing, plan_exam
from training.phantom.signal import DiffusionEpi, Sequence, tissue_signal
from training.phantom.structures import normal_structures
from training.phantom.tissues import TISSUES, tissue_params
from training.phantom.types import StudyHeader

__all__ = ["ExamSimulation", "rng_stream"]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U16 = npt.NDArray[np.uint16]
Progress = Callable[[str], None]

_T1_ROLES = ("t1_pre", "t1_low_dose", "t1_standard_dose")
#: Relative noise of the T1 map per unit of ``PhantomOptions.noise`` (0.02 gives 3 % of T1).
T1_MAP_NOISE_FACTOR = 1.5


def rng_stream(seed: int, stream: str) -> np.random.Generator:
    """Independent, named random stream: changing one option never shifts the draws of another stage."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode())])


def _study_header(options: PhantomOptions, uid_entropy: str) -> StudyHeader:
    rng = rng_stream(options.seed, "patient")
    sex = "F" if rng.random() < 0.5 else "M"
    age_days = int(rng.integers(30 * 365, 80 * 365))
    study_date = dt.date(2024, 1, 1) + dt.timedelta(days=options.seed % 730)
    study_time = (dt.datetime(2000, 1, 1, 7, 30) + dt.timedelta(minutes=int(rng.integers(0, 600)))).time()
    return StudyHeader(
        patient_name=f"PHANTOM^SUBJECT{options.seed:05d}",
        patient_id=f"GADSYNTH-{options.seed:06d}",
        patient_birth_date=(study_date - dt.timedelta(days=age_days)).strftime("%Y%m%d"),
        patient_sex=sex,  # type: ignore[arg-type]
        patient_weight_kg=round(float(rng.uniform(55.0, 95.0) if sex == "M" else rng.uniform(48.0, 85.0)), 1),
        patient_size_m=round(float(rng.uniform(1.68, 1.92) if sex == "M" else rng.uniform(1.55, 1.80)), 2),
        study_instance_uid=generate_uid(entropy_srcs=[uid_entropy, "study"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=[uid_entropy, "frame-of-reference"]),
        study_date=study_date,
        study_time=study_time,
        accession_number=f"GS{options.seed:08d}",
        vendor=options.vendor,
        field_strength_t=options.field_strength,
    )


def _poses(options: PhantomOptions, centre: npt.NDArray[np.float64]) -> tuple[dict[str, Pose], float]:
    """Head pose per role: one subject placement (rotation, table offset) plus independent motion per series."""
    rng = rng_stream(options.seed, "pose")
    h = options.head_rotation_deg
    pitch, roll, yaw = rng.uniform(-h, h), rng.uniform(-h / 2, h / 2), rng.uniform(-h / 2, h / 2)
    base_rotation = rotation_matrix(pitch, roll, yaw)
    base_translation = -centre + rng.uniform([-3.0, -5.0, -10.0], [3.0, 5.0, 10.0])
    poses = {}
    m = options.motion_mm if options.motion else 0.0
    for role in ALL_ROLES:
        angles, shift = rng.uniform(-m, m, size=3), rng.uniform(-m, m, size=3)
        rotation = rotation_matrix(*angles) @ base_rotation
        poses[role] = Pose(rotation, base_translation + shift, centre.copy())
    poses["t1_map"] = poses["t1_pre"]  # reconstructed from the same acquisition: no motion between them
    return poses, float(pitch)


def _value_function(seq: Sequence, field_t: float, r1: float) -> ValueOf:
    params = {name: tissue_params(name, field_t) for name in TISSUES}

    def value(tissue: str, concentration: float) -> float:
        return tissue_signal(params[tissue], seq, concentration_mm=concentration, r1=r1)

    return value


class ExamSimulation:
    """One exam in progress: the subject model, the plans, and the images produced stage by stage.

    ``build_subject`` must run first; ``simulate_t1`` and ``simulate_2d`` may then run in different threads (they
    only read the subject model and write their own entries of ``pixels``, ``sigmas``, ``scales`` and ``truth``).
    """

    def __init__(self, options: PhantomOptions, progress: Progress | None) -> None:
        self.options = options
        self.progress = progress or (lambda stage: None)
        self.timings: dict[str, float] = {}
        self.r1 = relaxivity(options.canonical_agent, options.field_strength)
        self.uid_entropy = hashlib.sha256(json.dumps(options.to_dict(), sort_keys=True).encode()).hexdigest()
        self.header = _study_header(options, self.uid_entropy)
        self.pixels: dict[str, U16] = {}
        self.sigmas: dict[str, float] = {}
        self.scales: dict[str, float] = {}
        self.truth: dict[str, npt.NDArray[Any]] = {}
        self._lock = threading.Lock()

    def record(self, stage: str, start: float) -> None:
        """Add the wall time since ``start`` to ``timings[stage]`` and report the stage to the progress callback."""
        with self._lock:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
            self.progress(stage)

    def build_subject(self) -> None:
        start = time.perf_counter()
        o = self.options
        self.anatomy = build_anatomy(rng_stream(o.seed, "anatomy"), spacing=model_spacing(o), deformation=o.deformation)
        self.composition = Composition(self.anatomy)
        structures = normal_structures(self.anatomy)
        self.composition.components.extend(structures)
        self.lesions: list[Lesion] = place_lesions(
            self.anatomy,
            rng_stream(o.seed, "lesions"),
            specs=o.lesions,
            count=o.lesion_count,
            kinds=o.lesion_kinds,
            avoid=structures,
        )
        for lesion in self.lesions:
            self.composition.components.extend(lesion_components(self.anatomy, lesion))
        self.composition.finalize()
        self.poses, pitch = _poses(o, self.anatomy.centre)
        head_centre = self.poses["t1_pre"].centre + self.poses["t1_pre"].translation
        start_time = dt.datetime.combine(self.header.study_date, self.header.study_time)
        self.plans = {
            p.role: p
            for p in plan_exam(
                o,
                head_centre_scanner=head_centre,
                pitch_deg=pitch,
                start=start_time,
                weight_kg=self.header.patient_weight_kg,
            )
        }
        self.bias = BiasField(rng_stream(o.seed, "bias"), o.bias)
        self.record("subject", start)

    def _noise(self, role: str, clean: F32, sigma: float, geometry: SeriesGeometry) -> U16:
        g = g_factor(geometry) if self.options.noise_spatially_varying else None
        return magnitude_pixels(clean, sigma, rng_stream(self.options.seed, f"noise/{role}"), g)

    def simulate_t1(self, ready: Callable[[str], None] | None = None) -> None:
        """The three T1 series and the truth on the t1_pre grid; ``ready(role)`` is called as each series is done."""
        start = time.perf_counter()
        plan = self.plans["t1_pre"]
        geometry, grid = plan.geometry, self.anatomy.grid
        value = _value_function(plan.sequences[0], self.options.field_strength, self.r1)
        comp = self.composition
        doses = {"t1_pre": 0.0, "t1_low_dose": self.options.dose, "t1_standard_dose": 1.0}
        signal = {role: comp.render(value, dose=d) for role, d in doses.items()}
        conc = comp.render(lambda tissue, c: c, dose=1.0)
        self.record("t1_render", start)
        start = time.perf_counter()
        pre_pose = self.poses["t1_pre"]
        maps = [signal["t1_pre"], signal["t1_low_dose"], signal["t1_standard_dose"], self.anatomy.brain, conc]
        x_pc, x_ld, x_sd, brain, conc_t1 = resample_to_series(maps, grid, geometry, pre_pose)
        ids_t1, parts_t1 = self._label_maps(geometry, pre_pose)
        bias = self.bias.on(geometry)
        scale = VENDOR_SCALE[self.options.vendor] / reference_level(x_pc * bias)
        gain = bias * np.float32(scale)
        for array in (x_pc, x_ld, x_sd):
            array *= gain
        sigma = self.options.noise * VENDOR_SCALE[self.options.vendor]
        self.truth.update(
            x_pc=x_pc,
            x_ld=x_ld,
            x_sd=x_sd,
            y_sd=x_sd - x_pc,
            y_ld=x_ld - x_pc,
            brain_mask=(brain >= 0.5).astype(np.uint8),
            lesions=ids_t1.astype(np.uint16),
            lesion_parts=parts_t1.astype(np.uint8),
            gd_concentration_sd=conc_t1,
        )
        self.record("t1_truth", start)
        for role in _T1_ROLES:
            if role not in self.options.roles:
                continue
            start = time.perf_counter()
            if role == "t1_pre":
                clean = x_pc
            else:
                (clean,) = resample_to_series([signal[role]], grid, geometry, self.poses[role])
                clean *= gain
            self.pixels[role] = self._noise(role, clean, sigma, geometry)
            self.sigmas[role], self.scales[role] = sigma, scale
            self.record(role, start)
            if ready is not None:
                ready(role)
        if "t1_map" in self.options.roles:
            self._simulate_t1_map(geometry, pre_pose)
            if ready is not None:
                ready("t1_map")

    def _simulate_t1_map(self, geometry: SeriesGeometry, pose: Pose) -> None:
        """Quantitative pre-contrast T1 (ms) on the t1_pre grid, as an MP2RAGE-type reconstruction gives it.

        Partial volumes mix relaxation rates (1/T1 = sum f_i / T1_i over the voxel's tissues), so a voxel of half
        CSF and half grey matter reads well below the mean of their T1s. The map is free of the receive bias (the
        point of a quantitative map); its noise is multiplicative, ``T1_MAP_NOISE_FACTOR * options.noise`` of T1
        (about 3 % at the default noise, MP2RAGE's precision in white matter). Background (less than half a voxel
        of tissue) is 0, as scanners mask it.
        """
        start = time.perf_counter()
        field = self.options.field_strength
        t1_ms = {name: tissue_params(name, field).t1_ms for name in TISSUES}
        rate = self.composition.render(lambda tissue, c: 1000.0 / t1_ms[tissue], dose=0.0)
        tissue = self.composition.render(lambda tissue, c: 1.0, dose=0.0)
        rate_t, tissue_t = resample_to_series([rate, tissue], self.anatomy.grid, geometry, pose)
        inside = (tissue_t >= 0.5) & (rate_t > 0)
        t1 = np.zeros_like(rate_t)
        t1[inside] = 1000.0 * tissue_t[inside] / rate_t[inside]
        relative = T1_MAP_NOISE_FACTOR * self.options.noise
        noise = rng_stream(self.options.seed, "noise/t1_map").standard_normal(t1.shape, dtype=np.float32)
        t1 *= 1.0 + np.float32(relative) * noise
        self.pixels["t1_map"] = np.clip(np.rint(t1), 0, np.iinfo(np.uint16).max).astype(np.uint16)
        self.sigmas["t1_map"] = relative * t1_ms["wm"]
        self.scales["t1_map"] = 1.0
        self.record("t1_map", start)

    def _label_maps(self, geometry: SeriesGeometry, pose: Pose) -> tuple[F32, F32]:
        """Lesion id (where the lesion's solid part, necrosis included, fills half a model voxel or more) and
        dominant lesion part, nearest-neighbour resampled from the model grid onto a series grid."""
        parts_of = [c for c in self.composition.components if c.lesion_id]
        if not parts_of:
            empty = np.zeros(geometry.size[::-1], dtype=np.float32)
            return empty, empty.copy()
        low = np.min([[s.start for s in c.box] for c in parts_of], axis=0)
        high = np.max([[s.stop for s in c.box] for c in parts_of], axis=0)
        box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
        shape = self.anatomy.grid.shape
        ids = np.zeros(shape, dtype=np.float32)
        parts = np.zeros(shape, dtype=np.float32)
        core: dict[int, F32] = {}
        for c in parts_of:
            part = c.name.rsplit("_", 1)[1]
            if part != "oedema":
                core[c.lesion_id] = core.get(c.lesion_id, 0.0) + c.fraction
            parts[c.box] = np.where(c.fraction >= 0.5, np.float32(LESION_PART_CODES[part]), parts[c.box])
        for c in parts_of:
            if c.lesion_id in core and c.name.endswith(("_enhancing", "_nonenhancing")):
                ids[c.box] = np.where(core[c.lesion_id] >= 0.5, np.float32(c.lesion_id), ids[c.box])
        ids_t, parts_t = resample_box_to_series([ids, parts], self.anatomy.grid, box, geometry, pose)  # type: ignore[arg-type]
        return ids_t, parts_t

    def simulate_2d(self, role: str) -> None:
        start = time.perf_counter()
        plan = self.plans[role]
        geometry, pose = plan.geometry, self.poses[role]
        bias = self.bias.on(geometry)
        sigma_fraction = self.options.noise
        values = [_value_function(seq, self.options.field_strength, self.r1) for seq in plan.sequences]
        maps = [self.composition.render(v) for v in values]
        coarsen = min(geometry.spacing[:2]) >= 1.75 * self.anatomy.grid.spacing
        images = resample_to_series(maps, self.anatomy.grid, geometry, pose, coarsen=coarsen)
        scale = VENDOR_SCALE[self.options.vendor] / reference_level(images[0] * bias)
        sigma = sigma_fraction * VENDOR_SCALE[self.options.vendor]
        if role != "adc":
            clean = images[0] * bias * np.float32(scale)
            self.pixels[role] = self._noise(role, clean, sigma, geometry)
            self.sigmas[role], self.scales[role] = sigma, scale
        else:
            b0_seq, b_seq = plan.sequences
            if not isinstance(b_seq, DiffusionEpi):
                raise TypeError(f"ADC plan must hold diffusion sequences. Found {type(b_seq).__name__}.")
            dwi_level = 1000.0  # the trace images are internal: scale their 99th percentile to 1000
            level = dwi_level / reference_level(images[0] * bias)
            s0, sb = (im * bias * np.float32(level) for im in images)
            sigma0 = sigma_fraction * dwi_level
            sigma_b = sigma0 / math.sqrt(3.0)  # trace image: mean of three diffusion directions
            m0 = self._noise("adc/b0", s0, sigma0, geometry)
            mb = self._noise("adc/b1000", sb, sigma_b, geometry)
            # Background (Rayleigh noise stays below 5 sigma) is set to 0, as scanners do.
            threshold = max(5.0 * sigma0, 0.05 * dwi_level)
            self.pixels[role] = adc_map(m0, mb, b_value=b_seq.b_value, threshold=threshold)
            wm = tissue_params("wm", self.options.field_strength)
            wm0 = tissue_signal(wm, b0_seq) * level
            wmb = tissue_signal(wm, b_seq) * level
            self.sigmas[role] = propagated_adc_sigma(wm0, wmb, sigma0, sigma_b, b_seq.b_value)
            self.scales[role] = 1.0
        self.record(role, start)

    def series_uid(self, role: str) -> str:
        return str(generate_uid(entropy_srcs=[self.uid_entropy, "series", role]))
