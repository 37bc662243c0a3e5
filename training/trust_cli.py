"""`gadsynth uncertainty-calibrate` and `gadsynth ood-calibrate`: fit and judge what tells a reader where not to
trust a synthetic image (see ``training.uncertainty_calibration`` and ``training.ood_calibration``)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import typer

__all__ = ["ood_calibrate", "uncertainty_calibrate"]

logger = logging.getLogger(__name__)


def _command() -> str:
    return "gadsynth " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def uncertainty_calibrate(
    model: str = typer.Option("ce-lowdose-v1", "--model", help="Model folder name under the models folder."),
    calibration: str = typer.Option(
        "phantom:2000-2005", "--calibration", help="phantom:FROM-TO: subjects the error model is fitted on."
    ),
    test_set: str = typer.Option("phantom:1000-1011", "--test-set", help="phantom:FROM-TO: subjects it is judged on."),
    size: str = typer.Option("full", "--size", help="Phantom preset: full (1 mm) or small (4 mm)."),
    compare: str = typer.Option("flip,noise", "--compare", help="Sampling methods judged beside it ('' for none)."),
    out: Path = typer.Option(Path("evaluation/uncertainty"), "--out", help="Where the judgement goes."),
    work_dir: Path = typer.Option(Path("var/eval/work-full"), "--work-dir", help="Cache of simulated studies."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Models folder (default: the repository's)."),
    no_write: bool = typer.Option(False, "--no-write", help="Do not write uncertainty.json into the model folder."),
    sampling_from: Path | None = typer.Option(
        None, "--sampling-from", help="An earlier run's uncertainty.json: reuse its flip / noise rows (same test set)."
    ),
) -> None:
    """Fit MODEL's error model (its uncertainty.json) and judge it beside flip-TTA and noise-MC spreads.

    Exit codes: 0 written; 1 a subject's pipeline run failed or an internal error; 2 bad options.
    """
    from training.evaluate import parse_test_set
    from training.uncertainty_calibration import CalibrationConfig, calibrate

    try:
        config = CalibrationConfig(
            model=model,
            calibration_seeds=parse_test_set(calibration),
            test_seeds=parse_test_set(test_set),
            out_dir=out,
            work_dir=work_dir,
            models_dir=models_dir,
            size=size,
            compare=tuple(c for c in compare.split(",") if c),
            write_model=not no_write,
            sampling_from=sampling_from,
            command=_command(),
        )
        if set(config.compare) - {"flip", "noise"}:
            raise ValueError(f"--compare takes flip and/or noise; found {compare!r}")
        if size not in ("full", "small"):
            raise ValueError(f"--size must be full or small; found {size!r}")
    except ValueError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    document = calibrate(config)
    typer.echo(json.dumps({k: v for k, v in document.items() if k in ("kept", "test_set")}, indent=1))
    for name, scores in document["methods"].items():
        typer.echo(
            f"{name:34s} pearson {scores['pearson_pooled']:.3f} (per subject {scores['pearson_per_subject_mean']:.3f})"
            f"  dice-chance {scores['dice_margin_over_chance_mean']:.3f}"
        )


def ood_calibrate(
    model: str = typer.Option("ce-lowdose-v1", "--model", help="Model folder name under the models folder."),
    reference: str = typer.Option(
        "phantom:0-31", "--reference", help="phantom:FROM-TO drawn as the 1 mm training runs draw them."
    ),
    full_set: str = typer.Option("phantom:1000-1011", "--full-set", help="In-distribution 1 mm test subjects."),
    small_set: str = typer.Option("phantom:1000-1023", "--small-set", help="In-distribution 4 mm test subjects."),
    shifted: str = typer.Option("phantom:3000-3003", "--shifted", help="Seeds of each shifted kind (4 mm)."),
    threshold: float | None = typer.Option(
        None, "--threshold", min=0.01, help="Score above which a study is outside (default: from the reference set)."
    ),
    out: Path = typer.Option(Path("evaluation/ood"), "--out", help="Where the judgement goes."),
    work_dir: Path = typer.Option(Path("var/eval/ood"), "--work-dir", help="Cache of reference and shifted studies."),
    full_work_dir: Path = typer.Option(Path("var/eval/work-full"), "--full-work-dir", help="Cache of 1 mm studies."),
    small_work_dir: Path = typer.Option(Path("var/eval/work"), "--small-work-dir", help="Cache of 4 mm studies."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Models folder (default: the repository's)."),
    no_write: bool = typer.Option(False, "--no-write", help="Do not write ood.json into the model folder."),
) -> None:
    """Build MODEL's input-distribution reference (its ood.json) and measure the score's AUC on shifted studies.

    Exit codes: 0 written; 1 a pipeline run failed or an internal error; 2 bad options.
    """
    from training.evaluate import parse_test_set
    from training.ood_calibration import OodCalibrationConfig, calibrate_ood

    try:
        config = OodCalibrationConfig(
            model=model,
            reference_seeds=parse_test_set(reference),
            in_distribution=[
                ("full", parse_test_set(full_set), full_work_dir),
                ("small", parse_test_set(small_set), small_work_dir),
            ],
            shifted_seeds=parse_test_set(shifted),
            out_dir=out,
            work_dir=work_dir,
            models_dir=models_dir,
            threshold=threshold,
            write_model=not no_write,
            command=_command(),
        )
    except ValueError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    document = calibrate_ood(config)
    typer.echo(
        f"AUC {document['auc']:.3f}; at threshold {document['threshold']:g}: true-positive rate "
        f"{document['true_positive_rate']:.2f}, false-positive rate {document['false_positive_rate']:.2f}"
    )
    for name, figures in document["per_shift"].items():
        typer.echo(f"  {name:12s} AUC {figures['auc']:.3f}, flagged {figures['flagged']} of {figures['n']}")
