"""`gadsynth train`: train a differential, direct or zero-dose network and export its model folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["train"]

logger = logging.getLogger(__name__)


def _pair(text: str) -> tuple[str, float]:
    agent, _, field = text.partition("@")
    if not field:
        raise ValueError(f"--exclude-pair must be AGENT@FIELD, e.g. gadoterate@1.5; found {text!r}")
    return agent.strip(), float(field)


def _resolutions(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--phantom-resolutions must be comma-separated millimetres, e.g. 1,1,1.5,4; found {text!r}"
        ) from None


def train(
    out: Annotated[Path, typer.Option("--out", help="Model folder to export to (models/NAME).")],
    model: Annotated[
        str, typer.Option(help="differential (Pinetz et al.), direct (Bone et al.), zerodose or zerodose-t1map.")
    ] = ("differential"),
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 1000,
    patch: Annotated[int, typer.Option(help="Patch edge in voxels (cubic patches).")] = 64,
    batch: Annotated[int, typer.Option(help="Patches per step.")] = 2,
    data: Annotated[
        list[str] | None,
        typer.Option(help="phantom:A-B (seeds, B included), phantom:A- (endless), dicom:DIR or nifti:DIR; repeatable."),
    ] = None,
    val: Annotated[
        list[str] | None,
        typer.Option(help="Held-out validation data (same forms as --data; 'none' = no validation)."),
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Checkpoint of the same run to continue from.")] = None,
    threads: Annotated[int, typer.Option(help="torch threads.")] = 1,
    lr: Annotated[float, typer.Option(help="Adam learning rate at the start (cosine schedule).")] = 1e-4,
    lr_min: Annotated[float, typer.Option(help="Learning rate at the end.")] = 1e-6,
    loss: Annotated[
        str | None, typer.Option(help="weighted_huber, l1, l2 or ssim (default: weighted_huber / l2 for direct).")
    ] = None,
    margin: Annotated[int, typer.Option(help="Voxels ignored at each patch face in the loss.")] = 8,
    huber_eps: Annotated[
        float | None, typer.Option(help="Weighted Huber threshold in target units (default: the paper's 0.1).")
    ] = None,
    loss_reduction: Annotated[
        str,
        typer.Option(help="mean (each voxel counts the same), sum, or patch (each patch counts the same)."),
    ] = "mean",
    seed: Annotated[int, typer.Option(help="Seed of the initialization, subject order and patch draws.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    val_every: Annotated[int, typer.Option(help="Steps between validation losses.")] = 100,
    val_per_subject: Annotated[int, typer.Option(help="Fixed validation patches per held-out subject.")] = 2,
    width: Annotated[int | None, typer.Option(help="Channels at the finest scale (default 8 / 16 for direct).")] = None,
    depth: Annotated[int | None, typer.Option(help="Scales (differential) or levels (direct); default 4.")] = None,
    embedding_dim: Annotated[int | None, typer.Option(help="Condition embedding size (differential; 128).")] = None,
    voxel_condition: Annotated[
        bool, typer.Option(help="Differential: condition on the working grid's voxel size as well (5 features).")
    ] = False,
    sequence_condition: Annotated[
        bool,
        typer.Option(
            help="Differential, with --voxel-condition: condition on whether the T1 is inversion-prepared (6 features)."
        ),
    ] = False,
    voxel_scale: Annotated[
        float | None,
        typer.Option(help="With --voxel-condition: standardization scale of the voxel size in mm (default 0.1)."),
    ] = None,
    condition_gain: Annotated[
        bool, typer.Option(help="Differential: the condition also scales every block's channels (FiLM).")
    ] = False,
    gain_lr_factor: Annotated[
        float, typer.Option(help="With --condition-gain: learning rate of the gains as a multiple of --lr.")
    ] = 1.0,
    target_max: Annotated[
        float | None,
        typer.Option(help="Direct / zero-dose: top of the normalized target, 1 = pre-contrast p99.5 (default 4)."),
    ] = None,
    phantom_size: Annotated[str, typer.Option(help="Phantom grid: small (~4 mm) or full (1 mm).")] = "small",
    phantom_resolution: Annotated[float | None, typer.Option(help="Phantom voxel size override (mm).")] = None,
    phantom_resolutions: Annotated[
        str | None,
        typer.Option(help="Voxel sizes drawn per phantom subject, comma-separated mm (repeat one to weight it)."),
    ] = None,
    dose_min: Annotated[float, typer.Option(help="Lowest phantom low dose (relative to standard).")] = 0.1,
    dose_max: Annotated[float, typer.Option(help="Highest phantom low dose.")] = 0.33,
    exclude_pair: Annotated[
        list[str] | None, typer.Option(help="Hold out an AGENT@FIELD pair from the phantoms (repeatable).")
    ] = None,
    lesion_fraction: Annotated[float, typer.Option(help="Share of patches centred on enhancement.")] = 0.5,
    working_set: Annotated[int, typer.Option(help="Subjects in memory that batches draw from.")] = 8,
    refresh_every: Annotated[int, typer.Option(help="Steps between bringing in the next subject.")] = 4,
    flip: Annotated[bool, typer.Option(help="Random axis flips.")] = False,
    work: Annotated[Path | None, typer.Option(help="Checkpoints and history (default var/train/NAME).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessed sample cache (default var/train/cache).")] = None,
    version: Annotated[str, typer.Option(help="Model version for the manifest.")] = "0.1.0",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty model folder at the end.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar with the loss.")] = True,
    prepare_only: Annotated[
        bool, typer.Option(help="Only build the sample cache for this run (e.g. in a second process), then stop.")
    ] = False,
    pack_to: Annotated[
        Path | None,
        typer.Option(help="With --prepare-only: also copy the run's samples here, compact, to train elsewhere."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda[:N] or auto (CUDA when available).")] = "cpu",
    memory_format: Annotated[
        str,
        typer.Option(
            help="auto (channels_last on a CPU, where 3-D convolutions train 2.5-3x faster), contiguous or "
            "channels_last; a resumed run keeps its checkpoint's layout."
        ),
    ] = "auto",
    init_from: Annotated[
        Path | None,
        typer.Option(help="Start from a checkpoint or a model folder with the same network (fine-tuning)."),
    ] = None,
) -> None:
    """Train a network on phantom, DICOM or NIfTI data (preprocessed by the pipeline's own code), checkpoint it,
    and export it as a model folder (ONNX, manifest, sha256, model card)."""
    from operators.errors import InputDicomError
    from training.datasets import PatchSettings, PhantomVariation
    from training.train import TrainConfig, prepare
    from training.train import train as run_training

    val_specs: tuple[str, ...]
    if val is None:
        val_specs = ("phantom:5000-5003",) if all(s.startswith("phantom:") for s in data or ["phantom:"]) else ()
    else:
        val_specs = tuple(v for v in val if v.lower() != "none")
    try:
        config = TrainConfig(
            model=model,  # type: ignore[arg-type]  # validated by TrainConfig
            out=out,
            steps=steps,
            batch=batch,
            patch=patch,
            data=tuple(data or ("phantom:0-199",)),
            val=val_specs,
            lr=lr,
            lr_min=lr_min,
            loss=loss,  # type: ignore[arg-type]  # validated by LossConfig
            margin=margin,
            huber_eps=huber_eps,
            loss_reduction=loss_reduction,  # type: ignore[arg-type]  # validated by LossConfig
            seed=seed,
            threads=threads,
            checkpoint_every=checkpoint_every,
            val_every=val_every,
            val_per_subject=val_per_subject,
            width=width,
            depth=depth,
            embedding_dim=embedding_dim,
            voxel_condition=voxel_condition,
            sequence_condition=sequence_condition,
            voxel_scale=voxel_scale,
            condition_gain=condition_gain,
            gain_lr_factor=gain_lr_factor,
            target_max=target_max,
            variation=PhantomVariation(
                size=phantom_size,  # type: ignore[arg-type]  # validated by PhantomOptions
                resolution_mm=phantom_resolution,
                resolutions_mm=_resolutions(phantom_resolutions),
                dose_range=(dose_min, dose_max),
                exclude_pairs=tuple(_pair(p) for p in exclude_pair or ()),
            ),
            patches=PatchSettings(
                lesion_fraction=lesion_fraction, working_set=working_set, refresh_every=refresh_every, flip=flip
            ),
            work_dir=work,
            cache_dir=cache,
            version=version,
            overwrite=overwrite,
            progress=progress,
            device=device,
            memory_format=memory_format,  # type: ignore[arg-type]  # checked by TrainConfig
            init_from=init_from,
        )
        config.loss_config  # noqa: B018  # validates --loss before any data is prepared
        if prepare_only:
            keys = prepare(config, pack_to=pack_to)
            packed = f", packed into {pack_to}" if pack_to else ""
            typer.echo(f"Prepared {len(keys)} samples in {config.cache}{packed}")
            return
        result = run_training(config, resume=resume)
    except InputDicomError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=2) from None
    except (ValueError, KeyError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=2) from None
    timing = result.history["timing"]
    typer.echo(f"Trained {config.name}: {config.steps} steps, {timing['seconds_per_step']:.3f} s/step")
    if result.history["val"]:
        first, last = result.history["val"][0], result.history["val"][-1]
        typer.echo(
            f"  validation loss: {first['loss']:.5g} (step {first['step']}) -> {last['loss']:.5g} "
            f"(no-enhancement baseline {result.history['val_baseline']:.5g})"
        )
    typer.echo(f"  checkpoint: {result.checkpoint}")
    if result.manifest is not None:
        typer.echo(f"  model: {config.out} (sha256 {result.manifest.sha256[:12]})")


if __name__ == "__main__":  # `python -m training.train_cli`: training where only the training stack is installed
    typer.run(train)
