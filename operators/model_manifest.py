"""The model manifest (``models/<name>/manifest.json``): what a model needs as input, how to normalize and undo it."""

from __future__ import annotations

import hashlib
import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from operators.roles import Role

__all__ = [
    "CHANNELS",
    "ConditionFeature",
    "ConditionSpec",
    "InputChannel",
    "ModelIntegrityError",
    "ModelManifest",
    "ModelManifestError",
    "ModelMode",
    "NormalizationKind",
    "NormalizationSpec",
    "OutputMeaning",
    "OutputScale",
    "OutputSpec",
    "PostprocessSpec",
    "TrainingTarget",
    "file_sha256",
    "load_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"


class ModelManifestError(ValueError):
    """A model folder is unusable: manifest missing or invalid, model file missing. Not the input study's fault."""


class ModelIntegrityError(ModelManifestError):
    """The model file's sha256 differs from the one recorded in its manifest (corrupt or replaced file)."""


class ModelMode(StrEnum):
    """What a model synthesizes from what (METHODS.md section 1)."""

    LOW_DOSE_DIFFERENTIAL = "low_dose_differential"
    LOW_DOSE_DIRECT = "low_dose_direct"
    ZERO_DOSE_DIRECT = "zero_dose_direct"


class NormalizationKind(StrEnum):
    """How model inputs are normalized (and the output un-normalized)."""

    DIFFERENTIAL = "differential"  # METHODS.md section 2, steps 3-8
    ZSCORE = "zscore"  # per modality, brain mean and standard deviation
    MINMAX = "minmax"  # per modality, brain percentiles to [0, 1]
    NONE = "none"  # quantitative maps (e.g. T1 in ms)


class OutputMeaning(StrEnum):
    """What the model's output tensor is."""

    CONTRAST_SIGNAL = "contrast_signal"  # y: the enhancement to add to x_PC (differential models)
    IMAGE = "image"  # x_SD itself, in the normalized scale of t1_pre (direct models)


class OutputScale(StrEnum):
    """How a contrast-signal output maps back to normalized intensity (x_PC divided by its brain 95th percentile).

    ``local_std``: y = gamma * s_LD * y_hat / sigma_LD, the exact inverse of step 8 of METHODS.md section 2
    (z = (z~ - m) / s * sigma_LD), i.e. the paper's y~ = gamma * s_LD * y_hat with y_hat in units of sigma_LD.
    ``normalized``: y = gamma * y_hat (the output is already in normalized intensity).
    """

    LOCAL_STD = "local_std"
    NORMALIZED = "normalized"


ConditionFeature = Literal["dose", "field_strength_t", "r1", "sigma", "voxel_mm", "inversion_prepared"]

#: Channel names a model may ask for, by normalization kind. Differential: z_ld = noise-normalized low-dose
#: subtraction, x_ld / x_pc = images after 95th-percentile scaling and radiometric alignment, s_ld / m_ld = local
#: standard deviation / mean of the subtraction, z_tilde_ld = initial subtraction, brain_mask = 0/1.
#: Direct kinds: one channel per role, plus brain_mask.
CHANNELS: dict[NormalizationKind, frozenset[str]] = {
    NormalizationKind.DIFFERENTIAL: frozenset({"z_ld", "x_ld", "s_ld", "x_pc", "m_ld", "z_tilde_ld", "brain_mask"}),
    NormalizationKind.ZSCORE: frozenset({*(r.value for r in Role), "brain_mask"}),
    NormalizationKind.MINMAX: frozenset({*(r.value for r in Role), "brain_mask"}),
    NormalizationKind.NONE: frozenset({*(r.value for r in Role), "brain_mask"}),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _LaterFields(_Strict):
    """A block that gained fields after manifests were first written: those fields are left out of the JSON while
    they hold their default, so manifests written before them keep their bytes."""

    _ADDED_LATER: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self._ADDED_LATER:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data


class InputChannel(_Strict):
    """One input channel, in tensor order."""

    name: str
    meaning: str = ""


class NormalizationSpec(_LaterFields):
    """Parameters of the normalization (defaults follow METHODS.md).

    Parameters
    ----------
    kind:
        One of ``NormalizationKind``.
    percentile:
        Differential step 3: this brain percentile maps to 1.
    robust_alignment:
        Differential step 4: one robust (Tukey IRLS) scalar aligning x_LD to x_PC outside enhancing voxels.
    clip_sigma:
        Differential step 7: voxels with |z~| above this many sigma are left out of the local statistics.
    local_sigma, local_sigma_unit:
        Differential step 7: standard deviation of the Gaussian for local mean and std (16 voxels in the paper).
    truncation_correction:
        Divide the local std by the std of a unit normal truncated at +-clip_sigma (0.88 at 2), so that
        (z~ - m) / s has unit noise; ``False`` keeps the paper's plain estimate.
    local_iterations:
        1 = the paper (one pass, global +-clip_sigma threshold; the default); n > 1 re-thresholds n - 1 times at
        +-clip_sigma of the local estimate. With ``local_region="image"`` a second pass evens out spatially
        varying noise; inside the brain it changes the normalized noise by under 1% (phantom), so it is off.
    local_region:
        Voxels the local statistics use: ``brain`` (default) or the whole ``image``. The paper does not restrict
        them; but where the window reaches past the brain (always, on coarse grids), air and bone with their lower
        noise pull s down and the brain's normalized noise rises above 1 (measured 1.09 to 1.17 on the small
        phantom with ``image``, 0.97 to 0.99 with ``brain``).
    clip_percentiles:
        minmax: brain percentiles mapped to 0 and 1 (values outside are clipped).
    zscore_clip:
        zscore: clip to +-this value (None = no clip).
    mask_outside_brain:
        Direct kinds: set voxels outside the brain to 0 after normalization.
    target_max:
        minmax: the top of the range the standard-dose target (and so the direct model's output) may take in t1_pre's
        normalized scale. Inputs are clipped to [0, 1], 1 being the pre-contrast's 99.5th brain percentile; an
        enhancing lesion is brighter than that, so a target clipped at 1 (models before issue 12) can never show
        its full contrast.
    """

    kind: NormalizationKind
    percentile: float = Field(default=95.0, gt=0.0, le=100.0)
    robust_alignment: bool = True
    clip_sigma: float = Field(default=2.0, gt=0.0)
    local_sigma: float = Field(default=16.0, gt=0.0)
    local_sigma_unit: Literal["voxel", "mm"] = "voxel"
    truncation_correction: bool = True
    local_iterations: int = Field(default=1, ge=1, le=5)
    local_region: Literal["brain", "image"] = "brain"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    zscore_clip: float | None = None
    mask_outside_brain: bool = False
    target_max: float = Field(default=1.0, ge=1.0, le=10.0)

    _ADDED_LATER: ClassVar[tuple[str, ...]] = ("target_max",)


class ConditionSpec(_Strict):
    """The condition vector: which features, in order; ``defaults`` fill features a study does not provide."""

    features: list[ConditionFeature]
    defaults: dict[ConditionFeature, float] = Field(default_factory=dict)


class OutputSpec(_Strict):
    """The output tensor and how to turn it back into intensities."""

    tensor: str = "y_hat"
    meaning: OutputMeaning
    scale: OutputScale = OutputScale.NORMALIZED
    gamma: float = Field(default=1.0, gt=0.0)
    nonnegative: bool = False


class TrainingTarget(_Strict):
    """How the training target was built (METHODS.md section 2): p = sigmoid(w * z / sigma_LD + b), y = p * z_SD.

    ``sigmoid_w`` and ``sigmoid_b`` are in units of sigma_LD so that p(sigma_LD) = 0.01 and p(4 sigma_LD) = 0.99.
    """

    sigmoid_w: float
    sigmoid_b: float


class PostprocessSpec(_LaterFields):
    """How the model output becomes the synthetic images and the enhancement mask.

    The mask for the SEG is brain & (y > threshold_sigma * noise of y), components >= min_voxels.

    average_low_dose:
        Low-dose models: where the predicted contrast y is 0, the synthetic image is the mean of x_PC and the
        registered x_LD instead of x_PC alone, two acquisitions of the same unenhanced tissue, so its noise
        variance is about halved; the weight of x_LD falls linearly to 0 as y rises to the enhancement threshold,
        so the low dose's own contrast is not added twice. Without it (every model before issue 12's 1.3.0) the
        synthetic image is x_PC + y and keeps x_PC's noise voxel for voxel.
    gate_below_threshold:
        The contrast added to the image is y * clip(y / threshold, 0, 1) instead of y: at and above the enhancement
        threshold nothing changes; below it, where y is mostly the network's own noise (y >= 0, so that noise can
        only brighten and its mean is a false enhancement of the whole brain), the contrast fades quadratically to
        0. With ``average_low_dose`` the two weights sum to 1, so below the threshold the image moves smoothly to
        the mean of x_PC and x_LD. The enhancement mask is unchanged (it is y above the threshold).
    """

    threshold_sigma: float = Field(default=3.0, gt=0.0)
    min_voxels: int = Field(default=3, ge=1)
    clip_negative: bool = True
    average_low_dose: bool = False
    gate_below_threshold: bool = False

    _ADDED_LATER: ClassVar[tuple[str, ...]] = ("average_low_dose", "gate_below_threshold")


class ModelManifest(_Strict):
    """Everything the pipeline needs to run a model: inputs, normalization, condition, tiling and undo.

    Load with ``ModelManifest.load(folder)``, which also checks the model file's sha256.
    """

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    version: str
    description: str
    intended_use: str
    mode: ModelMode
    required_roles: list[Role]
    model_file: str = "model.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input_tensor: str = "image"
    condition_tensor: str | None = None
    inputs: list[InputChannel] = Field(min_length=1)
    normalization: NormalizationSpec
    condition: ConditionSpec | None = None
    output: OutputSpec
    patch_size: tuple[int, int, int] | None = None
    patch_overlap: float = Field(default=0.5, ge=0.0, lt=1.0)
    spatial_divisor: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1, ge=1)
    target: TrainingTarget | None = None
    postprocess: PostprocessSpec = PostprocessSpec()
    model_card: str = "MODEL_CARD.md"
    _folder: Path | None = PrivateAttr(default=None)

    @field_validator("required_roles")
    @classmethod
    def _needs_t1_pre(cls, roles: list[Role]) -> list[Role]:
        if Role.T1_PRE not in roles:
            raise ValueError(f"required_roles must include t1_pre (the output grid); found {[r.value for r in roles]}")
        return roles

    @model_validator(mode="after")
    def _consistent(self) -> ModelManifest:
        known = CHANNELS[self.normalization.kind]
        unknown = [c.name for c in self.inputs if c.name not in known]
        if unknown:
            raise ValueError(
                f"input channels {unknown} are not produced by normalization {self.normalization.kind.value!r}; "
                f"known: {sorted(known)}"
            )
        roles = {r.value for r in self.required_roles}
        missing = [c.name for c in self.inputs if c.name in {r.value for r in Role} and c.name not in roles]
        if missing:
            raise ValueError(f"input channels {missing} are roles missing from required_roles {sorted(roles)}")
        if (self.condition is None) != (self.condition_tensor is None):
            raise ValueError("condition and condition_tensor must be given together (or both omitted)")
        if self.normalization.kind == NormalizationKind.DIFFERENTIAL:
            if Role.T1_LOW_DOSE not in self.required_roles:
                raise ValueError("a differential model requires the t1_low_dose role")
            if self.output.meaning != OutputMeaning.CONTRAST_SIGNAL:
                raise ValueError("a differential model's output must be the contrast signal")
        elif self.output.scale == OutputScale.LOCAL_STD:
            raise ValueError("output scale 'local_std' needs the differential normalization (it uses s_LD)")
        if self.patch_size is not None and any(p % self.spatial_divisor for p in self.patch_size):
            raise ValueError(
                f"patch_size {self.patch_size} must be a multiple of spatial_divisor {self.spatial_divisor}"
            )
        return self

    @property
    def folder(self) -> Path:
        """The model folder this manifest was loaded from.

        Raises
        ------
        ModelManifestError
            When the manifest was built in memory rather than loaded.
        """
        if self._folder is None:
            raise ModelManifestError(f"manifest of {self.name!r} was not loaded from a folder")
        return self._folder

    @property
    def model_path(self) -> Path:
        """Path of the ONNX file."""
        return self.folder / self.model_file

    @property
    def channel_names(self) -> list[str]:
        """Input channel names in tensor order."""
        return [c.name for c in self.inputs]

    def verify(self) -> None:
        """Check that the model file exists and matches the recorded sha256.

        Raises
        ------
        ModelManifestError
            When the model file is missing.
        ModelIntegrityError
            When its sha256 differs from the manifest's.
        """
        path = self.model_path
        if not path.is_file():
            raise ModelManifestError(
                f"Model {self.name!r}: model file {path} named in {self.folder / MANIFEST_FILE} does not exist."
            )
        found = file_sha256(path)
        if found != self.sha256:
            raise ModelIntegrityError(
                f"Model {self.name!r}: sha256 of {path} is {found}, expected {self.sha256} from the manifest. "
                "The file is corrupt or was replaced; re-export it or restore the original."
            )

    @classmethod
    def load(cls, path: Path | str, *, verify: bool = True) -> ModelManifest:
        """Read and validate ``manifest.json`` from a model folder (or the file itself).

        Parameters
        ----------
        path:
            The model folder or its manifest.json.
        verify:
            Also check the model file's existence and sha256 (default).

        Raises
        ------
        ModelManifestError
            When the manifest is missing, not JSON, or invalid (the message lists each problem, e.g. an unknown
            normalization kind with the known ones), or the model file is missing.
        ModelIntegrityError
            When the model file's sha256 does not match.
        """
        path = Path(path)
        manifest_path = path / MANIFEST_FILE if path.is_dir() or not path.suffix else path
        if not manifest_path.is_file():
            raise ModelManifestError(f"No model manifest at {manifest_path}: a model folder holds {MANIFEST_FILE}.")
        try:
            data: Any = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelManifestError(f"Model manifest {manifest_path} is not valid JSON: {exc}") from exc
        try:
            manifest = cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
            )
            raise ModelManifestError(f"Model manifest {manifest_path} is invalid: {problems}") from exc
        manifest._folder = manifest_path.parent
        if verify:
            manifest.verify()
        logger.info("model %s %s (sha256 %s) from %s", manifest.name, manifest.version, manifest.sha256[:12], path)
        return manifest

    def to_json(self) -> str:
        """The manifest as written to disk (indented, keys in declaration order, trailing newline)."""
        return self.model_dump_json(indent=2, exclude_defaults=False) + "\n"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(models_dir: Path | str, name: str, *, verify: bool = True) -> ModelManifest:
    """Load model ``name`` from a models directory (``models_dir/name/manifest.json``).

    Raises
    ------
    ModelManifestError
        When no such model exists (the message lists the models found) or its manifest is invalid.
    ModelIntegrityError
        When the model file's sha256 does not match.
    """
    root = Path(models_dir)
    folder = root / name
    if not (folder / MANIFEST_FILE).is_file():
        found = sorted(p.parent.name for p in root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []
        raise ModelManifestError(f"No model {name!r} in {root}. Available: {found or 'none'}")
    return ModelManifest.load(folder, verify=verify)
