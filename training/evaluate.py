"""Evaluation harness: phantom test set -> the real pipeline from DICOM -> every metric, model beside baselines."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from training import metrics as m
from training.evaluate_data import (
    CE_FRACTION,
    SubjectImages,
    ensure_pipeline_run,
    ensure_study,
    load_subject,
    read_synthetic,
    subject_options,
)
from training.evaluate_score import LESION_METRICS, METHODS, SUBJECT_METRICS, aggregate, score_subject

__all__ = [
    "LESION_METRICS",
    "METHODS",
    "SUBJECT_METRICS",
    "EvaluationConfig",
    "aggregate",
    "evaluate",
    "parse_test_set",
    "score_subject",
]

logger = logging.getLogger(__name__)

Reference = Literal["clean", "noisy"]
Progress = Callable[[str], None]

SCHEMA_VERSION = 1
JSON_NAME = "evaluation.json"

_TEST_SET = re.compile(r"^phantom:(\d+)-(\d+)$")


def parse_test_set(text: str) -> list[int]:
    """Parse ``phantom:FROM-TO`` (both seeds included) into the list of subject seeds.

    Raises
    ------
    ValueError
        When the text is not of that form or TO < FROM.
    """
    match = _TEST_SET.match(text.strip())
    if match is None:
        raise ValueError(f"--test-set must look like phantom:FROM-TO (seeds, both included). Found {text!r}.")
    first, last = int(match.group(1)), int(match.group(2))
    if last < first:
        raise ValueError(f"--test-set {text!r}: the last seed must not be below the first ({last} < {first}).")
    return list(range(first, last + 1))


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """One evaluation run.

    Parameters
    ----------
    model:
        Model folder name under ``models_dir``.
    test_set:
        ``phantom:FROM-TO``.
    out_dir:
        Where ``evaluation.json``, ``report.md`` and the figures go.
    work_dir:
        Cache of generated studies and pipeline outputs (reused when options and model sha256 match).
    models_dir:
        Models folder (None: the repository's ``models/``).
    size:
        Phantom preset.
    reference:
        ``"clean"``: the noise-free standard dose of the simulation; ``"noisy"``: the acquired standard-dose series
        (what a clinical study would compare against).
    dose, field_strength, agent, vendor:
        Fix one flavour for every subject (None cycles through all of them by seed).
    ks:
        The k (%) of the top-k% enhancement overlap.
    examples:
        How many subjects get an example-slice figure.
    t1_map:
        Also write the quantitative T1 map into every test study (set by ``evaluate`` for a model that reads it).
        Every other series keeps its pixels, so two models evaluated with it see the same images.
    """

    model: str
    test_set: str
    out_dir: Path
    work_dir: Path
    models_dir: Path | None = None
    size: Literal["small", "full"] = "small"
    reference: Reference = "clean"
    dose: float | None = None
    field_strength: float | None = None
    agent: str | None = None
    vendor: str | None = None
    ks: tuple[int, ...] = m.DEFAULT_TOP_K_PERCENT
    examples: int = 3
    write_report: bool = True
    t1_map: bool = False
    seeds: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(parse_test_set(self.test_set)))
        if self.reference not in ("clean", "noisy"):
            raise ValueError(f"reference must be 'clean' or 'noisy'. Found {self.reference!r}.")
        if self.size not in ("small", "full"):
            raise ValueError(f"size must be 'small' or 'full'. Found {self.size!r}.")
        if not self.ks or any(not 0 < k <= 100 for k in self.ks):
            raise ValueError(f"ks must be percentages within (0, 100]. Found {list(self.ks)}.")

    def options_dict(self) -> dict[str, Any]:
        """The options that define the evaluation (written to the JSON)."""
        return {
            "size": self.size,
            "reference": self.reference,
            "dose": self.dose,
            "field_strength": self.field_strength,
            "agent": self.agent,
            "vendor": self.vendor,
            "ks": list(self.ks),
            "t1_map": self.t1_map,
            "work_dir": str(self.work_dir),
        }


def _method_images(images: SubjectImages, synthetic: npt.NDArray[np.float32] | None) -> dict[str, np.ndarray]:
    pc, ld = images.pc, images.ld
    methods: dict[str, np.ndarray] = {}
    if synthetic is not None:
        methods["model"] = synthetic
    methods["x_pc"] = pc
    methods["x_ld"] = ld
    methods["linear"] = pc + (ld - pc) / images.dose
    methods["oracle"] = pc + images.truth["y_sd"]
    return methods


def _model_info(model: str, models_dir: Path) -> dict[str, Any]:
    from operators.model_manifest import load_manifest

    manifest = load_manifest(models_dir, model)
    return {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.sha256,
        "mode": str(manifest.mode),
        "required_roles": [str(r) for r in manifest.required_roles],
    }


def _evaluate_subject(
    seed: int, config: EvaluationConfig, models_dir: Path, model_sha: str, figure_dir: Path | None
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    options = subject_options(seed, config)
    study_dir = ensure_study(options, config.work_dir / "studies")
    timings["phantom"] = time.perf_counter() - start
    entry: dict[str, Any] = {
        "seed": seed,
        "study_dir": str(study_dir),
        "flavour": {
            "vendor": options.vendor,
            "field_strength": options.field_strength,
            "agent": options.canonical_agent,
            "dose": options.dose,
            "t1_sequence": options.t1_sequence,
            "t1_orientation": options.t1_orientation,
            "output_format": options.output_format,
            "transfer_syntax": options.transfer_syntax,
        },
    }
    start = time.perf_counter()
    run_dir = config.work_dir / "runs" / f"{config.model}-{model_sha[:12]}" / study_dir.name
    run = ensure_pipeline_run(study_dir / "dicom", run_dir, model=config.model, models_dir=models_dir)
    timings["pipeline"] = time.perf_counter() - start
    entry["pipeline"] = run
    start = time.perf_counter()
    images = load_subject(study_dir)
    synthetic = None
    if run["status"] == "ok":
        synthetic = read_synthetic(Path(run["synthetic_dir"]), images.grid)
    timings["read"] = time.perf_counter() - start
    start = time.perf_counter()
    methods = _method_images(images, synthetic)
    entry.update(score_subject(images, methods, reference=config.reference, ks=config.ks))
    timings["metrics"] = time.perf_counter() - start
    if figure_dir is not None and synthetic is not None:
        from training.evaluate_report import example_figure

        entry["example_figure"] = str(example_figure(figure_dir / f"example_{seed:06d}.png", images, synthetic))
    entry["status"] = "ok" if synthetic is not None else "failed"
    if synthetic is None:
        entry["error"] = run.get("error") or "the pipeline wrote no synthetic series"
    entry["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return entry


def evaluate(config: EvaluationConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole evaluation; write ``evaluation.json`` (+ report and figures) into ``config.out_dir``.

    Parameters
    ----------
    config:
        What to evaluate and where.
    progress:
        Called with the seed after each subject (the command line's progress bar).

    Returns
    -------
    dict
        The JSON document (also written to ``out_dir/evaluation.json``).

    Raises
    ------
    operators.model_manifest.ModelManifestError
        When the model does not exist or its sha256 does not match.
    """
    from app.config import REPO_MODELS

    models_dir = config.models_dir or REPO_MODELS
    model = _model_info(config.model, models_dir)
    if "t1_map" in model["required_roles"] and not config.t1_map:
        config = replace(config, t1_map=True)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    figure_dir = config.out_dir / "figures" if config.write_report else None
    subjects: list[dict[str, Any]] = []
    for index, seed in enumerate(config.seeds):
        wants_figure = figure_dir is not None and index < config.examples
        subject = _evaluate_subject(seed, config, models_dir, model["sha256"], figure_dir if wants_figure else None)
        subjects.append(subject)
        logger.info("evaluate: seed %d %s in %.1f s", seed, subject["status"], sum(subject["timings_s"].values()))
        if progress is not None:
            progress(str(seed))
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        "model": model,
        "test_set": config.test_set,
        "seeds": list(config.seeds),
        "options": config.options_dict(),
        "methods": METHODS,
        "metric_definitions": {**SUBJECT_METRICS, **LESION_METRICS},
        "conventions": _conventions(config.reference),
        "subjects": subjects,
        "failures": [{"seed": s["seed"], "error": s.get("error")} for s in subjects if s["status"] != "ok"],
        "aggregates": aggregate(subjects, config.ks),
    }
    json_path = config.out_dir / JSON_NAME
    document["files"] = {"json": str(json_path)}
    if config.write_report:
        from training.evaluate_report import write_report

        document["files"].update(write_report(document, config.out_dir))
    json_path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    logger.info("evaluate: wrote %s", json_path)
    return document


