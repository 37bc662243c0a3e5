"""Fit a model's error model on calibration phantoms and judge it, beside flip-TTA and noise-MC spreads, on a test set.

For every subject the pipeline runs up to post-processing (the study is simulated and cached like
``gadsynth evaluate``'s), and per voxel inside the true brain mask we keep the synthetic image's absolute error against
the noise-free standard-dose truth and the error model's features (:func:`operators.uncertainty.error_features`).
Test subjects also get the two sampling methods of the brief: the std over the 8 axis flips of the input (flip TTA)
and over noise-perturbed inputs (each channel plus Gaussian noise of its own estimated sigma: an input-noise Monte
Carlo). Per method: Pearson correlation of std and |error| per voxel (pooled and per subject), and Dice of the top-k %
std region against the top-k % error region for k = 1..30 % (chance: Dice = k).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

from operators.ood import noise_sigma
from operators.uncertainty import FEATURES, UNCERTAINTY_FILE, UncertaintyModel, error_features

__all__ = ["CalibrationConfig", "calibrate", "dice_by_k"]

logger = logging.getLogger(__name__)

#: Voxels kept per subject (a fixed random quarter of the brain): the fit and the figures need no more.
KEEP_FRACTION = 0.25
KS = tuple(range(1, 31))
NOISE_SAMPLES = 6
#: Default low-confidence threshold: the std above which the error model expects errors beyond 10 % of the brain's
#: 95th percentile (well above the noise of every phantom flavour, below the contrast of every lesion).
LOW_CONFIDENCE_STD = 0.10


@dataclass
class CalibrationConfig:
    """What to calibrate and judge, and where."""

    model: str
    calibration_seeds: list[int]
    test_seeds: list[int]
    out_dir: Path
    work_dir: Path
    models_dir: Path | None = None
    size: str = "full"
    compare: tuple[str, ...] = ("flip", "noise")
    write_model: bool = True
    low_confidence_std: float = LOW_CONFIDENCE_STD
    #: An earlier run's uncertainty.json whose flip / noise rows (same test set: the same voxels) are reused
    #: instead of sampling again (the spreads do not depend on the error model; 2 minutes per 1 mm subject).
    sampling_from: Path | None = None
    features: tuple[str, ...] = tuple(FEATURES)
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def dice_by_k(score: npt.NDArray[np.float32], error: npt.NDArray[np.float32], ks: tuple[int, ...] = KS) -> list[float]:
    """Dice of the top-k % ``score`` voxels against the top-k % ``error`` voxels, for each k (percent)."""
    n = score.size
    order_s = np.argsort(-score, kind="stable")
    order_e = np.argsort(-error, kind="stable")
    out = []
    for k in ks:
        m = max(1, round(n * k / 100.0))
        top_s = np.zeros(n, dtype=bool)
        top_s[order_s[:m]] = True
        out.append(float(2.0 * top_s[order_e[:m]].sum() / (2 * m)))
    return out


def _subject(seed: int, config: CalibrationConfig, pipeline: Any, *, sampling: bool) -> dict[str, Any]:
    """Run one subject; return the kept voxels' errors and features (and sampling spreads when asked)."""
    import SimpleITK as sitk

    from app.pipeline import PipelineRequest
    from operators.inference import Prediction, brain_box, flip_passes, predict_volume
    from operators.postprocess import BRAIN_MARGIN_MM, brain_region, contrast_signal
    from training.evaluate import EvaluationConfig
    from training.evaluate_data import ensure_study, load_subject, subject_options

    cfg = EvaluationConfig(
        model=config.model,
        test_set=f"phantom:{seed}-{seed}",
        out_dir=config.out_dir,
        work_dir=config.work_dir,
        size=config.size,  # type: ignore[arg-type]
    )
    study = ensure_study(subject_options(seed, cfg), config.work_dir / "studies")
    run = pipeline.run(PipelineRequest(study_dir=study / "dicom", last_stage="postprocess"))
    if run.error is not None:
        raise RuntimeError(f"seed {seed}: the pipeline failed at {run.failed_stage}: {run.error}")
    results = run.results
    normalized = results.normalized
    contrast = sitk.GetArrayFromImage(results.synthetic.enhancement)
    synthetic = sitk.GetArrayFromImage(results.synthetic.synthetic)
    images = load_subject(study)
    brain = images.truth["brain_mask"] > 0
    keep = brain & (np.random.default_rng(seed).random(brain.shape) < KEEP_FRACTION)
    error = np.abs(synthetic - images.truth["x_sd"])
    started = time.perf_counter()
    features = error_features(contrast, normalized, synthetic)
    scale = float(np.percentile(normalized.x_pc[normalized.brain], 95))
    seconds: dict[str, float] = {"calibrated": time.perf_counter() - started}  # what the error model costs
    entry: dict[str, Any] = {
        "seed": seed,
        "dose": images.dose,
        "scale": scale,
        "error": error[keep],
        "features": {name: values[keep] for name, values in features.items()},
        "seconds": seconds,
    }
    if not sampling or not config.compare:
        return entry
    manifest = normalized.manifest
    session = pipeline.sessions.get(manifest, pipeline.inference_settings)
    spacing = tuple(reversed(normalized.reference.GetSpacing()))
    box = brain_box(normalized.brain, spacing, margin_mm=BRAIN_MARGIN_MM, divisor=manifest.spatial_divisor)
    inputs = normalized.inputs if box is None else np.ascontiguousarray(normalized.inputs[(slice(None), *box.slices)])
    region = brain_region(normalized.brain, spacing, BRAIN_MARGIN_MM)

    def contrast_of(output: np.ndarray) -> np.ndarray:
        full = output[0]
        if box is not None:
            full = np.zeros(normalized.inputs.shape[1:], dtype=np.float32)
            full[box.slices] = output[0]
        prediction = Prediction(full, manifest.name, manifest.version, manifest.sha256, [], False, 1, 0.0)
        return np.where(region, contrast_signal(prediction, normalized), np.float32(0.0))

    def spread(samples: list[np.ndarray]) -> np.ndarray:
        spread_values: np.ndarray = np.std(np.stack([s[keep] for s in samples]), axis=0)
        return spread_values

    if "flip" in config.compare:
        started, samples = time.perf_counter(), []
        for out, _ in flip_passes(lambda v: predict_volume(session, manifest, v, normalized.condition), inputs):
            samples.append(contrast_of(out))
        entry["flip"] = spread(samples)
        seconds["flip"] = time.perf_counter() - started
    if "noise" in config.compare:
        started, samples = time.perf_counter(), []
        inner = normalized.brain if box is None else normalized.brain[box.slices]
        sigmas = np.asarray([noise_sigma(channel, inner, erode=0) for channel in inputs], dtype=np.float32)
        rng = np.random.default_rng([seed, 7])
        for _ in range(NOISE_SAMPLES):
            noisy = inputs + rng.standard_normal(inputs.shape, dtype=np.float32) * sigmas[:, None, None, None]
            out, _ = predict_volume(session, manifest, noisy, normalized.condition)
            samples.append(contrast_of(out))
        entry["noise"] = spread(samples)
        seconds["noise"] = time.perf_counter() - started
    return entry


