"""The pipeline, stage by stage: one function per stage and the one list that orders them (:data:`STAGES`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.job import Job, PipelineRequest, Stage
from app.model_choice import choose_by_roles, choose_named, named_choice
from operators.errors import InconsistentGeometryError, InputDicomError, RegistrationError, describe_series
from operators.model_manifest import ModelManifest
from operators.roles import Role

if TYPE_CHECKING:
    from app.pipeline import Pipeline

__all__ = ["PREVIEW_NAME", "STAGES", "STAGE_NAMES"]

logger = logging.getLogger(__name__)

PREVIEW_NAME = "preview.png"


def _prepare_output(pipeline: Pipeline, job: Job) -> None:
    from app.outputs import OutputFolderError, prepare_output

    try:
        job.staging = prepare_output(_final_output_dir(job), job.job_id)
    except OutputFolderError:
        job.may_write_report = False
        raise


def _load_study(pipeline: Pipeline, job: Job) -> None:
    from operators.study_loader import load_study

    folder = job.request.study_dir
    if folder is None or not folder.exists():
        raise InputDicomError(
            f"Input folder {folder} does not exist.", attribute="input", expected="a folder", found="nothing"
        )
    job.results.study = load_study(folder, study_instance_uid=job.request.study_instance_uid)


def _select_series(pipeline: Pipeline, job: Job) -> None:
    from operators.series_selector import select_roles

    study = _need(job.results.study, "study")
    request = job.request
    selection = select_roles(
        study,
        pipeline.rules,
        required=(),
        doses=dict(request.doses),
        agent=request.agent,
        field_strength_t=request.field_strength_t,
    )
    job.results.selection = selection
    job.results.contrast = selection.contrast
    for warning in selection.warnings:
        job.warn(warning)


def _choose_model(pipeline: Pipeline, job: Job) -> None:
    from operators.series_selector import require_roles
    from operators.study_checks import check_series_consistency

    selection = _need(job.results.selection, "selection")
    request = job.request
    name = request.model or pipeline.settings.model
    if request.manifest is not None:
        choice = named_choice(request.manifest)
    elif name:
        choice = choose_named(pipeline.settings.models_dir, name)
    else:
        choice = choose_by_roles(selection, pipeline.settings.models_dir)
    job.results.choice = choice
    manifest = choice.require()
    require_roles(selection, _roles(manifest, request), pipeline.rules)
    check_series_consistency(selection, _roles(manifest, request))
    logger.info(
        "job %s: model %s %s (sha256 %s): %s",
        job.job_id,
        manifest.name,
        manifest.version,
        manifest.sha256,
        choice.info.reason,
    )


def _build_volumes(pipeline: Pipeline, job: Job) -> None:
    from operators.series_to_volume import build_volumes
    from operators.volume_checks import check_volumes
    from operators.working_grid import to_working_grid, working_grid

    selection = _need(job.results.selection, "selection")
    try:
        volumes = build_volumes(selection, _roles(job.results.manifest, job.request))
    except InconsistentGeometryError as exc:
        raise _with_unread_files(exc, selection.study) from exc
    check_volumes(volumes)
    finest = pipeline.settings.min_working_spacing_mm
    grid = working_grid(volumes[Role.T1_PRE].image, finest) if Role.T1_PRE in volumes else None
    if grid is not None:  # a sub-millimetre study: every stage runs on the working grid
        job.results.on_working_grid = True
        volumes = to_working_grid(volumes, grid)
    job.results.volumes = volumes


def _with_unread_files(error: InconsistentGeometryError, study: Any) -> InconsistentGeometryError:
    """A missing slice is often a file the loader could not read: say so, with the reasons (never the paths)."""
    unread = [s for s in study.skipped if not s.reason.startswith(("not an image", "not DICOM", "duplicate"))]
    if not unread:
        return error
    reasons = sorted({s.reason.split(" (")[0] for s in unread})
    return InconsistentGeometryError(
        f"{error} {len(unread)} file(s) of the study could not be read ({'; '.join(reasons)}): a missing slice may "
        "be one of them.",
        series_instance_uid=error.series_instance_uid,
        attribute=error.attribute,
        expected=error.expected,
        found=error.found,
    )


def _register(pipeline: Pipeline, job: Job) -> None:
    from operators.registration import register_volumes

    volumes = _need(job.results.volumes, "volumes")
    job.results.registered = register_volumes(volumes, roles=_roles(job.results.manifest, job.request))


def _brain_mask(pipeline: Pipeline, job: Job) -> None:
    from operators.brain_mask import brain_mask

    volumes = _need(job.results.volumes, "volumes")
    if Role.T1_PRE not in volumes:
        raise RegistrationError(
            f"No t1_pre volume for the brain mask; found roles {sorted(r.value for r in volumes)}.",
            expected="t1_pre",
            found=", ".join(sorted(r.value for r in volumes)) or "none",
        )
    reference = volumes[Role.T1_PRE]
    label = describe_series(reference.series.series_instance_uid, reference.series.description)
    job.results.brain_mask = brain_mask(reference.image, label=label)


def _normalize(pipeline: Pipeline, job: Job) -> None:
    from operators.model_inputs import normalize

    results = job.results
    job.results.normalized = normalize(
        _need(results.registered, "registered"),
        _need(results.brain_mask, "brain_mask"),
        results.manifest,
        contrast=dict(results.contrast or {}),
    )


def _assess_inputs(pipeline: Pipeline, job: Job) -> None:
    """Score how far the study's inputs are from the model's training data (``operators.ood``), before inference.

    Outside the validated range the study is refused (``ood_action='refuse'``) or its result is marked: a warning
    (log, report.json, SR) and the writers' series descriptions. A model folder without ``ood.json`` is not scored.
    """
    from operators.ood import OOD_FILE, input_features, load_reference, refuse

    settings = pipeline.settings
    if settings.ood_action == "off":
        return
    results = job.results
    reference = _model_file(job, load_reference, OOD_FILE, "inputs not assessed")
    if reference is None:
        return
    normalized = _need(results.normalized, "normalized")
    assessment = reference.assess(input_features(normalized, results.registered), threshold=settings.ood_threshold)
    results.assessment = assessment
    pre = _need(results.registered, "registered").reference.series
    label = describe_series(pre.series_instance_uid, pre.description)
    if not assessment.outside:
        logger.info("job %s: %s: %s", job.job_id, label, assessment.describe())
        return
    if settings.ood_action == "refuse":
        raise refuse(assessment, series_instance_uid=pre.series_instance_uid, label=label)
    job.warn(f"{label}: {assessment.describe()}; the result is produced but is not validated for such input.")


def _model_file(job: Job, load: Callable[[Path], Any], name: str, without: str) -> Any:
    """An optional file of the job's model folder, read by ``load`` (None when the folder has none: logged). A file
    that cannot be read is the installation's fault, not the study's: the job fails as an internal error."""
    manifest = job.results.manifest
    try:
        loaded = load(manifest.folder)
    except ValueError as exc:
        raise RuntimeError(f"Model {manifest.name!r}: {exc}") from exc
    if loaded is None:
        logger.info("job %s: model %s has no %s; %s", job.job_id, manifest.name, name, without)
    return loaded


def _infer(pipeline: Pipeline, job: Job) -> None:
    from operators.inference import infer

    normalized = _need(job.results.normalized, "normalized")
    job.results.prediction = infer(normalized, pipeline.inference_settings, sessions=pipeline.sessions)


def _postprocess(pipeline: Pipeline, job: Job) -> None:
    from operators.postprocess import postprocess

    results = job.results
    normalized = _need(results.normalized, "normalized")
    synthetic = postprocess(_need(results.prediction, "prediction"), normalized)
    if results.on_working_grid:
        from operators.series_to_volume import build_volume
        from operators.working_grid import to_source_grid

        selection = _need(results.selection, "selection")
        results.source_reference = build_volume(selection.roles[Role.T1_PRE], Role.T1_PRE)
        results.synthetic_work = synthetic
        clip = results.manifest.postprocess.clip_negative
        synthetic = to_source_grid(synthetic, results.source_reference, normalized.x_pc, clip_negative=clip)
    results.synthetic = synthetic


def _uncertainty(pipeline: Pipeline, job: Job) -> None:
    """The synthetic image's per-voxel std and low-confidence region (``operators.uncertainty``), for models whose
    folder has an uncertainty.json; computed on the grid the model ran on, written on the source grid."""
    from operators.uncertainty import UNCERTAINTY_FILE, load_uncertainty_model, uncertainty_map

    if not pipeline.settings.uncertainty:
        return
    results = job.results
    model = _model_file(job, load_uncertainty_model, UNCERTAINTY_FILE, "no uncertainty map")
    if model is None:
        return
    import SimpleITK as sitk

    work = _need(results.synthetic_work or results.synthetic, "synthetic")  # the grid the model ran on
    contrast = sitk.GetArrayFromImage(work.enhancement)
    synthetic = sitk.GetArrayViewFromImage(work.synthetic)  # read only: no copy of the volume
    results.uncertainty = uncertainty_map(
        model, contrast, _need(results.normalized, "normalized"), work.mask, synthetic
    )
    summary = results.uncertainty.summary
    logger.info(
        "job %s: uncertainty std median %.3g, p95 %.3g in the brain; low confidence %.2f ml (%.2f %% of the brain)",
        job.job_id,
        summary["brain"]["median"] or 0.0,
        summary["brain"]["p95"] or 0.0,
        summary["low_confidence_ml"],
        100.0 * summary["low_confidence_fraction_of_brain"],
    )


def _uncertainty_on_source_grid(job: Job) -> tuple[Any, Any]:
    """The std image and the low-confidence mask on the grid the outputs are written on (None, None without)."""
    results = job.results
    if results.uncertainty is None:
        return None, None
    import numpy as np
    import SimpleITK as sitk

    grid = results.normalized.reference if results.normalized is not None else None
    std = sitk.GetImageFromArray(results.uncertainty.std)
    low = sitk.GetImageFromArray(results.uncertainty.low_confidence.astype(np.uint8))
    if grid is not None:
        std.CopyInformation(grid)
        low.CopyInformation(grid)
    if results.source_reference is not None:  # the study ran on a working grid: back to the source's
        target = results.source_reference.image
        std = sitk.Resample(std, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        low = sitk.Resample(low, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return std, sitk.GetArrayFromImage(low).astype(bool)


def _write_dicom(pipeline: Pipeline, job: Job) -> None:
    from operators.dicom_writer import write_outputs
    from operators.writers import ModelIdentity, input_series

    results = job.results
    registered = _need(results.registered, "registered")
    synthetic = _need(results.synthetic, "synthetic")
    manifest = results.manifest
    notes = list(job.warnings)  # the run's warnings so far (the SR lists them); the writers append theirs
    uncertainty, low_confidence = _uncertainty_on_source_grid(job)
    written = write_outputs(
        results.source_reference or registered.reference,
        synthetic.synthetic,
        _output_dir(job),
        model=ModelIdentity(manifest.name, manifest.version, manifest.sha256),
        settings=pipeline.writer_settings(job.request),
        enhancement_mask=synthetic.mask,
        synthetic_plus=synthetic.beyond,
        other_sources=input_series(registered, manifest.required_roles),  # what the model consumed, nothing else
        warnings=notes,
        uncertainty=uncertainty,
        low_confidence=low_confidence,
        outside_validated_range=results.assessment is not None and results.assessment.outside,
    )
    for note in notes[len(job.warnings) :]:
        job.warn(note)
    results.written = written


def _write_preview(pipeline: Pipeline, job: Job) -> None:
    from app.preview import write_preview

    results = job.results
    assessment = results.assessment
    results.preview = write_preview(
        _output_dir(job) / PREVIEW_NAME,
        _need(results.normalized, "normalized"),
        _need(results.synthetic_work or results.synthetic, "synthetic"),
        uncertainty=results.uncertainty,
        outside_validated_range=None if assessment is None or not assessment.outside else assessment.headline(),
    )


#: The pipeline, stage by stage (ARCHITECTURE.md). Every front door runs this list and no other.
STAGES: tuple[Stage, ...] = (
    Stage("prepare_output", "", _prepare_output, when=lambda request: request.output_dir is not None),
    Stage("load_study", "study", _load_study),
    Stage("select_series", "selection", _select_series),
    Stage("choose_model", "choice", _choose_model),
    Stage("build_volumes", "volumes", _build_volumes),
    Stage("register", "registered", _register),
    Stage("brain_mask", "brain_mask", _brain_mask),
    Stage("normalize", "normalized", _normalize),
    Stage("assess_inputs", "assessment", _assess_inputs),
    Stage("infer", "prediction", _infer),
    Stage("postprocess", "synthetic", _postprocess),
    Stage("uncertainty", "uncertainty", _uncertainty),
    Stage("write_dicom", "written", _write_dicom),
    Stage("preview", "preview", _write_preview, when=lambda request: request.preview),
)
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise RuntimeError(f"Stage input {what!r} is missing: an earlier stage did not run.")
    return value


def _roles(manifest: ModelManifest, request: PipelineRequest) -> tuple[Role, ...]:
    roles = list(manifest.required_roles)
    roles += [role for role in request.extra_roles if role not in roles]
    return tuple(roles)


def _final_output_dir(job: Job) -> Path:
    if job.request.output_dir is None:
        raise RuntimeError("This request has no output folder; it cannot run the writing stages.")
    return job.request.output_dir


def _output_dir(job: Job) -> Path:
    """Where the writers put files: the job's staging folder (moved into place when the job succeeds)."""
    return job.staging if job.staging is not None else _final_output_dir(job)
