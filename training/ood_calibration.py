"""Build a model's OOD reference from training-like phantoms, and measure how well the score separates shifted studies.

Reference: phantom subjects drawn like the model's training data (the 1 mm run's grid mix, noise range, vendors,
sequences), run through the pipeline up to normalization; each feature's range over them goes into ``ood.json``.

Judged on studies never in the reference: in-distribution = the evaluation's test subjects (1 mm and 4 mm sets);
shifted = the same kind of subjects with one thing changed beyond the training data: the voxel size (6 and 8 mm),
the noise (2 and 3 times the largest training noise), the receive-bias field (3 times the phantom's), the contrast
weighting (the FLAIR routed as the T1) and a T2 given as the T1. Reported: the AUC of the score, and the true- and
false-positive rates at the threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from operators.ood import FEATURES, OOD_FILE, OodReference, input_features

__all__ = ["SHIFTS", "OodCalibrationConfig", "auc", "calibrate_ood"]

logger = logging.getLogger(__name__)

#: The threshold, when none is given: the largest leave-one-out score of a reference study (each training subject
#: scored against the ranges of the other ones), rounded up to 0.05: no training-like study is ever flagged by
#: chance, and nothing of the test studies is used to choose it.
THRESHOLD_STEP = 0.05


def leave_one_out_scores(values: list[dict[str, float | None]]) -> list[float]:
    """Each reference study's score against the ranges of the others."""
    return [
        OodReference.from_values(values[:i] + values[i + 1 :], threshold=1.0, reference="").assess(values[i]).score
        for i in range(len(values))
    ]


#: The (agent, field) pairs the 1 mm training runs held out (training/runs/ce-lowdose-v1-1mm.sh).
TRAINING_EXCLUDED_PAIRS = (("gadobenate", 1.5), ("gadobutrol", 3.0))

#: Shift name -> what changes (phantom options, or the series routed as t1_pre).
SHIFTS: dict[str, dict[str, Any]] = {
    "voxel-6mm": {"resolution_mm": 6.0},
    "voxel-8mm": {"resolution_mm": 8.0},
    "noise-x2": {"noise": 0.08},
    "noise-x3": {"noise": 0.12},
    "bias-x3": {"bias": 0.45},
    "flair-as-t1": {"route": "flair"},
    "t2-as-t1": {"route": "t2"},
}


@dataclass
class OodCalibrationConfig:
    """Reference seeds (drawn like training), in-distribution test sets, shifted seeds, and where to write."""

    model: str
    reference_seeds: list[int]
    in_distribution: list[tuple[str, list[int], Path]]  # (size, seeds, work dir) like gadsynth evaluate's subjects
    shifted_seeds: list[int]
    out_dir: Path
    work_dir: Path
    models_dir: Path | None = None
    threshold: float | None = None  # None: from the reference set (leave-one-out, see THRESHOLD_STEP)
    reference_resolutions: tuple[float, ...] = (1, 1, 1, 1, 1, 1.25, 1.5, 2, 4)
    write_model: bool = True
    command: str = ""


def auc(negatives: list[float], positives: list[float]) -> float:
    """Area under the ROC curve: P(score of a shifted study > score of an in-distribution one), ties count half."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError("auc needs at least one negative and one positive score")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


class StudyRejected(Exception):
    """The pipeline rejected a study (an input error) before the score could be computed."""


def _check(run: Any, study: Path) -> None:
    """Raise for a failed pipeline run: StudyRejected for an input error, RuntimeError for anything else."""
    from operators.errors import InputDicomError

    if run.error is None:
        return
    if isinstance(run.error, InputDicomError):
        raise StudyRejected(f"{run.failed_stage}: {type(run.error).__name__}: {str(run.error)[:300]}")
    raise RuntimeError(f"{study.name}: failed at {run.failed_stage}: {run.error}")


def _features(pipeline: Any, study: Path, route: str | None = None) -> dict[str, float | None]:
    """The study's features, from the cache beside it when they were measured with these feature definitions."""
    key = hashlib.sha256(json.dumps(sorted(FEATURES.items())).encode()).hexdigest()[:10]
    cache = study / f"ood-features-{route or 't1_pre'}-{key}.json"
    if cache.is_file():
        cached: dict[str, float | None] = json.loads(cache.read_text())
        return cached
    values = _measure(pipeline, study, route)
    cache.write_text(json.dumps(values))
    return values


