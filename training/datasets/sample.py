"""One training sample from a study, through the pipeline's own registration, brain mask and normalization code."""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from operators.model_manifest import ModelManifest, NormalizationKind
from operators.roles import Role
from training.losses import contrast_target
from training.manifests import noise_scale_gamma

if TYPE_CHECKING:
    import SimpleITK as sitk

    from app.pipeline import Pipeline, PipelineRequest, StageResults
    from operators.brain_mask import BrainMask
    from operators.study import ContrastInfo, Volume

# The preprocessing modules (SimpleITK, the pipeline's operators) are imported where a sample is built, so that a
# machine that only trains from a prepared cache (e.g. a GPU box) needs numpy, torch and pydantic alone.

__all__ = [
    "FOCUS_SIGMA_MM",
    "SAMPLE_FORMAT",
    "Sample",
    "load_sample",
    "sample_from_dicom",
    "sample_from_volumes",
    "save_sample",
    "training_roles",
]

logger = logging.getLogger(__name__)

#: Version of the cached sample layout; part of every cache key, so a change here invalidates old caches.
SAMPLE_FORMAT = 1
#: Smoothing of the enhancement map that patch sampling draws from (mm): about a small metastasis.
FOCUS_SIGMA_MM = 4.0


@dataclass
class Sample:
    """One preprocessed training subject on its t1_pre grid (arrays indexed slice, row, column).

    Parameters
    ----------
    image:
        float32 (channels, D, H, W): the model inputs in the manifest's channel order, exactly as the pipeline
        makes them at inference (``operators.model_inputs.normalize``).
    condition:
        float32 condition vector (differential models) or None.
    target:
        float32 (D, H, W). Differential: the contrast signal y_SD = p_SD * z_SD (z_SD normalized with sigma_LD);
        direct: x_SD in t1_pre's normalized scale.
    p:
        float32 (D, H, W): enhancement probability p_SD = sigmoid(w z_SD + b) (the loss weight).
    focus:
        float32 (D, H, W): the contrast signal p_SD * z_SD inside the brain, smoothed with a Gaussian of
        ``FOCUS_SIGMA_MM`` and divided by the noise level: compact enhancement (lesions) stands out, thin
        vessels, dura and noise fade. Patch sampling draws centres from it.
    brain:
        bool (D, H, W) brain mask.
    meta:
        JSON-ready: where the sample came from (UIDs, never patient data), the condition with its sources, noise
        levels, the gamma ratio <b, s_SD> / <b, s_LD> and the normalization parameters.
    """

    image: np.ndarray
    condition: np.ndarray | None
    target: np.ndarray
    p: np.ndarray
    focus: np.ndarray
    brain: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (D, H, W)."""
        d, h, w = self.target.shape
        return int(d), int(h), int(w)

    @property
    def gamma_ratio(self) -> float | None:
        """<b, s_SD> / <b, s_LD> of this subject (differential samples), the term of the paper's gamma."""
        value = self.meta.get("gamma_ratio")
        return None if value is None else float(value)


def training_roles(manifest: ModelManifest) -> tuple[Role, ...]:
    """The roles a training study must hold: the model's inputs plus the standard-dose T1 (the target)."""
    roles = list(manifest.required_roles)
    if Role.T1_STANDARD_DOSE not in roles:
        roles.append(Role.T1_STANDARD_DOSE)
    return tuple(roles)


def _array(image: sitk.Image) -> np.ndarray:
    import SimpleITK as sitk

    return np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)


def _spacing_zyx(image: sitk.Image) -> tuple[float, float, float]:
    x, y, z = image.GetSpacing()
    return float(z), float(y), float(x)


def _direct_target(
    manifest: ModelManifest, x_sd: np.ndarray, brain: np.ndarray, pre: Mapping[str, float]
) -> np.ndarray:
    """x_SD in t1_pre's normalized scale: what the direct strategy's ``undo`` maps back to intensities."""
    from operators.direct_normalization import normalize_target

    out = normalize_target(manifest.normalization, x_sd, dict(pre))
    if manifest.normalization.mask_outside_brain:
        out = out * brain
    return np.asarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _pipeline() -> Pipeline:
    """The pipeline whose stages make every sample (built once per process)."""
    from app.config import load_settings
    from app.pipeline import Pipeline

    return Pipeline(load_settings())


def _preprocess(request: PipelineRequest, given: StageResults | None = None) -> StageResults:
    """Run the pipeline's stages up to ``normalize`` for a training study; raise its input error, if any."""
    result = _pipeline().run(request, given)
    if result.error is not None:
        raise result.error
    return result.results


