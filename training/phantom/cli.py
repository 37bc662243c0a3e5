"""`gadsynth phantom`: simulate one subject's brain MRI exam as a DICOM study plus ground truth."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["phantom"]

logger = logging.getLogger(__name__)

_ROLES = "t1_pre,t2,flair,adc,t1_low_dose,t1_standard_dose"
_KINDS = "metastasis,ring_metastasis,glioblastoma,nonenhancing"


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def phantom(
    seed: Annotated[int, typer.Option("--seed", help="Subject seed: anatomy, lesions, motion, noise and UIDs.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder (receives dicom/ and truth/).")],
    size: Annotated[str, typer.Option(help="full (1 mm T1, 256x256x192) or small (~4 mm, 64x64x48).")] = "full",
    field_strength: Annotated[float, typer.Option(help="Field strength in tesla: 1.5 or 3.0.")] = 3.0,
    agent: Annotated[str, typer.Option(help="Contrast agent (generic or brand name, e.g. gadobutrol, Dotarem).")] = (
        "gadobutrol"
    ),
    dose: Annotated[float, typer.Option(help="Low dose relative to 0.1 mmol/kg (seed papers: 0.1 to 0.33).")] = 0.25,
    roles: Annotated[
        str, typer.Option(help=f"Comma-separated series to write, from {_ROLES} and t1_map (a quantitative T1 map).")
    ] = _ROLES,
    vendor: Annotated[str, typer.Option(help="Header and naming flavour: siemens, ge or philips.")] = "siemens",
    t1_orientation: Annotated[str, typer.Option(help="3D T1 slab: sagittal or axial.")] = "sagittal",
    t1_sequence: Annotated[str, typer.Option(help="3D T1 sequence: mprage (inversion-prepared) or gre.")] = "mprage",
    resolution: Annotated[
        float | None, typer.Option(help="T1 voxel size override (mm, isotropic); other series scale alike.")
    ] = None,
    noise: Annotated[float, typer.Option(help="Noise sigma as a fraction of the 99th-percentile signal.")] = 0.02,
    noise_spatially_varying: Annotated[
        bool, typer.Option(help="Parallel-imaging g-factor: noise up to 1.5x higher in the FOV centre.")
    ] = False,
    bias: Annotated[float, typer.Option(help="Receive-bias amplitude (fraction; 0 = none).")] = 0.15,
    lesion_count: Annotated[int | None, typer.Option(help="Number of lesions (default: 0 to 3 from the seed).")] = None,
    lesion_kinds: Annotated[str, typer.Option(help=f"Comma-separated kinds drawn from: {_KINDS}.")] = _KINDS,
    lesion: Annotated[
        list[str] | None,
        typer.Option(
            help="Explicit lesion KIND[:DIAMETER_MM] (repeatable; overrides --lesion-count).", show_default=False
        ),
    ] = None,
    deformation: Annotated[bool, typer.Option(help="Per-subject elastic warp and size scaling.")] = True,
    head_rotation: Annotated[float, typer.Option(help="Largest head rotation in the scanner (degrees).")] = 6.0,
    motion: Annotated[bool, typer.Option(help="Independent rigid head motion between series.")] = True,
    motion_mm: Annotated[float, typer.Option(help="Largest motion: mm of translation and degrees of rotation.")] = 1.5,
    output_format: Annotated[str, typer.Option(help="classic (one file per slice) or enhanced (multi-frame).")] = (
        "classic"
    ),
    transfer_syntax: Annotated[
        str, typer.Option(help="explicit-le, implicit-le, jpeg-ls, jpeg2000 or rle (lossless).")
    ] = "explicit-le",
    save_series_truth: Annotated[
        bool, typer.Option(help="Also write truth/series/<role>.nii.gz with each series' exact pixel values.")
    ] = False,
    dicom: Annotated[bool, typer.Option(help="Write the DICOM series (--no-dicom: ground truth only).")] = True,
) -> None:
    """Simulate one subject's brain MRI exam (pre, low-dose and standard-dose T1, T2, FLAIR, ADC) from tissue
    physics, and write it as a DICOM study plus ground truth (NIfTI on the t1_pre grid and params.json)."""
    from tqdm import tqdm

    from training.phantom import PhantomOptions, generate_study, parse_lesion_spec
    from training.phantom.runtime import reuse_large_allocations

    try:
        options = PhantomOptions(
            seed=seed,
            size=size,  # type: ignore[arg-type]  # validated by PhantomOptions
            field_strength=field_strength,
            agent=agent,
            dose=dose,
            roles=_split(roles),
            vendor=vendor,  # type: ignore[arg-type]
            t1_orientation=t1_orientation,  # type: ignore[arg-type]
            t1_sequence=t1_sequence,  # type: ignore[arg-type]
            resolution_mm=resolution,
            noise=noise,
            noise_spatially_varying=noise_spatially_varying,
            bias=bias,
            lesion_count=lesion_count,
            lesion_kinds=_split(lesion_kinds),
            lesions=tuple(parse_lesion_spec(text) for text in lesion) if lesion else None,
            deformation=deformation,
            head_rotation_deg=head_rotation,
            motion=motion,
            motion_mm=motion_mm,
            output_format=output_format,  # type: ignore[arg-type]
            transfer_syntax=transfer_syntax,  # type: ignore[arg-type]
            save_series_truth=save_series_truth,
            write_dicom=dicom,
        )
    except (ValueError, KeyError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=2) from None
    reuse_large_allocations()
    # Stages: subject, T1 render and truth, one per series simulated, one per series written, truth files.
    total = 3 + 2 * len(options.roles) + 1
    with tqdm(total=total, desc=f"phantom seed {seed}", unit="stage", leave=False) as bar:

        def progress(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        study = generate_study(options, out, progress=progress)
    typer.echo(f"Phantom study written to {study.out_dir}")
    if options.write_dicom:
        typer.echo(f"  DICOM:        {study.dicom_dir} ({len(study.series)} series)")
        for truth in study.series.values():
            typer.echo(f"    #{truth.series_number:<4} {truth.role:<17} {truth.description}")
    typer.echo(f"  ground truth: {study.truth_dir} (params.json, x_pc/x_ld/x_sd/y_sd/y_ld, masks)")