def _measure(pipeline: Any, study: Path, route: str | None = None) -> dict[str, float | None]:
    """The study through the pipeline up to normalization (``route``: that series given as t1_pre)."""
    from app.pipeline import PipelineRequest, StageResults
    from operators.roles import Role

    run = pipeline.run(PipelineRequest(study_dir=study / "dicom", last_stage="build_volumes"))
    _check(run, study)
    results: StageResults = run.results
    if route is not None:
        misrouted = pipeline_volume(study, results.study, Role(route))
        results.volumes = {**(results.volumes or {}), Role.T1_PRE: misrouted}
    rest = PipelineRequest(study_dir=study / "dicom", first_stage="register", last_stage="normalize")
    run = pipeline.run(rest, given=results)
    _check(run, study)
    return input_features(run.results.normalized, run.results.registered)


def pipeline_volume(study: Path, loaded: Any, role: Any) -> Any:
    """The volume of the series of ``role`` in a phantom study (``loaded``: the study the pipeline loaded)."""
    from operators.series_to_volume import build_volume

    params = json.loads((study / "truth" / "params.json").read_text())
    uid = params["series"][role.value]["series_instance_uid"]
    series = next(s for s in loaded.series if s.series_instance_uid == uid)
    return build_volume(series, role)


def calibrate_ood(config: OodCalibrationConfig) -> dict[str, Any]:
    """Build the reference, score the in-distribution and shifted studies, write ``ood.json`` and the report."""
    from app.config import REPO_MODELS, load_settings
    from app.pipeline import Pipeline
    from training.datasets.sources import PhantomVariation, phantom_options
    from training.evaluate import EvaluationConfig
    from training.evaluate_data import ensure_study, subject_options

    models_dir = config.models_dir or REPO_MODELS
    pipeline = Pipeline(load_settings(model=config.model, models_dir=models_dir, uncertainty=False, ood_action="off"))
    started = time.perf_counter()
    # the training runs' variation: the same seeds draw exactly the training subjects
    variation = PhantomVariation(
        size="full", resolutions_mm=config.reference_resolutions, exclude_pairs=TRAINING_EXCLUDED_PAIRS
    )
    reference_values = []
    for seed in config.reference_seeds:
        options = phantom_options(seed, variation)
        reference_values.append(_features(pipeline, ensure_study(options, config.work_dir / "reference")))
        logger.info("ood: reference seed %d: %s", seed, reference_values[-1])
    loo = leave_one_out_scores(reference_values)
    threshold = config.threshold
    if threshold is None:
        threshold = max(THRESHOLD_STEP, math.ceil(max(loo) / THRESHOLD_STEP - 1e-9) * THRESHOLD_STEP)
    reference = OodReference.from_values(
        reference_values,
        threshold=round(threshold, 4),
        reference=f"{len(config.reference_seeds)} phantom subjects drawn as the 1 mm training runs draw them "
        f"(phantom:{min(config.reference_seeds)}-{max(config.reference_seeds)}, grid mix "
        f"{', '.join(f'{r:g}' for r in config.reference_resolutions)} mm)",
        command=config.command,
        threshold_rule="given"
        if config.threshold is not None
        else f"largest leave-one-out score of a reference study, rounded up to {THRESHOLD_STEP:g}",
        leave_one_out_scores=[round(v, 4) for v in loo],
    )
    rows: list[dict[str, Any]] = []

    def score(kind: str, label: str, study: Path, route: str | None = None) -> None:
        try:
            values = _features(pipeline, study, route)
        except StudyRejected as exc:
            if kind != "shifted":
                raise RuntimeError(f"in-distribution study {label} was rejected: {exc}") from exc
            # the pipeline refuses it before the score is computed: no result either way (counts as flagged)
            rows.append({"kind": kind, "case": label, "study": study.name, "score": None, "refused": str(exc)})
            logger.info("ood: %s %s rejected by the pipeline: %s", kind, label, exc)
            return
        assessment = reference.assess(values)
        rows.append({"kind": kind, "case": label, "study": study.name, **assessment.to_dict()})
        logger.info("ood: %s %s score %.2f", kind, label, assessment.score)

    for size, seeds, work_dir in config.in_distribution:
        for seed in seeds:
            evaluation = EvaluationConfig(
                model=config.model,
                test_set="phantom:0-0",
                out_dir=config.out_dir,
                work_dir=work_dir,
                size=size,  # type: ignore[arg-type]
            )
            study = ensure_study(subject_options(seed, evaluation), work_dir / "studies")
            score("in-distribution", f"{size} seed {seed}", study)
    small = EvaluationConfig(
        model=config.model, test_set="phantom:0-0", out_dir=config.out_dir, work_dir=config.work_dir, size="small"
    )
    for name, change in SHIFTS.items():
        for seed in config.shifted_seeds:
            options = subject_options(seed, small)
            route = change.get("route")
            if route is None:
                options = dataclasses.replace(options, **change)
            study = ensure_study(options, config.work_dir / "shifted")
            score("shifted", f"{name} seed {seed}", study, route)

    def value(row: dict[str, Any]) -> float:  # a study the pipeline refused ranks above every scored one
        return math.inf if row["score"] is None else float(row["score"])

    negatives = [value(r) for r in rows if r["kind"] == "in-distribution"]
    positives = [value(r) for r in rows if r["kind"] == "shifted"]
    per_shift = {}
    for name in SHIFTS:
        cases = [r for r in rows if r["case"].startswith(name + " ")]
        per_shift[name] = {
            "auc": auc(negatives, [value(r) for r in cases]),
            "flagged": sum(1 for r in cases if r.get("outside_validated_range")),
            "refused_by_pipeline": sum(1 for r in cases if r["score"] is None),
            "n": len(cases),
        }
    document = {
        "schema_version": 1,
        "model": config.model,
        "reference": reference.to_dict(),
        "threshold": reference.threshold,
        "auc": auc(negatives, positives),
        "true_positive_rate": float(np.mean([p > reference.threshold for p in positives])),
        "true_positive_rate_note": "a shifted study the pipeline refused before scoring counts as flagged",
        "false_positive_rate": float(np.mean([n > reference.threshold for n in negatives])),
        "per_shift": per_shift,
        "shifts": SHIFTS,
        "studies": rows,
        "seconds": round(time.perf_counter() - started, 1),
        "command": config.command,
    }
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "ood.json").write_text(json.dumps(document, indent=2) + "\n")
    (config.out_dir / "report.md").write_text(_report(document))
    if config.write_model:
        path = models_dir / config.model / OOD_FILE
        path.write_text(json.dumps(reference.to_dict(), indent=2) + "\n")
        logger.info("ood: wrote %s", path)
    return document


