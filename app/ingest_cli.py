"""`gadsynth inspect` and `gadsynth to-nifti`: look at what the ingest stage sees in a study."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from operators.errors import InputDicomError, MultipleStudiesError
from operators.study import Series, Study

__all__ = ["inspect", "inspect_study", "register", "to_nifti", "write_niftis"]

logger = logging.getLogger(__name__)


def _geometry(features: dict[str, Any]) -> dict[str, Any]:
    pixel = features.get("PixelSpacing")
    return {
        "columns": features.get("Columns"),
        "rows": features.get("Rows"),
        "slices": features.get("NumberOfSlices"),
        "volumes": features.get("NumberOfVolumes"),
        "pixel_spacing_mm": pixel if isinstance(pixel, list) else None,
        "slice_spacing_mm": round(features["SliceSpacing"], 4) if features.get("SliceSpacing") else None,
        "orientation": features.get("Orientation"),
        "acquisition": features.get("MRAcquisitionType"),
    }


def inspect_study(
    study_dir: Path, *, rules: Path | None = None, study_instance_uid: str | None = None
) -> dict[str, Any]:
    """Load a study, select roles and describe every series (role or why none, and geometry) as a dict.

    Runs the pipeline's own first two stages (``load_study``, ``select_series``); ``study_instance_uid`` names
    the study when the folder holds several.

    Raises
    ------
    InputDicomError
        When the folder holds no readable MR study (see `operators.study_loader.load_study`).
    """
    from app.config import load_settings
    from app.pipeline import Pipeline, PipelineRequest
    from operators.series_features import series_features

    overrides = {} if rules is None else {"selection_rules": rules}
    request = PipelineRequest(study_dir=study_dir, study_instance_uid=study_instance_uid, last_stage="select_series")
    result = Pipeline(load_settings(**overrides)).run(request)
    if result.error is not None:
        raise result.error
    study, selection = result.results.study, result.results.selection
    if study is None or selection is None:  # pragma: no cover - both stages ran without error
        raise RuntimeError("the selection stages returned nothing")
    decisions = {d.series_instance_uid: d for d in selection.decisions}
    series_out = []
    for series in study.series:
        decision = decisions[series.series_instance_uid]
        series_out.append(
            {
                "series_number": series.series_number,
                "description": series.description,
                "series_instance_uid": series.series_instance_uid,
                "modality": series.modality,
                "instances": len(series.instances),
                "role": decision.role.value if decision.role else None,
                "reasons": decision.reasons,
                "geometry": _geometry(series_features(series)),
            }
        )
    return {
        "study_instance_uid": study.study_instance_uid,
        "roles": {role.value: s.series_instance_uid for role, s in selection.roles.items()},
        "contrast": {role.value: info.to_dict() for role, info in selection.contrast.items()},
        "series": series_out,
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in study.skipped],
    }


def _text_report(report: dict[str, Any]) -> str:
    lines = [f"Study {report['study_instance_uid']}"]
    for s in report["series"]:
        g = s["geometry"]
        size = f"{g['columns']}x{g['rows']}x{g['slices']}" + (f"x{g['volumes']}" if (g["volumes"] or 1) > 1 else "")
        spacing = "x".join(f"{v:g}" for v in (g["pixel_spacing_mm"] or [])) + (
            f"x{g['slice_spacing_mm']:g}" if g["slice_spacing_mm"] else ""
        )
        role = s["role"] or "-"
        lines.append(
            f"#{s['series_number']!s:>5} {s['description'][:40]:<40} {role:<17} {size:<14} {spacing + ' mm':<18} "
            f"{g['orientation'] or ''} {g['acquisition'] or ''}"
        )
        lines.append(f"        {s['reasons'][0] if s['reasons'] else ''}")
    for role, info in report["contrast"].items():
        lines.append(
            f"{role}: dose {info['dose']} ({info['source']}), agent {info['agent']}, "
            f"{info['field_strength_t']} T, r1 {info['r1']}"
        )
    if report["skipped"]:
        lines.append(f"Skipped {len(report['skipped'])} files (not DICOM images or duplicates); see --json.")
    return "\n".join(lines)


def _fail(exc: InputDicomError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=2)


def inspect(
    study_dir: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="Selection rules (JSON / YAML) instead of the default.")
    ] = None,
) -> None:
    """Print each series with its number, description, role (or why none) and geometry; every study in the folder
    (with --json, a folder of several studies gives {"studies": [...]})."""
    try:
        try:
            reports = [inspect_study(study_dir, rules=rules)]
            several = False
        except MultipleStudiesError as exc:
            reports = [inspect_study(study_dir, rules=rules, study_instance_uid=uid) for uid in exc.study_instance_uids]
            several = True
    except InputDicomError as exc:
        raise _fail(exc) from None
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        typer.echo(json.dumps({"studies": reports} if several else reports[0], indent=2))
    else:
        typer.echo("\n\n".join(_text_report(report) for report in reports))


def _nifti_name(series: Series, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", series.description).strip("_") or "series"
    name = f"{series.series_number if series.series_number is not None else 'x'}_{stem}"
    if name in taken:
        name = f"{name}_{series.series_instance_uid.replace('.', '')[-8:]}"
    taken.add(name)
    return name + ".nii.gz"


def write_niftis(path: Path, out_dir: Path, *, progress: bool = False) -> tuple[list[Path], list[str]]:
    """Write one NIfTI per series found under a study or series folder.

    Returns
    -------
    tuple
        The files written and one line per series that could not be rebuilt (label and reason).

    Raises
    ------
    InputDicomError
        When the folder holds no DICOM image.
    """
    import SimpleITK as sitk
    from tqdm import tqdm

    from operators.series_to_volume import build_volume
    from operators.study_loader import load_studies

    studies: list[Study] = load_studies(path, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: list[str] = []
    taken: set[str] = set()
    all_series = [s for study in studies for s in study.series]
    for series in tqdm(all_series, desc="writing NIfTI", unit="series", disable=not progress):
        try:
            volume = build_volume(series)
        except InputDicomError as exc:
            failed.append(f"{series.label}: {exc}")
            logger.warning("Not written: %s", exc)
            continue
        target = out_dir / _nifti_name(series, taken)
        sitk.WriteImage(volume.image, str(target), useCompression=True)
        written.append(target)
    return written, failed


def to_nifti(
    study_or_series_dir: Annotated[Path, typer.Argument(help="Folder of a study or of one series.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write <SeriesNumber>_<SeriesDescription>.nii.gz files.")],
) -> None:
    """Write one NIfTI per series (geometry as GadSynth rebuilds it, for checking against dcm2niix)."""
    try:
        written, failed = write_niftis(study_or_series_dir, out_dir, progress=True)
    except InputDicomError as exc:
        raise _fail(exc) from None
    for target in written:
        typer.echo(f"wrote {target}")
    for line in failed:
        typer.echo(f"skipped {line}", err=True)
    if not written:
        typer.echo("error: no series could be rebuilt as a 3D volume", err=True)
        raise typer.Exit(code=2)


def register(cli: typer.Typer) -> None:
    """Add `inspect` and `to-nifti` to a Typer application."""
    cli.command("inspect", help="Show each series of a study with its role (or why none) and its geometry.")(inspect)
    cli.command("to-nifti", help="Write one NIfTI per series of a study or series folder.")(to_nifti)
