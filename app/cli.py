"""The `gadsynth` command line: one subcommand per task, each with --help.

Subcommands live beside the code they drive and are registered here; imports are lazy so that
`gadsynth --help` stays fast.
"""

from __future__ import annotations

import logging
import sys

import typer

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="gadsynth",
    help="GadSynth: synthetic contrast-enhanced brain MRI (research use, not for diagnosis).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@cli.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _register() -> None:
    from training.phantom.cli import phantom

    cli.command("phantom", help="Simulate one subject's brain MRI exam as a DICOM study plus ground truth.")(phantom)

    from app.ingest_cli import register as register_ingest

    register_ingest(cli)

    from app.run_cli import run

    cli.command("run", help="Run the pipeline once on a study folder (same as python -m app).")(run)

    from app.service.cli import apikey, serve, worker

    cli.command(
        "serve", help="Start the HTTP service, the DICOM node and workers (embedded defaults: SQLite, local spool)."
    )(serve)
    cli.command("worker", help="Start worker processes only (many-machine installations).")(worker)
    cli.command("apikey", help="Make an API key for the service (prints the key and its hashed entry).")(apikey)

    from training.bench.cli import bench

    cli.command("bench", help="Speed and memory benchmarks; JSON plus a Markdown table.")(bench)

    from training.train_cli import train

    cli.command("train", help="Train a network (phantom, DICOM or NIfTI data) and export its model folder.")(train)

    from training.evaluate_cli import evaluate, evaluate_summary

    cli.command("evaluate", help="Score a model on phantom subjects through the pipeline, beside the baselines.")(
        evaluate
    )
    cli.command("evaluate-summary", help="A model's evaluations side by side; optionally into its MODEL_CARD.md.")(
        evaluate_summary
    )

    from training.trust_cli import ood_calibrate, uncertainty_calibrate

    cli.command("uncertainty-calibrate", help="Fit a model's error model (uncertainty map) and judge it.")(
        uncertainty_calibrate
    )
    cli.command("ood-calibrate", help="Build a model's input-distribution reference and measure its AUC.")(
        ood_calibrate
    )


_register()


def main() -> None:
    """Console-script entry point."""
    cli()