def _report(document: dict[str, Any]) -> str:
    lines = [
        f"# Input distribution score of {document['model']}",
        "",
        f"Reference: {document['reference']['reference']}. Threshold {document['threshold']:g}.",
        f"AUC (every shifted study against every in-distribution one): **{document['auc']:.3f}**; at the threshold "
        f"true-positive rate {document['true_positive_rate']:.2f}, false-positive rate "
        f"{document['false_positive_rate']:.2f}. Command: `{document['command']}`.",
        "",
        "| shift | change | AUC | flagged by the score | refused by the pipeline first |",
        "|---|---|---|---|---|",
    ]
    for name, figures in document["per_shift"].items():
        lines.append(
            f"| {name} | {json.dumps(document['shifts'][name])} | {figures['auc']:.3f} | "
            f"{figures['flagged']} of {figures['n']} | {figures['refused_by_pipeline']} |"
        )
    lines += ["", "| study | kind | score | worst feature |", "|---|---|---|---|"]
    for row in document["studies"]:
        if row["score"] is None:
            lines.append(f"| {row['case']} | {row['kind']} | refused | {row['refused'][:120]} |")
        else:
            lines.append(f"| {row['case']} | {row['kind']} | {row['score']:.2f} | {row['worst_feature'] or '-'} |")
    return "\n".join(lines) + "\n"
