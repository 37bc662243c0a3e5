"""`gadsynth run`: the pipeline once on a study folder (the same run as `python -m app`)."""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["run"]


def run(
    in_dir: Path = typer.Argument(..., help="Study folder (DICOM files, searched recursively)."),
    out_dir: Path = typer.Argument(..., help="Output folder: synthetic series, SEG, report.json."),
    model: str | None = typer.Option(
        None, "--model", help="Model folder name under the models folder (default: chosen by the study's roles)."
    ),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Models folder (default: the repository's)."),
    preview: bool = typer.Option(False, "--preview", help="Also write preview.png (a few slices with the overlay)."),
    secondary_capture: bool = typer.Option(False, "--sc", help="Also write a multi-frame Secondary Capture."),
    beyond_dose: bool = typer.Option(False, "--beyond-dose", help="Also write the beyond-standard-dose series."),
    study: str | None = typer.Option(
        None, "--study", help="StudyInstanceUID to process when IN_DIR holds several (gadsynth inspect lists them)."
    ),
) -> None:
    """Synthesize a contrast-enhanced T1 series from IN_DIR into OUT_DIR.

    Exit codes: 0 success, 2 the study is not eligible or broken (reason in the log and report.json),
    1 internal error.
    """
    from pydantic import ValidationError

    from app.config import load_settings
    from app.runner import configuration_error, run_study

    overrides: dict[str, object] = {
        "write_secondary_capture": secondary_capture,
        "write_beyond_standard_dose": beyond_dose,
    }
    if model:
        overrides["model"] = model
    if models_dir:
        overrides["models_dir"] = models_dir
    try:
        settings = load_settings(**overrides)
    except (ValidationError, ValueError) as exc:
        raise typer.Exit(configuration_error(out_dir, exc)) from None
    report = run_study(in_dir, out_dir, settings=settings, preview=preview, study_instance_uid=study)
    if report.exit_code == 0:
        typer.echo(f"Outputs in {out_dir} (report: {out_dir / 'report.json'})")
    else:
        message = report.error.message if report.error else "see the log"
        typer.echo(f"Not processed ({report.status.value}): {message}", err=True)
    raise typer.Exit(report.exit_code)
