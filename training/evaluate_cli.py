"""`gadsynth evaluate`: score a model on a phantom test set through the real pipeline, beside the baselines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

__all__ = ["evaluate"]

logger = logging.getLogger(__name__)


def evaluate(
    model: str = typer.Option(..., "--model", help="Model folder name under the models folder."),
    test_set: str = typer.Option(..., "--test-set", help="phantom:FROM-TO (seeds, both included)."),
    json_output: bool = typer.Option(False, "--json", help="Print the JSON document instead of a table."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: evaluation/<model>)."),
    work_dir: Path | None = typer.Option(
        None, "--work-dir", help="Cache of generated studies and pipeline runs (default: <out>/work)."
    ),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Models folder (default: the repository's)."),
    size: str = typer.Option("small", "--size", help="Phantom preset: small (4 mm, fast) or full (1 mm)."),
    reference: str = typer.Option(
        "clean", "--reference", help="clean (noise-free simulated standard dose) or noisy (the acquired series)."
    ),
    dose: float | None = typer.Option(None, "--dose", help="Fix the low dose (default: cycle 0.1 to 0.33)."),
    field_strength: float | None = typer.Option(None, "--field", help="Fix the field strength, 1.5 or 3 T."),
    agent: str | None = typer.Option(None, "--agent", help="Fix the contrast agent (default: cycle all)."),
    vendor: str | None = typer.Option(None, "--vendor", help="Fix the vendor flavour (default: cycle all)."),
    examples: int = typer.Option(3, "--examples", min=0, help="Subjects with an example-slice figure."),
    no_report: bool = typer.Option(False, "--no-report", help="Write only the JSON (no Markdown, no figures)."),
) -> None:
    """Evaluate MODEL on phantom subjects: every METHODS.md section 6 metric, beside x_PC, x_LD and linear scaling.

    Each subject is simulated (cached in the work folder), run through the pipeline from DICOM, read back and
    scored. Writes evaluation.json, report.md and figures/ into the output folder.

    Exit codes: 0 every subject evaluated; 1 a subject's pipeline run failed (still reported) or an internal error;
    2 bad options or an unknown model.
    """
    from tqdm import tqdm

    from operators.model_manifest import ModelManifestError
    from training.evaluate import EvaluationConfig
    from training.evaluate import evaluate as run_evaluation
    from training.evaluate_report import SUMMARY_COLUMNS, summary_rows

    out_dir = out or Path("evaluation") / model
    try:
        config = EvaluationConfig(
            model=model,
            test_set=test_set,
            out_dir=out_dir,
            work_dir=work_dir or out_dir / "work",
            models_dir=models_dir,
            size=size,  # type: ignore[arg-type]  # validated in __post_init__
            reference=reference,  # type: ignore[arg-type]
            dose=dose,
            field_strength=field_strength,
            agent=agent,
            vendor=vendor,
            examples=examples,
            write_report=not no_report,
        )
        # Fail on bad flavour options before any work: build the first subject's phantom options.
        from training.evaluate_data import subject_options

        subject_options(config.seeds[0], config)
    except (ValueError, KeyError) as exc:
        typer.echo(f"Bad option: {exc}", err=True)
        raise typer.Exit(2) from None
    with tqdm(total=len(config.seeds), desc=f"evaluate {model}", unit="subject", disable=None) as bar:
        try:
            document = run_evaluation(config, progress=lambda _: bar.update())
        except ModelManifestError as exc:
            typer.echo(f"Model: {exc}", err=True)
            raise typer.Exit(2) from None
    if json_output:
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
    else:
        header = ["method", *[h for _, h, _ in SUMMARY_COLUMNS]]
        rows = summary_rows(document)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        typer.echo(f"Report: {document['files'].get('markdown', document['files']['json'])}")
    if document["failures"]:
        for failure in document["failures"]:
            typer.echo(f"seed {failure['seed']} failed: {failure['error']}", err=True)
        raise typer.Exit(1)
