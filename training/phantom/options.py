"""Options of one simulated exam (PhantomOptions) and lesion requests (LesionSpec), validated at construction."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

from operators.roles import AGENT_R1, canonical_agent

__all__ = [
    "ALL_ROLES",
    "KNOWN_ROLES",
    "LESION_KINDS",
    "OPTIONAL_ROLES",
    "LesionKind",
    "LesionSpec",
    "PhantomOptions",
    "parse_lesion_spec",
]

logger = logging.getLogger(__name__)

LesionKind = Literal["metastasis", "ring_metastasis", "glioblastoma", "nonenhancing"]
LESION_KINDS: tuple[str, ...] = get_args(LesionKind)

#: The six series of one exam, in acquisition order (operators.roles.Role values).
ALL_ROLES: tuple[str, ...] = ("t1_pre", "t2", "flair", "adc", "t1_low_dose", "t1_standard_dose")
#: Series written only on request: ``t1_map``, a quantitative T1 map (ms) reconstructed from the pre-contrast 3D T1
#: acquisition (as MP2RAGE gives one beside its T1-weighted image), on t1_pre's grid and pose. Asking for it changes
#: no pixel of the other series.
OPTIONAL_ROLES: tuple[str, ...] = ("t1_map",)
KNOWN_ROLES: tuple[str, ...] = ALL_ROLES + OPTIONAL_ROLES

#: Diameter ranges (mm) drawn for each lesion kind when a request gives none.
DIAMETER_RANGE_MM: dict[str, tuple[float, float]] = {
    "metastasis": (2.0, 25.0),
    "ring_metastasis": (8.0, 25.0),
    "glioblastoma": (25.0, 45.0),
    "nonenhancing": (8.0, 30.0),
}


@dataclass(frozen=True)
class LesionSpec:
    """One requested lesion: its kind and, optionally, its diameter in mm (drawn from the kind's range if None)."""

    kind: LesionKind
    diameter_mm: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in LESION_KINDS:
            raise ValueError(f"Unknown lesion kind {self.kind!r}. Known: {list(LESION_KINDS)}")
        if self.diameter_mm is not None and not 1.0 <= self.diameter_mm <= 80.0:
            raise ValueError(f"Lesion diameter must be within 1 to 80 mm. Found {self.diameter_mm} mm.")


def parse_lesion_spec(text: str) -> LesionSpec:
    """Parse ``kind`` or ``kind:diameter_mm`` (e.g. ``metastasis:12``), as the command line takes it.

    Raises
    ------
    ValueError
        When the kind is unknown or the diameter is not a number in range.
    """
    kind, _, diameter = text.strip().partition(":")
    try:
        value = float(diameter) if diameter else None
    except ValueError:
        message = f"Lesion {text!r}: the diameter after ':' must be a number of mm. Found {diameter!r}."
        raise ValueError(message) from None
    return LesionSpec(kind, value)  # type: ignore[arg-type]  # validated in __post_init__


@dataclass(frozen=True, kw_only=True)
class PhantomOptions:
    """Everything that defines one simulated exam; the same options give byte-identical pixel data.

    Parameters
    ----------
    seed:
        Subject seed: anatomy, lesions, motion, noise and UIDs all derive from it.
    size:
        ``"full"`` (1 mm 3D T1, 256x256x192) or ``"small"`` (about 4 mm, 64x64x48; for tests).
    field_strength:
        1.5 or 3.0 tesla.
    agent:
        Contrast agent (generic or brand name, see ``operators.roles``).
    dose:
        Low dose relative to the standard dose of 0.1 mmol/kg (0.1 to 0.33 in the seed papers).
    roles:
        Which series to write: any of the six of ``ALL_ROLES`` (the default) and of ``OPTIONAL_ROLES``.
    vendor:
        Header flavour and protocol naming: ``"siemens"``, ``"ge"`` or ``"philips"``.
    t1_orientation, t1_sequence:
        3D T1 slab orientation and sequence (inversion-prepared turbo gradient echo or spoiled gradient echo).
    resolution_mm:
        Override of the T1 voxel size (isotropic); the other series scale their in-plane size alike.
    noise:
        Gaussian sigma of the real and imaginary channels as a fraction of the 99th percentile of the noise-free
        foreground of the series (which is scaled to the vendor's pixel level, so sigma in pixels = noise * that
        level; the three T1 series share the pre-contrast scale: same protocol, same noise). For ADC it applies to
        the underlying b = 0 and b = 1000 trace images.
    noise_spatially_varying:
        Multiply sigma by a smooth parallel-imaging g-factor map (1 at the FOV edge, up to 1.5 in the centre).
    bias:
        Peak fractional amplitude of the smooth receive-bias field (0 turns it off).
    lesion_count, lesion_kinds:
        How many lesions to draw (None: 0 to 3 from the seed) and of which kinds.
    lesions:
        Explicit lesion list; overrides ``lesion_count`` and ``lesion_kinds``.
    deformation:
        Per-subject elastic warp and size scaling of the template anatomy.
    head_rotation_deg:
        Largest rotation of the head in the scanner about each axis (per subject).
    motion, motion_mm:
        Independent rigid head motion between series; ``motion_mm`` is the largest translation in mm and the
        largest rotation in degrees.
    output_format, transfer_syntax:
        DICOM flavour passed to the exporter.
    save_series_truth:
        Also write ``truth/series/<role>.nii.gz``: the exact pixel values of each series on its own grid.
    write_dicom:
        Write the DICOM series (turn off to produce ground truth only, e.g. for training data).
    """

    seed: int = 0
    size: Literal["small", "full"] = "full"
    field_strength: float = 3.0
    agent: str = "gadobutrol"
    dose: float = 0.25
    roles: tuple[str, ...] = ALL_ROLES
    vendor: Literal["siemens", "ge", "philips"] = "siemens"
    t1_orientation: Literal["sagittal", "axial"] = "sagittal"
    t1_sequence: Literal["mprage", "gre"] = "mprage"
    resolution_mm: float | None = None
    noise: float = 0.02
    noise_spatially_varying: bool = False
    bias: float = 0.15
    lesion_count: int | None = None
    lesion_kinds: tuple[str, ...] = LESION_KINDS
    lesions: tuple[LesionSpec, ...] | None = None
    deformation: bool = True
    head_rotation_deg: float = 6.0
    motion: bool = True
    motion_mm: float = 1.5
    output_format: Literal["classic", "enhanced"] = "classic"
    transfer_syntax: Literal["explicit-le", "implicit-le", "jpeg-ls", "jpeg2000", "rle"] = "explicit-le"
    save_series_truth: bool = False
    write_dicom: bool = True

    def __post_init__(self) -> None:
        self._check_choice("size", ("small", "full"))
        self._check_choice("vendor", ("siemens", "ge", "philips"))
        self._check_choice("t1_orientation", ("sagittal", "axial"))
        self._check_choice("t1_sequence", ("mprage", "gre"))
        self._check_choice("output_format", ("classic", "enhanced"))
        self._check_choice("transfer_syntax", ("explicit-le", "implicit-le", "jpeg-ls", "jpeg2000", "rle"))
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0. Found {self.seed}.")
        if self.field_strength not in (1.5, 3.0):
            raise ValueError(f"field_strength must be 1.5 or 3.0 tesla. Found {self.field_strength}.")
        agent = canonical_agent(self.agent)  # raises KeyError listing the known agents
        if agent not in AGENT_R1:
            raise ValueError(f"No relaxivity for agent {self.agent!r}.")
        if not 0.0 < self.dose < 1.0:
            raise ValueError(f"dose (low dose relative to standard) must be in (0, 1). Found {self.dose}.")
        unknown = [r for r in self.roles if r not in KNOWN_ROLES]
        if unknown or not self.roles:
            raise ValueError(f"roles must be a non-empty subset of {list(KNOWN_ROLES)}. Found {list(self.roles)}.")
        if len(set(self.roles)) != len(self.roles):
            raise ValueError(f"roles must not repeat. Found {list(self.roles)}.")
        if self.resolution_mm is not None and not 0.5 <= self.resolution_mm <= 8.0:
            raise ValueError(f"resolution_mm must be within 0.5 to 8 mm. Found {self.resolution_mm}.")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(
                f"noise must be within 0 to 0.5 (fraction of the 99th-percentile signal). Found {self.noise}."
            )
        if not 0.0 <= self.bias <= 0.5:
            raise ValueError(f"bias must be within 0 to 0.5. Found {self.bias}.")
        if self.lesion_count is not None and not 0 <= self.lesion_count <= 10:
            raise ValueError(f"lesion_count must be within 0 to 10. Found {self.lesion_count}.")
        bad_kinds = [k for k in self.lesion_kinds if k not in LESION_KINDS]
        if bad_kinds or not self.lesion_kinds:
            raise ValueError(f"lesion_kinds must be a non-empty subset of {list(LESION_KINDS)}. Found {bad_kinds}.")
        if self.lesions is not None and len(self.lesions) > 10:
            raise ValueError(f"At most 10 lesions. Found {len(self.lesions)}.")
        if not 0.0 <= self.head_rotation_deg <= 20.0:
            raise ValueError(f"head_rotation_deg must be within 0 to 20. Found {self.head_rotation_deg}.")
        if not 0.0 <= self.motion_mm <= 10.0:
            raise ValueError(f"motion_mm must be within 0 to 10. Found {self.motion_mm}.")

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}. Found {value!r}.")

    @property
    def canonical_agent(self) -> str:
        """Generic agent name (key of ``operators.roles.AGENT_R1``)."""
        return canonical_agent(self.agent)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written to truth/params.json)."""
        data = dataclasses.asdict(self)
        data["roles"] = list(self.roles)
        data["lesion_kinds"] = list(self.lesion_kinds)
        data["lesions"] = None if self.lesions is None else [dataclasses.asdict(s) for s in self.lesions]
        return data
