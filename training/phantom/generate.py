"""generate_study: simulate one subject's exam, write it as DICOM plus ground truth, and describe what was written."""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.phantom.dicom_export import write_series
from training.phantom.geometry import Pose, SeriesGeometry
from training.phantom.lesions import LESION_PART_CODES
from training.phantom.options import KNOWN_ROLES, PhantomOptions
from training.phantom.protocols import SeriesPlan, describe_sequence
from training.phantom.simulation import ExamSimulation
from training.phantom.tissues import TISSUES, tissue_params
from training.phantom.truth import write_params, write_volume
from training.phantom.types import Protocol, SimulatedSeries

__all__ = ["PhantomStudy", "SeriesTruth", "generate_study"]

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SeriesTruth:
    """What was written for one series and how it was acquired.

    ``noise_sigma`` is the Gaussian sigma of each quadrature channel in pixel units (where the g-factor is 1 when
    noise is spatially varying); for ``adc`` it is the first-order noise of the ADC of white matter
    (1e-6 mm^2/s). ``pose`` maps subject to scanner coordinates (see ``Pose``); ``directory`` is None when no DICOM
    was written.
    """

    role: str
    series_instance_uid: str
    series_number: int
    description: str
    directory: Path | None
    noise_sigma: float
    pose: Pose
    geometry: SeriesGeometry
    protocol: Protocol
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class PhantomStudy:
    """A generated study: where its DICOM and truth went, each series' truth, and every parameter used."""

    out_dir: Path
    dicom_dir: Path
    truth_dir: Path
    series: dict[str, SeriesTruth]
    params: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "series"


def generate_study(options: PhantomOptions, out_dir: Path, *, progress: Progress | None = None) -> PhantomStudy:
    """Simulate one exam and write ``out_dir/dicom/<NNN>_<description>/`` and ``out_dir/truth/``.

    Parameters
    ----------
    options:
        What to simulate (see ``PhantomOptions``); the same options give byte-identical pixel data.
    out_dir:
        Destination folder (created). Each series folder this run writes is emptied first, so a re-run never
        leaves stale slices behind; truth files of the same names are overwritten.
    progress:
        Called with a stage name after each stage (the command line drives its progress bar with it).

    Returns
    -------
    PhantomStudy
        Paths, per-series truth and the parameters written to ``truth/params.json``.
    """
    out_dir = Path(out_dir)
    dicom_dir, truth_dir = out_dir / "dicom", out_dir / "truth"
    sim = ExamSimulation(options, progress)
    sim.build_subject()
    # Stages overlap in threads (NumPy, SimpleITK and zlib release the GIL): the 2D series are simulated beside the
    # T1 series, each series goes to the DICOM writer as soon as its pixels exist, and the truth volumes are
    # compressed while the rest runs. Every stage uses its own random stream, so the result does not depend on the
    # scheduling.
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantom-2d") as simulator,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantom-dicom") as writer,
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="phantom-truth") as compressor,
    ):
        written: dict[str, Future[SeriesTruth]] = {}
        pending: list[Future[Path]] = []

        def ready(role: str) -> None:
            written[role] = writer.submit(_write_series, sim, role, dicom_dir)
            if options.save_series_truth:
                path = truth_dir / "series" / f"{role}.nii.gz"
                pending.append(compressor.submit(write_volume, path, sim.pixels[role], sim.plans[role].geometry))

        two_d = [role for role in ("t2", "flair", "adc") if role in options.roles]
        simulated = [simulator.submit(sim.simulate_2d, role) for role in two_d]
        sim.simulate_t1(ready=ready)
        t1_geometry = sim.plans["t1_pre"].geometry
        for name, array in sim.truth.items():
            pending.append(compressor.submit(write_volume, truth_dir / f"{name}.nii.gz", array, t1_geometry))
        for role, future in zip(two_d, simulated, strict=True):
            future.result()
            ready(role)
        start = time.perf_counter()
        series = {role: written[role].result() for role in KNOWN_ROLES if role in written}
        params = _params(sim, series)
        write_params(truth_dir, params, list(sim.truth))
        for path_future in pending:
            path_future.result()
        sim.timings["wait_for_writers"] = time.perf_counter() - start
    sim.progress("truth")
    logger.info("Phantom study (seed %d) written to %s: %d series", options.seed, out_dir, len(series))
    return PhantomStudy(out_dir, dicom_dir, truth_dir, series, params, dict(sim.timings))


def _write_series(sim: ExamSimulation, role: str, dicom_dir: Path) -> SeriesTruth:
    """Hand one simulated series to the DICOM exporter (unless DICOM is off) and describe it."""
    start = time.perf_counter()
    options = sim.options
    plan: SeriesPlan = sim.plans[role]
    uid = sim.series_uid(role)
    directory = dicom_dir / f"{plan.protocol.series_number:03d}_{_slug(plan.protocol.description)}"
    files: tuple[Path, ...] = ()
    if options.write_dicom:
        if directory.exists():
            shutil.rmtree(directory)  # our own series folder from an earlier run: never mix slices of two runs
        directory.mkdir(parents=True)
        simulated = SimulatedSeries(
            protocol=plan.protocol,
            image=plan.geometry.image(np.ascontiguousarray(sim.pixels[role])),
            series_instance_uid=uid,
            slice_thickness_mm=plan.geometry.thickness,
            extra={"b_value": 1000.0} if role == "adc" else {},
        )
        written = write_series(
            simulated,
            sim.header,
            directory,
            output_format=options.output_format,
            transfer_syntax=options.transfer_syntax,
        )
        files = tuple(written)
    sim.record("dicom", start)
    return SeriesTruth(
        role=role,
        series_instance_uid=uid,
        series_number=plan.protocol.series_number,
        description=plan.protocol.description,
        directory=directory if options.write_dicom else None,
        noise_sigma=sim.sigmas[role],
        pose=sim.poses[role],
        geometry=plan.geometry,
        protocol=plan.protocol,
        files=files,
    )