def sample_from_volumes(
    volumes: Mapping[Role, Volume],
    contrast: Mapping[Role, ContrastInfo],
    manifest: ModelManifest,
    *,
    mask: BrainMask | None = None,
    source: Mapping[str, Any] | None = None,
    reproducible: bool = True,
) -> Sample:
    """Register, mask and normalize one study exactly as the pipeline does, and build its training target.

    The inputs come from ``normalize`` (the inference code); the standard-dose side runs the same differential
    normalization against x_PC and is rescaled to the low-dose noise level: z_SD = (z~_SD - m_SD) / s_SD * sigma_LD
    (METHODS.md section 2), then y_SD = p_SD * z_SD.

    Parameters
    ----------
    volumes:
        Role -> source volume; must hold ``training_roles(manifest)``.
    contrast:
        Dose, agent, field strength and r1 per post-contrast role (``Selection.contrast`` or a sidecar).
    manifest:
        What the model takes (channels, normalization, condition).
    mask:
        A brain mask on the t1_pre grid; None computes it with the pipeline's atlas registration.
    source:
        JSON-ready description of where the study came from (kept in ``Sample.meta``).
    reproducible:
        Run registration and brain masking on one ITK thread: multi-threaded ITK metrics sum in a varying order,
        which moves the result by round-off (about 1e-6) from run to run; one thread makes a sample bit-identical
        every time, at about twice the registration time.

    Raises
    ------
    NoMatchingSeriesError
        When a needed role is missing.
    InputDicomError
        From registration, brain masking or normalization (see those functions).
    """
    from app.model_choice import named_choice
    from app.pipeline import PipelineRequest, StageResults
    from operators.errors import NoMatchingSeriesError

    roles = training_roles(manifest)
    missing = [r.value for r in roles if r not in volumes]
    if missing:
        found = ", ".join(sorted(r.value for r in volumes)) or "none"
        raise NoMatchingSeriesError(
            f"A training study needs roles {[r.value for r in roles]}; missing {missing} (found {found}).",
            attribute="role",
            expected=", ".join(r.value for r in roles),
            found=found,
        )
    request = PipelineRequest(
        study_dir=None,
        manifest=manifest,
        extra_roles=(Role.T1_STANDARD_DOSE,),
        first_stage="register",
        last_stage="normalize",
        itk_threads=1 if reproducible else None,
    )
    given = StageResults(volumes=dict(volumes), contrast=dict(contrast), choice=named_choice(manifest), brain_mask=mask)
    return _sample_from_results(_preprocess(request, given), manifest, source)


def _sample_from_results(results: StageResults, manifest: ModelManifest, source: Mapping[str, Any] | None) -> Sample:
    """The training sample (inputs as the pipeline made them, plus the standard-dose target) of one study."""
    from scipy import ndimage

    from operators.normalization import DifferentialNormalization

    registered, normalized, volumes = results.registered, results.normalized, results.volumes
    if registered is None or normalized is None or volumes is None:
        raise RuntimeError("the preprocessing stages returned no registered study or model inputs")
    roles = training_roles(manifest)
    reference = volumes[Role.T1_PRE]
    brain = normalized.brain
    x_pc = normalized.x_pc
    x_sd = _array(registered.images[Role.T1_STANDARD_DOSE])
    spacing = _spacing_zyx(registered.images[Role.T1_PRE])
    kind = manifest.normalization.kind
    spec = manifest.normalization
    if kind != NormalizationKind.DIFFERENTIAL:
        spec = spec.model_copy(update={"kind": NormalizationKind.DIFFERENTIAL})
    sd = DifferentialNormalization(spec).run(x_pc, x_sd, brain, spacing_zyx=spacing)
    meta: dict[str, Any] = {
        "format": SAMPLE_FORMAT,
        "source": dict(source or {}),
        "study_instance_uid": reference.series.study_instance_uid,
        "series": {role.value: volumes[role].series.series_instance_uid for role in roles},
        "model_mode": manifest.mode.value,
        "channels": list(manifest.channel_names),
        "condition": normalized.params.get("condition", {}),
        "sigma_sd": sd.sigma,
        "spacing_zyx_mm": list(spacing),
        "registration": registered.quality_report(),
        "brain_voxels": int(brain.sum()),
    }
    if kind == NormalizationKind.DIFFERENTIAL:
        sigma_ld = float(normalized.params["sigma"])
        z_sd = sd.z_ld * np.float32(sigma_ld / sd.sigma)
        y, p = contrast_target(torch.from_numpy(z_sd), sigma_ld)
        target, p_sd = y.numpy(), p.numpy()
        enhancement, noise = target, sigma_ld
        if normalized.s_ld is None:
            raise ValueError("the differential normalization returned no s_LD")
        meta["sigma_ld"] = sigma_ld
        meta["gamma_ratio"] = noise_scale_gamma([(brain, sd.s_ld, normalized.s_ld)])
        meta["normalization"] = {k: v for k, v in normalized.params.items() if k not in ("condition", "seconds")}
    else:
        target = _direct_target(manifest, x_sd, brain, normalized.params["per_role"]["t1_pre"])
        y, p = contrast_target(torch.from_numpy(sd.z_ld), sd.sigma)
        p_sd, enhancement, noise = p.numpy(), y.numpy(), sd.sigma
        meta["normalization"] = {"kind": kind.value, "per_role": normalized.params["per_role"]}
    focus_sigma = tuple(FOCUS_SIGMA_MM / s for s in spacing)
    focus = ndimage.gaussian_filter(np.where(brain, enhancement, 0.0).astype(np.float32), focus_sigma) / noise
    sample = Sample(
        image=np.ascontiguousarray(normalized.inputs, dtype=np.float32),
        condition=None if normalized.condition is None else np.asarray(normalized.condition, dtype=np.float32),
        target=np.ascontiguousarray(target, dtype=np.float32),
        p=np.ascontiguousarray(p_sd, dtype=np.float32),
        focus=np.ascontiguousarray(focus, dtype=np.float32),
        brain=np.ascontiguousarray(brain, dtype=bool),
        meta=meta,
    )
    logger.info(
        "training sample from study %s: shape %s, condition %s, enhancing voxels %d (focus > 3: %d)",
        meta["study_instance_uid"],
        sample.shape,
        None if sample.condition is None else [round(float(v), 4) for v in sample.condition],
        int(((sample.p > 0.5) & sample.brain).sum()),
        int((sample.focus > 3.0).sum()),
    )
    return sample


