"""`gadsynth bench`: speed and memory benchmarks on this machine; JSON plus a short Markdown table."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

__all__ = ["bench", "bench_pipeline"]

logger = logging.getLogger(__name__)

#: The previous default model (ce-lowdose-v1 1.1.0, trained on whole 4 mm heads), kept to be timed beside the
#: current one (issue 12: the new default at most 1.3 times its median).
REFERENCE_MODEL = Path(__file__).resolve().parent / "reference" / "ce-lowdose-v1"
SECTIONS = ("phantom", "ingest", "pipeline", "warm", "large", "inference", "train", "service", "dicom")


def _run_child(command: list[str]) -> tuple[float, int, float]:
    """Run a command; return (wall seconds, exit code, peak resident memory of that process in MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if process.stderr is not None:
        process.stderr.close()
    return wall, os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024.0


def bench_pipeline(work_dir: Path, *, seed: int = 1, model: str | None = None) -> dict[str, Any]:
    """End-to-end time of `python -m app` on the standard full-size phantom study, per stage and peak memory.

    The pipeline runs in a child process so that its peak resident memory is its own (phantom generation is
    not counted).
    """
    from training.phantom import PhantomOptions, generate_study

    study_dir = work_dir / "phantom-full"
    if not (study_dir / "dicom").is_dir():
        generate_study(PhantomOptions(seed=seed, size="full"), study_dir)
    out_dir = work_dir / "pipeline-out"
    command = [sys.executable, "-m", "app", "-i", str(study_dir / "dicom"), "-o", str(out_dir), "-l", "WARNING"]
    if model:
        command += ["--model-name", model]
    wall, code, peak_mib = _run_child(command)
    report = json.loads((out_dir / "report.json").read_text())
    timings: dict[str, float] = report.get("timings_s", {})
    inference = timings.get("infer", 0.0)
    return {
        "status": report.get("status"),
        "exit_code": code,
        "model": (report.get("model") or {}).get("name"),
        "wall_s": round(wall, 2),
        "stages_s": timings,
        "stages_total_s": round(sum(timings.values()), 2),
        "non_inference_s": round(sum(timings.values()) - inference, 2),
        "inference_s": inference,
        "peak_rss_mib": round(peak_mib, 1),
        "onnx_vs_pytorch": "see the inference bench (gadsynth bench --only inference): ort_over_eager",
    }


def _markdown(results: dict[str, Any]) -> str:
    lines = ["| benchmark | figure | value |", "| --- | --- | --- |"]
    for section, figures in results.items():
        if not isinstance(figures, dict):
            continue
        for key, value in figures.items():
            if isinstance(value, dict):
                for sub, sub_value in value.items():
                    lines.append(f"| {section} | {key}.{sub} | {sub_value} |")
            else:
                lines.append(f"| {section} | {key} | {value} |")
    return "\n".join(lines) + "\n"


def _parse_shape(text: str) -> tuple[int, int, int]:
    """``"192,256,256"`` -> (192, 256, 256).

    Raises
    ------
    typer.BadParameter
        When the text is not three positive integers.
    """
    parts = [p.strip() for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise typer.BadParameter(f"expected three positive sizes like 192,256,256. Found {text!r}.")
    return sizes[0], sizes[1], sizes[2]


def bench(
    out: Path = typer.Option(Path("bench-results"), "--out", help="Folder for bench.json and bench.md."),
    only: str = typer.Option(",".join(SECTIONS), "--only", help=f"Comma-separated sections from {SECTIONS}."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Scratch folder (default: a temporary one)."),
    model: str | None = typer.Option(
        None, "--model", help="Model for the inference and pipeline benches (default: the pipeline's default)."
    ),
    models_dir: Path | None = typer.Option(
        None, "--models-dir", help="Models folder of the inference bench (default: the configured one)."
    ),
    inference_shape: str = typer.Option(
        "192,256,256", "--inference-shape", help="Volume of the inference bench (slices,rows,columns)."
    ),
    inference_repeats: int = typer.Option(
        3, "--inference-repeats", min=1, help="Timed runs per inference row, after one warm-up."
    ),
    reference: str = typer.Option(
        str(REFERENCE_MODEL),
        "--reference",
        help="Model folder timed beside the inference bench's model, whole volume as released ('none' to skip).",
    ),
    train_patch: int = typer.Option(
        80, "--train-patch", min=8, help="Patch edge (voxels) of the training-step bench (the 1 mm runs use 80)."
    ),
    service_jobs: int = typer.Option(20, "--service-jobs", min=1, help="Studies posted at once in the service bench."),
    service_workers: int = typer.Option(1, "--service-workers", min=1, help="Worker processes of the service bench."),
) -> None:
    """Time the phantom, the ingest (against MONAI Deploy's stock operators), the whole pipeline and the model's
    inference (ONNX Runtime as the pipeline runs it, beside PyTorch eager)."""
    sections = [s.strip() for s in only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise typer.BadParameter(f"Unknown sections {unknown}; choose from {SECTIONS}.", param_hint="--only")
    shape = _parse_shape(inference_shape)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    }
    with tempfile.TemporaryDirectory(prefix="gadsynth-bench-") as scratch:
        work = work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if "phantom" in sections:
            from training.bench.phantom import bench_phantom

            typer.echo("bench: phantom (full-size six-series study)...", err=True)
            results["phantom"] = bench_phantom(work / "phantom-bench")
        if "ingest" in sections:
            from training.bench.ingest import bench_ingest

            typer.echo("bench: ingest (ours vs MONAI Deploy stock operators)...", err=True)
            results["ingest"] = bench_ingest(work / "ingest-bench")
        if "pipeline" in sections:
            typer.echo("bench: pipeline end to end (full-size phantom study)...", err=True)
            results["pipeline"] = bench_pipeline(work, model=model)
        if "warm" in sections:
            from training.bench.warm import bench_warm

            typer.echo("bench: warm pipeline (two full-size studies through one Pipeline)...", err=True)
            results["warm"] = bench_warm(work, model=model)
        if "large" in sections:
            from training.bench.large import bench_large

            typer.echo("bench: a 0.5 mm 512x512x320 study through python -m app (time, peak RSS)...", err=True)
            results["large"] = bench_large(work)
        if "inference" in sections:
            from training.bench.inference import bench_inference

            typer.echo(f"bench: inference ({'x'.join(map(str, shape))}, ONNX Runtime vs PyTorch eager)...", err=True)
            previous = None if reference.lower() == "none" else Path(reference)
            results["inference"] = bench_inference(
                work / "inference-bench",
                models_dir=models_dir,
                model=model,
                shape=shape,
                repeats=inference_repeats,
                reference=previous if previous is None or previous.is_dir() else None,
            )
            (out / "inference.json").write_text(json.dumps(results["inference"], indent=2) + "\n")
        if "train" in sections:
            from app.config import load_settings
            from training.bench.train import bench_train

            typer.echo("bench: one training step per shipped network, contiguous vs channels_last...", err=True)
            results["train"] = bench_train(models_dir or load_settings().models_dir, patch=train_patch)
        if "service" in sections:
            from training.bench.service import bench_service

            typer.echo(
                f"bench: the HTTP service ({service_jobs} full-size studies at once; overhead over run)...", err=True
            )
            results["service"] = bench_service(work, jobs=service_jobs, workers=service_workers)
        if "dicom" in sections:
            from training.bench.dicom import bench_dicom

            typer.echo("bench: the DICOM node (C-STORE receive vs storescp; Orthanc round trip)...", err=True)
            results["dicom"] = bench_dicom(work)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text(_markdown(results))
    typer.echo(json.dumps(results, indent=2))
    typer.echo(f"Written {out / 'bench.json'} and {out / 'bench.md'}", err=True)
