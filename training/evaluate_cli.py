"""`gadsynth evaluate`: score a model on a phantom test set through the real pipeline, beside the baselines."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import typer

__all__ = ["evaluate", "evaluate_summary"]

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
    t1_map: bool = typer.Option(
        False,
        "--t1-map",
        help="Also write a quantitative T1 map into each test study (automatic for a model that reads one), so that "
        "a model without it is judged on the same studies.",
    ),
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
            t1_map=t1_map,
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


def _named_evaluation(item: str) -> tuple[str, dict[str, object]]:
    """``[NAME=]FOLDER`` -> (NAME, or the evaluated model's name and version; the evaluation).

    Raises
    ------
    ValueError
        When the folder holds no evaluation.
    """
    from training.evaluation_summary import load_evaluation

    name, sep, folder = item.partition("=")
    if not sep or Path(item).exists():  # a folder whose name holds '=' is a folder
        name, folder = "", item
    document = load_evaluation(Path(folder))
    model = cast(dict[str, Any], document["model"])
    return name or f"{model['name']} {model['version']}", document


def evaluate_summary(
    main: Path = typer.Argument(..., help="Folder (or evaluation.json) of the model's main test-set evaluation."),
    held_out: list[str] = typer.Option(
        [], "--held-out", help="LABEL=FOLDER of an evaluation on a held-out set (repeatable)."
    ),
    compare: list[str] = typer.Option(
        [],
        "--compare",
        help="[NAME=]FOLDER of another model's evaluation on the same test set (repeatable); NAME replaces the "
        "model's name and version in the tables (e.g. for a candidate that was not released).",
    ),
    held_out_compare: list[str] = typer.Option(
        [],
        "--held-out-compare",
        help="LABEL=[NAME=]FOLDER: another model's evaluation on the held-out set LABEL, shown beside it "
        "(repeatable, also for one LABEL).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Markdown file (default: <main>/SUMMARY.md)."),
    card: Path | None = typer.Option(None, "--card", help="Model folder whose MODEL_CARD.md Metrics section to fill."),
) -> None:
    """Write a model's evaluations side by side (main test set, subgroups, held-out sets, other models) as
    Markdown, and optionally into the Metrics section of its model card. The pairs the model was trained on are
    read from its training.json when --card is given.

    Exit codes: 0 written; 2 a missing or invalid evaluation, model card or option.
    """
    from training.evaluation_summary import load_evaluation, summary_markdown, update_model_card

    try:
        document = load_evaluation(main)
        held: dict[str, dict[str, object]] = {}
        for item in held_out:
            label, sep, folder = item.partition("=")
            if not sep or not label or not folder:
                raise ValueError(f"--held-out must be LABEL=FOLDER; found {item!r}")
            held[label] = load_evaluation(Path(folder))
        others = {}
        for item in compare:
            name, other = _named_evaluation(item)
            others[name] = other
        beside: dict[str, list[tuple[str, dict[str, object]]]] = {}
        for item in held_out_compare:
            label, sep, rest = item.partition("=")
            if not sep or label not in held:
                raise ValueError(
                    f"--held-out-compare must be LABEL=FOLDER with a LABEL given to --held-out; found {item!r}"
                )
            beside.setdefault(label, []).append(_named_evaluation(rest))
        pairs = _training_pairs(card) if card is not None else None
        text = summary_markdown(document, held_out=held, compare=others, training_pairs=pairs, held_out_compare=beside)
        target = out or Path(document["_path"]).parent / "SUMMARY.md"
        target.write_text(f"# {document['model']['name']}: evaluation summary\n\n" + text, encoding="utf-8")
        typer.echo(f"Summary: {target}")
        if card is not None:
            typer.echo(f"Model card: {update_model_card(card, text)}")
    except (ValueError, KeyError, OSError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None


def _training_pairs(folder: Path) -> list[tuple[str, float]] | None:
    """(agent, field strength) pairs a phantom-trained model saw, from its training.json (None if not recorded)."""
    from training.datasets import PhantomVariation

    record_path = folder / "training.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    variation = record.get("run", {}).get("variation")
    if not isinstance(variation, dict):
        return None
    return PhantomVariation(
        agents=tuple(variation["agents"]),
        field_strengths=tuple(float(f) for f in variation["field_strengths"]),
        exclude_pairs=tuple((str(a), float(f)) for a, f in variation["exclude_pairs"]),
    ).pairs()