def sample_from_dicom(
    study_dir: Path,
    manifest: ModelManifest,
    *,
    doses: Mapping[Role, float] | None = None,
    agent: str | None = None,
    field_strength_t: float | None = None,
    source: Mapping[str, Any] | None = None,
) -> Sample:
    """A training sample from a DICOM study folder: the pipeline's stages from ``load_study`` to ``normalize``,
    with the standard-dose T1 carried along as the target.

    ``doses``, ``agent`` and ``field_strength_t`` stand in where the headers say nothing (as a request does).

    Raises
    ------
    InputDicomError
        When the folder holds no usable study, a needed role is missing, or a later stage fails.
    """
    from app.pipeline import PipelineRequest

    request = PipelineRequest(
        study_dir=Path(study_dir),
        manifest=manifest,
        doses=dict(doses or {}),
        agent=agent,
        field_strength_t=field_strength_t,
        extra_roles=(Role.T1_STANDARD_DOSE,),
        last_stage="normalize",
        itk_threads=1,
    )
    info = {"kind": "dicom", "path": str(study_dir), **dict(source or {})}
    return _sample_from_results(_preprocess(request), manifest, info)


def save_sample(sample: Sample, path: Path, *, compact: bool = False) -> Path:
    """Write a sample as an .npz (atomically: a partial file never has the final name).

    ``compact`` stores the float arrays as float16, zlib-compressed (about a third of the size; the normalized
    values are O(1), so the rounding, under 1e-3, is far below the noise level sigma of a few 1e-2). It is for
    carrying a prepared cache to another machine; ``load_sample`` reads both forms as float32.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    floats = {"image": sample.image, "target": sample.target, "p": sample.p, "focus": sample.focus}
    arrays: dict[str, np.ndarray] = {
        **{k: v.astype(np.float16) if compact else v for k, v in floats.items()},
        "brain": sample.brain,
        "meta": np.asarray(json.dumps(sample.meta, default=float)),
    }
    if sample.condition is not None:
        arrays["condition"] = sample.condition
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if compact:
                np.savez_compressed(stream, **arrays)  # type: ignore[arg-type]
            else:
                np.savez(stream, **arrays)  # type: ignore[arg-type]
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _float32(array: np.ndarray) -> np.ndarray:
    return array if array.dtype == np.float32 else array.astype(np.float32)


def load_sample(path: Path) -> Sample:
    """Read a sample written by ``save_sample``.

    Raises
    ------
    ValueError
        When the file is not a GadSynth sample of the current format.
    """
    with np.load(Path(path), allow_pickle=False) as data:
        names = set(data.files)
        needed = {"image", "target", "p", "focus", "brain", "meta"}
        if not needed <= names:
            raise ValueError(f"{path} is not a GadSynth training sample: missing {sorted(needed - names)}")
        meta = json.loads(str(data["meta"]))
        if meta.get("format") != SAMPLE_FORMAT:
            raise ValueError(f"{path}: sample format {meta.get('format')!r}, expected {SAMPLE_FORMAT}")
        return Sample(
            image=_float32(data["image"]),
            condition=data["condition"] if "condition" in names else None,
            target=_float32(data["target"]),
            p=_float32(data["p"]),
            focus=_float32(data["focus"]),
            brain=data["brain"],
            meta=meta,
        )