def _conventions(reference: Reference) -> dict[str, str]:
    return {
        "reference": (
            "noise-free standard-dose image of the simulation (truth x_sd); reference contrast = truth y_sd"
            if reference == "clean"
            else "acquired standard-dose series resampled onto the t1_pre grid with the true head pose; "
            "reference contrast = that minus the acquired pre-contrast series"
        ),
        "grid": "every image is scored on the t1_pre grid (the truth grid); acquired low- and standard-dose series are "
        "resampled onto it with the simulation's true poses (linear interpolation), so baselines carry no "
        "registration error; the model's output went through the pipeline's own registration",
        "data_range": "R = max of the reference inside the brain mask, per subject (PSNR_I/B/L, MAE, L2)",
        "ssim": f"3D Gaussian window, sigma {m.SSIM_SIGMA} voxels, K1 0.01, K2 0.03, data range max - min of the "
        "whole reference",
        "psnr_identical": f"PSNR is capped at {m.PSNR_CAP_DB} dB when the error is zero",
        "ce_region": f"brain & (truth y_sd > {CE_FRACTION} * 95th percentile of truth x_pc in the brain)",
        "lesions": "truth lesion labels (necrosis included, oedema not); c-bar / c-hat / PSNR_L over enhancing "
        "lesions, false enhancement over non-enhancing ones; lesions with no voxel on the grid are listed, not scored",
        "false_enhancement": "mean predicted contrast (x - x_PC) in the region divided by the mean true contrast of "
        "the enhancing parts of the subject's enhancing lesions; _pos counts only positive contrast",
        "normal_brain": "brain minus lesions, necrosis and oedema, minus every voxel of true contrast above the CE "
        "threshold (vessels, sinuses, choroid plexus, dura), dilated by one voxel",
        "top_k": "Dice / Jaccard of the top-k% |x - x_PC| vs top-k% |reference contrast| over the 3D brain mask "
        "(seed 000 thresholds per slice in a tumour ROI); zero contrast is never selected; the ranking is "
        "scale-free, so linear scaling and x_LD always have the same curve",
        "aggregates": "mean / std (n - 1) / median / n over subjects for subject metrics and over lesions for lesion "
        "metrics; failed subjects are left out for every method",
        "pearson_std_error": "not here: gadsynth uncertainty-calibrate judges the uncertainty map "
        "(evaluation/uncertainty/)",
    }