def _design(subjects: list[dict[str, Any]], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares design: a constant column (in each subject's brain p95) and one column per feature."""
    columns, targets = [], []
    for s in subjects:
        n = s["error"].size
        columns.append(np.column_stack([np.full(n, s["scale"]), *[s["features"][k] for k in names]]))
        targets.append(s["error"])
    return np.concatenate(columns).astype(np.float64), np.concatenate(targets).astype(np.float64)


def _method_scores(subjects: list[dict[str, Any]], score_of: Any) -> dict[str, Any]:
    pooled_s = np.concatenate([score_of(s) for s in subjects])
    pooled_e = np.concatenate([s["error"] for s in subjects])
    per_subject = [float(np.corrcoef(score_of(s), s["error"])[0, 1]) for s in subjects]
    dice = np.mean([dice_by_k(score_of(s), s["error"]) for s in subjects], axis=0)
    return {
        "pearson_pooled": float(np.corrcoef(pooled_s, pooled_e)[0, 1]),
        "pearson_per_subject_mean": float(np.mean(per_subject)),
        "pearson_per_subject_min": float(np.min(per_subject)),
        "pearson_per_subject": per_subject,
        "dice_by_k": {str(k): float(d) for k, d in zip(KS, dice, strict=True)},
        "dice_margin_over_chance_mean": float(np.mean(dice - np.asarray(KS) / 100.0)),
        "dice_margin_over_chance_min": float(np.min(dice - np.asarray(KS) / 100.0)),
    }


def calibrate(config: CalibrationConfig) -> dict[str, Any]:
    """Fit the error model on the calibration seeds, judge every method on the test seeds, write the results.

    Writes ``uncertainty.json`` into the model folder (unless ``write_model`` is off) and ``uncertainty.json``,
    ``report.md`` and ``dice_by_k.png`` into ``out_dir``.
    """
    from app.config import REPO_MODELS, load_settings
    from app.pipeline import Pipeline

    models_dir = config.models_dir or REPO_MODELS
    pipeline = Pipeline(load_settings(model=config.model, models_dir=models_dir, uncertainty=False, ood_action="off"))
    started = time.perf_counter()
    calibration = []
    for seed in config.calibration_seeds:
        calibration.append(_subject(seed, config, pipeline, sampling=False))
        logger.info("uncertainty: calibration seed %d done", seed)
    names = tuple(n for n in config.features if all(n in s["features"] for s in calibration))
    design, target = _design(calibration, names)
    weights, _ = nnls(design, target)
    model = UncertaintyModel(
        weights={name: float(w) for name, w in zip(names, weights[1:], strict=True)},
        const=float(weights[0]),
        low_confidence_std=config.low_confidence_std,
        provenance={
            "calibration_set": f"phantom:{min(config.calibration_seeds)}-{max(config.calibration_seeds)} "
            f"({config.size}), {len(config.calibration_seeds)} subjects, {int(target.size)} brain voxels",
            "error": "|synthetic - noise-free standard-dose truth| inside the true brain mask",
            "command": config.command,
        },
    )
    test = []
    for seed in config.test_seeds:
        test.append(_subject(seed, config, pipeline, sampling=True))
        logger.info("uncertainty: test seed %d done", seed)
    methods: dict[str, Any] = {}
    design_test = {id(s): _design([s], names)[0] for s in test}

    def calibrated(s: dict[str, Any]) -> np.ndarray:
        std: np.ndarray = design_test[id(s)] @ weights * math.sqrt(math.pi / 2)
        return std

    methods["calibrated"] = _method_scores(test, calibrated)
    methods["calibrated"]["seconds_per_subject"] = float(np.mean([s["seconds"]["calibrated"] for s in test]))
    for single in names:
        methods[f"feature:{single}"] = _method_scores(test, lambda s, n=single: s["features"][n])
    for name in config.compare:
        methods[name] = _method_scores(test, lambda s, n=name: s[n])
        methods[name]["seconds_per_subject"] = float(np.mean([s["seconds"][name] for s in test]))
    sampled = list(config.compare)
    if config.sampling_from is not None:
        earlier = json.loads(Path(config.sampling_from).read_text())
        test_set = _test_set(config)
        if earlier.get("test_set") != test_set:
            raise ValueError(f"{config.sampling_from} judged {earlier.get('test_set')!r}, not {test_set!r}")
        for name in ("flip", "noise"):
            if name in earlier["methods"] and name not in methods:
                methods[name] = {
                    **earlier["methods"][name],
                    "measured_by": earlier.get("command", ""),
                    "measured_in": str(config.sampling_from),
                }
                sampled.append(name)
    best = max(("calibrated", *sampled), key=lambda m: methods[m]["pearson_pooled"])
    document = {
        "schema_version": 1,
        "model": config.model,
        "test_set": _test_set(config),
        "kept": best,
        "error_model": model.to_dict(),
        "methods": methods,
        "ks": list(KS),
        "voxels": "a fixed random quarter of the true brain mask per subject",
        "seconds": round(time.perf_counter() - started, 1),
        "command": config.command,
    }
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "uncertainty.json").write_text(json.dumps(document, indent=2) + "\n")
    _figure(document, config.out_dir / "dice_by_k.png")
    (config.out_dir / "report.md").write_text(_report(document))
    if config.write_model and best == "calibrated":
        target_file = models_dir / config.model / UNCERTAINTY_FILE
        target_file.write_text(json.dumps(model.to_dict(), indent=2) + "\n")
        logger.info("uncertainty: wrote %s", target_file)
    elif config.write_model:
        logger.warning("uncertainty: %s tracked the error better than the error model; nothing written", best)
    return document


def _test_set(config: CalibrationConfig) -> str:
    seeds = config.test_seeds
    return f"phantom:{min(seeds)}-{max(seeds)} ({config.size}), {len(seeds)} subjects"


def _figure(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = document["ks"]
    for name, scores in document["methods"].items():
        if name.startswith("feature:"):
            continue
        ax.plot(ks, [scores["dice_by_k"][str(k)] for k in ks], label=f"{name} (r = {scores['pearson_pooled']:.2f})")
    ax.plot(ks, [k / 100 for k in ks], "k--", label="chance (Dice = k)")
    ax.set_xlabel("k (% of brain voxels)")
    ax.set_ylabel("Dice: top-k % std vs top-k % |error|")
    ax.set_title(f"{document['model']}: uncertainty vs error, {document['test_set']}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _report(document: dict[str, Any]) -> str:
    lines = [
        f"# Uncertainty of {document['model']}",
        "",
        f"Test set: {document['test_set']}; {document['voxels']}. Error: |synthetic - noise-free standard-dose truth|.",
        f"Kept: **{document['kept']}**. Command: `{document['command']}`.",
        "",
        "| method | Pearson (pooled) | Pearson per subject: mean / min | Dice - chance, k 1-30 %: mean / min | "
        "seconds per 1 mm study |",
        "|---|---|---|---|---|",
    ]
    for name, s in document["methods"].items():
        cost = f"{s['seconds_per_subject']:.2f}" if "seconds_per_subject" in s else "(feature of the error model)"
        if "measured_by" in s:
            name = f"{name} (sampled by an earlier run on the same voxels, sampling-run.json)"
        lines.append(
            f"| {name} | {s['pearson_pooled']:.3f} | {s['pearson_per_subject_mean']:.3f} / "
            f"{s['pearson_per_subject_min']:.3f} | {s['dice_margin_over_chance_mean']:.3f} / "
            f"{s['dice_margin_over_chance_min']:.3f} | {cost} |"
        )
    lines += ["", "![Dice by k](dice_by_k.png)", ""]
    return "\n".join(lines)