_NOISE_UNITS = {
    "adc": "1e-6 mm^2/s (ADC of white matter, first order)",
    "t1_map": "ms (T1 of white matter; the noise is proportional to T1)",
}


def _params(sim: ExamSimulation, series: dict[str, SeriesTruth]) -> dict[str, Any]:
    """Every parameter of the simulation, JSON-ready (truth/params.json)."""
    o = sim.options
    pre = sim.poses["t1_pre"]
    header = sim.header
    lesions = []
    for lesion in sim.lesions:
        entry = lesion.to_dict()
        entry["centre_t1_pre_mm"] = pre.apply(lesion.centre[None, :])[0].tolist()
        lesions.append(entry)
    series_params = {}
    for role, plan in sim.plans.items():
        truth = series.get(role)
        series_params[role] = {
            "written": truth is not None,
            "series_instance_uid": sim.series_uid(role) if truth else None,
            "series_number": plan.protocol.series_number,
            "description": plan.protocol.description,
            "directory": str(truth.directory) if truth and truth.directory else None,
            "files": len(truth.files) if truth else 0,
            "protocol": _protocol_dict(plan.protocol),
            "physics": [describe_sequence(s) for s in plan.sequences],
            "dose": plan.dose,
            "grid": plan.geometry.to_dict(),
            "pose": sim.poses[role].to_dict(),
            "noise_sigma": sim.sigmas.get(role),
            "noise_sigma_units": _NOISE_UNITS.get(role, "pixel"),
            "intensity_scale": sim.scales.get(role),
        }
    d = sim.anatomy.deformation
    return {
        "generator": "gadsynth phantom",
        "options": o.to_dict(),
        "patient": {
            "name": header.patient_name,
            "id": header.patient_id,
            "sex": header.patient_sex,
            "birth_date": header.patient_birth_date,
            "weight_kg": header.patient_weight_kg,
            "size_m": header.patient_size_m,
        },
        "study": {
            "study_instance_uid": header.study_instance_uid,
            "frame_of_reference_uid": header.frame_of_reference_uid,
            "date": header.study_date.isoformat(),
            "time": header.study_time.isoformat(),
            "vendor": o.vendor,
            "field_strength_t": o.field_strength,
        },
        "contrast": {
            "agent": o.canonical_agent,
            "low_dose": o.dose,
            "standard_dose": 1.0,
            "field_strength_t": o.field_strength,
            "r1_per_mM_per_s": sim.r1,
            "model": "1/T1 = 1/T1_0 + r1 * C * d; C = compartment concentration at the standard dose (mM)",
        },
        "subject": {
            "template": "MNI152 2009a (nilearn), see training/phantom/NOTICE-MNI152.txt",
            "centre_subject_mm": sim.anatomy.centre.tolist(),
            "scale": d.scale.tolist(),
            "warp_rms_mm": float(np.sqrt(np.mean(np.sum(d.field**2, axis=-1)))),
            "model_grid": {
                "origin": sim.anatomy.grid.origin.tolist(),
                "spacing": sim.anatomy.grid.spacing,
                "shape_zyx": list(sim.anatomy.grid.shape),
            },
        },
        "tissues": {name: vars(tissue_params(name, o.field_strength)) for name in TISSUES},
        "structures": [
            {"name": c.name, "tissue": c.tissue, "concentration_mM_standard_dose": c.concentration_mm}
            for c in sim.composition.components
            if not c.lesion_id
        ],
        "lesions": lesions,
        "lesion_part_codes": LESION_PART_CODES,
        "series": series_params,
        "bias_field": sim.bias.to_dict(),
        "truth": {
            "grid": "t1_pre (its acquisition pose, no motion)",
            "intensity_scale": sim.scales.get("t1_pre"),
            "images": "x_pc, x_ld, x_sd: noise-free, bias included, same scale as t1_pre pixel values; y = x - x_pc",
            "gd_concentration_sd": "mM at the standard dose, partial-volume weighted",
        },
        "conventions": {
            "coordinates": "LPS mm (DICOM patient = scanner); subject coordinates are MNI152-aligned LPS mm",
            "pose": "p_scanner = R (p_subject - c) + c + t; t1_pre -> series s: pose_s o pose_pre^-1",
        },
    }


def _protocol_dict(protocol: Protocol) -> dict[str, Any]:
    data = {k: v for k, v in vars(protocol).items() if k != "contrast"}
    data["image_type"] = list(protocol.image_type)
    data["acquisition_time"] = protocol.acquisition_time.isoformat()
    if protocol.contrast is not None:
        c = protocol.contrast
        data["contrast"] = {
            "agent": c.agent,
            "volume_ml": c.volume_ml,
            "dose": c.dose,
            "concentration_mmol_per_ml": c.concentration_mmol_per_ml,
            "start_time": c.start_time.isoformat(),
        }
    else:
        data["contrast"] = None
    return data
