"""Training data sources (phantom stream, DICOM study folders, NIfTI folders with a sidecar) and the sample cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from operators.model_manifest import ModelManifest
from operators.roles import AGENT_R1, Role, canonical_agent
from training.datasets.nifti import NIFTI_SIDECAR, nifti_subjects, sample_from_nifti
from training.datasets.sample import (
    SAMPLE_FORMAT,
    Sample,
    load_sample,
    sample_from_dicom,
    save_sample,
    training_roles,
)
from training.phantom.options import ALL_ROLES, KNOWN_ROLES, PhantomOptions

__all__ = [
    "DataSpec",
    "PhantomVariation",
    "SampleCache",
    "Subject",
    "SubjectStream",
    "parse_data_spec",
    "phantom_options",
]

logger = logging.getLogger(__name__)

#: Salts that keep the random streams of the phantom options and the subject order apart from other seeded uses.
_OPTIONS_SALT = 0x6A5
_ORDER_SALT = 0x0DE


@dataclass(frozen=True, kw_only=True)
class PhantomVariation:
    """How the phantom stream varies its subjects (every draw is a function of the subject seed only).

    Parameters
    ----------
    size, resolution_mm:
        Phantom grid (``"small"``: about 4 mm, 64x64x48; ``"full"``: 1 mm) and an optional isotropic override.
    resolutions_mm:
        Voxel sizes drawn per subject, uniformly over the tuple (repeat a value to weight it): a model trained on a
        mix of grids does not depend on one voxel size. Overrides ``resolution_mm``; empty = every subject on the
        same grid. Drawn after every other choice, so the other draws of a seed do not change with it.
    field_strengths, agents:
        Drawn uniformly; ``exclude_pairs`` removes (agent, field strength) combinations (held out for evaluation).
    dose_range:
        Low dose relative to standard, uniform in this range (0.1 to 0.33 in the seed papers).
    vendors, t1_sequences, t1_orientations, output_formats:
        Drawn uniformly.
    noise_range:
        Noise fraction, uniform; ``spatial_noise_probability`` of subjects get a g-factor map.
    lesion_count_range:
        Lesions per subject, uniform integers, both ends included.
    motion_probability, motion_mm_max:
        Chance of inter-series motion and its largest size.
    """

    size: Literal["small", "full"] = "small"
    resolution_mm: float | None = None
    resolutions_mm: tuple[float, ...] = ()
    field_strengths: tuple[float, ...] = (1.5, 3.0)
    agents: tuple[str, ...] = tuple(AGENT_R1)
    exclude_pairs: tuple[tuple[str, float], ...] = ()
    dose_range: tuple[float, float] = (0.1, 0.33)
    vendors: tuple[str, ...] = ("siemens", "ge", "philips")
    t1_sequences: tuple[str, ...] = ("mprage", "gre")
    t1_orientations: tuple[str, ...] = ("sagittal", "axial")
    output_formats: tuple[str, ...] = ("classic", "enhanced")
    noise_range: tuple[float, float] = (0.01, 0.04)
    spatial_noise_probability: float = 0.3
    lesion_count_range: tuple[int, int] = (1, 4)
    motion_probability: float = 0.7
    motion_mm_max: float = 2.0

    def __post_init__(self) -> None:
        pairs = self.pairs()
        if not pairs:
            raise ValueError(
                f"PhantomVariation leaves no (agent, field strength) pair: agents {list(self.agents)}, fields "
                f"{list(self.field_strengths)}, excluded {list(self.exclude_pairs)}"
            )
        low, high = self.dose_range
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"dose_range must satisfy 0 < low <= high < 1; found {self.dose_range}")
        if any(not 0.5 <= r <= 8.0 for r in self.resolutions_mm):
            raise ValueError(f"resolutions_mm must be within 0.5 to 8 mm; found {list(self.resolutions_mm)}")
        if not 0 <= self.lesion_count_range[0] <= self.lesion_count_range[1] <= 10:
            raise ValueError(f"lesion_count_range must be within 0 to 10, low <= high; found {self.lesion_count_range}")

    def pairs(self) -> list[tuple[str, float]]:
        """The (agent, field strength) pairs drawn from, in a fixed order."""
        excluded = {(canonical_agent(a), float(b)) for a, b in self.exclude_pairs}
        return [
            (canonical_agent(a), float(b))
            for a in self.agents
            for b in self.field_strengths
            if (canonical_agent(a), float(b)) not in excluded
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (part of the cache key and the training record)."""
        data = asdict(self)
        data["exclude_pairs"] = [list(p) for p in self.exclude_pairs]
        if not self.resolutions_mm:
            del data["resolutions_mm"]  # records written before the grid mix existed stay comparable
        return data

    def with_overrides(self, overrides: Sequence[tuple[str, Any]]) -> PhantomVariation:
        """This variation with a data source's own draws (``phantom:A-B,field=1.5,dose=0.1-0.15``)."""
        return dataclasses.replace(self, **dict(overrides)) if overrides else self


#: Keys a phantom ``--data`` source may override, and the PhantomVariation field each one sets.
_OVERRIDE_KEYS = {"field": "field_strengths", "dose": "dose_range", "agent": "agents", "grid": "resolutions_mm"}


def _format_override(field: str, value: Any) -> str:
    key = next(k for k, f in _OVERRIDE_KEYS.items() if f == field)
    text = f"{value[0]:g}-{value[1]:g}" if key == "dose" else "/".join(v if key == "agent" else f"{v:g}" for v in value)
    return f"{key}={text}"


def _parse_overrides(items: Sequence[str], text: str) -> tuple[tuple[str, Any], ...]:
    """``field=1.5/3``, ``dose=0.1-0.15``, ``agent=gadobutrol/gadoterate`` -> PhantomVariation field values."""
    found: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in _OVERRIDE_KEYS or not value:
            raise ValueError(
                "a phantom source's draws are field=T[/T...], dose=LOW-HIGH, agent=NAME[/NAME...] or grid=MM[/MM...]; "
                f"found {item!r} in {text!r}"
            )
        try:
            if key in ("field", "grid"):
                parsed: Any = tuple(float(v) for v in value.split("/"))
            elif key == "dose":
                low, _, high = value.partition("-")
                parsed = (float(low), float(high or low))
            else:
                parsed = tuple(canonical_agent(v) for v in value.split("/"))
        except (ValueError, KeyError):
            raise ValueError(
                f"phantom source draw {item!r} in {text!r}: expected numbers (field, dose, grid) or known agent names"
            ) from None
        found[_OVERRIDE_KEYS[key]] = parsed
    overrides = tuple(sorted(found.items()))
    try:  # the draws must make valid phantoms on their own (the run's exclusions are checked per subject)
        phantom_options(0, PhantomVariation().with_overrides(overrides))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"phantom source {text!r}: {exc}") from None
    return overrides


def phantom_options(seed: int, variation: PhantomVariation, *, roles: Sequence[str] = ALL_ROLES) -> PhantomOptions:
    """The phantom options of subject ``seed``: a deterministic draw from ``variation``.

    Raises
    ------
    ValueError
        When the seed is negative or the draw is invalid for ``PhantomOptions``.
    """
    if seed < 0:
        raise ValueError(f"phantom seed must be >= 0; found {seed}")
    rng = np.random.default_rng([_OPTIONS_SALT, seed])
    pairs = variation.pairs()
    agent, field = pairs[int(rng.integers(len(pairs)))]
    low, high = variation.dose_range
    motion = bool(rng.random() < variation.motion_probability)
    wanted = [r for r in KNOWN_ROLES if r in roles]
    dose = round(float(rng.uniform(low, high)), 4)
    draws = dict(
        vendor=variation.vendors[int(rng.integers(len(variation.vendors)))],
        t1_sequence=variation.t1_sequences[int(rng.integers(len(variation.t1_sequences)))],
        t1_orientation=variation.t1_orientations[int(rng.integers(len(variation.t1_orientations)))],
        output_format=variation.output_formats[int(rng.integers(len(variation.output_formats)))],
        noise=round(float(rng.uniform(*variation.noise_range)), 4),
        noise_spatially_varying=bool(rng.random() < variation.spatial_noise_probability),
        lesion_count=int(rng.integers(variation.lesion_count_range[0], variation.lesion_count_range[1] + 1)),
        motion=motion,
        motion_mm=round(float(rng.uniform(0.2, variation.motion_mm_max)), 3) if motion else 0.0,
    )
    resolution = variation.resolution_mm
    if variation.resolutions_mm:  # drawn last: the draws above stay those of a single-grid variation
        resolution = float(variation.resolutions_mm[int(rng.integers(len(variation.resolutions_mm)))])
    return PhantomOptions(
        seed=seed,
        size=variation.size,
        resolution_mm=resolution,
        field_strength=field,
        agent=agent,
        dose=dose,
        roles=tuple(wanted),
        **draws,  # type: ignore[arg-type]  # the choices are PhantomOptions' literals
    )


@dataclass(frozen=True)
class Subject:
    """One training subject: a phantom seed, a DICOM study folder or a NIfTI subject folder."""

    kind: Literal["phantom", "dicom", "nifti"]
    name: str
    seed: int | None = None
    path: Path | None = None
    #: A phantom source's own draws (PhantomVariation field, value), applied over the run's variation.
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """File-name-safe identifier (cache file stem, logs)."""
        if self.kind == "phantom":
            return f"phantom-{self.seed:06d}"
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:8]
        return f"{self.kind}-{re.sub(r'[^A-Za-z0-9._-]+', '_', self.name)[:40]}-{digest}"


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` value: ``phantom:A-B`` (B included), ``phantom:A-`` (endless), ``dicom:DIR`` or
    ``nifti:DIR``. A phantom range may draw some choices from its own ranges, e.g.
    ``phantom:200-231,field=1.5,dose=0.1-0.15``: more subjects of a corner the run's variation rarely draws, or
    ``phantom:64-95,grid=4``: a share of subjects on one grid (``grid=1/1/4`` draws from those voxel sizes)."""

    kind: Literal["phantom", "dicom", "nifti"]
    start: int | None = None
    stop: int | None = None  # exclusive; None = endless
    path: Path | None = None
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def endless(self) -> bool:
        return self.kind == "phantom" and self.stop is None

    def subjects(self) -> list[Subject]:
        """The finite list of subjects (phantom seeds or the study / subject folders found).

        Raises
        ------
        ValueError
            When the spec is endless, or a folder holds no study / subject.
        """
        if self.kind == "phantom":
            if self.stop is None or self.start is None:
                raise ValueError("an endless phantom stream (phantom:A-) has no finite subject list")
            return [
                Subject("phantom", f"seed {s}", seed=s, overrides=self.overrides) for s in range(self.start, self.stop)
            ]
        if self.path is None or not self.path.is_dir():
            raise ValueError(f"{self.kind} data folder {self.path} does not exist")
        if self.kind == "nifti":
            return [Subject("nifti", p.name, path=p) for p in nifti_subjects(self.path)]
        return [Subject("dicom", p.name, path=p) for p in _dicom_studies(self.path)]

    def describe(self) -> str:
        if self.kind == "phantom":
            draws = "".join(f",{_format_override(key, value)}" for key, value in self.overrides)
            return f"phantom:{self.start}-{'' if self.stop is None else self.stop - 1}{draws}"
        return f"{self.kind}:{self.path}"


def parse_data_spec(text: str) -> DataSpec:
    """Parse ``phantom:0-199``, ``phantom:1000-``, ``phantom:7``, ``phantom:A-B,field=1.5,dose=0.1-0.15``,
    ``dicom:DIR`` or ``nifti:DIR``.

    Raises
    ------
    ValueError
        When the kind is unknown, the seed range is malformed or empty, a draw is unknown or malformed, or the
        folder is missing.
    """
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in ("phantom", "dicom", "nifti") or not rest:
        raise ValueError(f"--data must be phantom:A-B, phantom:A-, dicom:DIR or nifti:DIR; found {text!r}")
    if kind == "phantom":
        seeds, *draws = rest.split(",")
        overrides = _parse_overrides(draws, text)
        match = re.fullmatch(r"(\d+)(?:(-)(\d*))?", seeds)
        if match is None:
            raise ValueError(f"phantom seeds must be A-B, A- (endless) or A with integers A <= B; found {seeds!r}")
        start = int(match.group(1))
        if match.group(2) is None:
            return DataSpec("phantom", start=start, stop=start + 1, overrides=overrides)
        if not match.group(3):
            return DataSpec("phantom", start=start, stop=None, overrides=overrides)
        stop = int(match.group(3))
        if stop < start:
            raise ValueError(f"phantom seed range {seeds!r} is empty (B must be >= A)")
        return DataSpec("phantom", start=start, stop=stop + 1, overrides=overrides)
    path = Path(rest).expanduser()
    if not path.is_dir():
        raise ValueError(f"{kind} data folder {path} does not exist or is not a folder")
    return DataSpec(kind, path=path)  # type: ignore[arg-type]


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.iterdir())


def _dicom_studies(root: Path) -> list[Path]:
    """One study per immediate sub-folder; the folder itself when it holds files and no sub-folder."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        return [root] if _has_files(root) else []
    return folders


def _read_study_sidecar(folder: Path) -> dict[str, Any]:
    """Optional ``sidecar.json`` in a DICOM study folder: dose / agent / field where the headers say nothing."""
    path = folder / NIFTI_SIDECAR
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


class SampleCache:
    """Preprocessed samples on disk (.npz), keyed by subject and by everything the preprocessing depends on.

    Parameters
    ----------
    root:
        Cache folder (shared between runs: the key includes the model's channels, normalization and roles).
    manifest:
        What the model takes; its preprocessing fingerprint is part of every file name.
    variation:
        How phantom subjects vary (part of the key of phantom samples).
    """

    def __init__(self, root: Path, manifest: ModelManifest, variation: PhantomVariation) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.variation = variation
        fingerprint = {
            "format": SAMPLE_FORMAT,
            "roles": [r.value for r in training_roles(manifest)],
            "channels": manifest.channel_names,
            "normalization": manifest.normalization.model_dump(mode="json"),
            "condition": None if manifest.condition is None else manifest.condition.model_dump(mode="json"),
            "mode": manifest.mode.value,
        }
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]

    def path(self, subject: Subject) -> Path:
        """Cache file of a subject. A phantom's key is its drawn options, not the variation they came from, so
        runs whose variations draw the same subject (e.g. the 1 mm share of a grid mix) share its sample."""
        suffix = self.fingerprint
        if subject.kind == "phantom":
            drawn = {"fingerprint": self.fingerprint, "options": self._phantom_options(subject).to_dict()}
            suffix = hashlib.sha256(json.dumps(drawn, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return self.root / f"{subject.key}.{suffix}.npz"

    def _phantom_options(self, subject: Subject) -> PhantomOptions:
        if subject.seed is None:
            raise ValueError(f"phantom subject {subject.name} has no seed")
        variation = self.variation.with_overrides(subject.overrides)
        return phantom_options(subject.seed, variation, roles=[r.value for r in training_roles(self.manifest)])

    def get(self, subject: Subject) -> Sample:
        """The subject's sample, from the cache or built (and cached) now.

        Raises
        ------
        InputDicomError
            When the subject's study cannot be turned into a sample.
        """
        path = self.path(subject)
        if path.is_file():
            try:
                return load_sample(path)
            except (ValueError, OSError) as exc:
                logger.warning("cached sample %s unreadable (%s); rebuilding", path, exc)
        sample = self.build(subject)
        save_sample(sample, path)
        return sample

    def build(self, subject: Subject) -> Sample:
        """Build a subject's sample without the cache (phantoms are generated as DICOM into a temporary folder)."""
        if subject.kind == "phantom":
            options = self._phantom_options(subject)
            self.root.mkdir(parents=True, exist_ok=True)
            from training.phantom import generate_study

            work = Path(tempfile.mkdtemp(prefix=f".{subject.key}.", dir=self.root))
            try:
                study = generate_study(options, work)
                source = {"kind": "phantom", "seed": subject.seed, "options": options.to_dict()}
                return sample_from_dicom(study.dicom_dir, self.manifest, source=source)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        if subject.path is None:
            raise ValueError(f"{subject.kind} subject {subject.name} has no path")
        if subject.kind == "nifti":
            return sample_from_nifti(subject.path, self.manifest)
        sidecar = _read_study_sidecar(subject.path)
        dose = sidecar.get("dose")
        return sample_from_dicom(
            subject.path,
            self.manifest,
            doses={Role.T1_LOW_DOSE: float(dose)} if dose is not None else None,
            agent=sidecar.get("agent"),
            field_strength_t=sidecar.get("field_strength_t"),
        )


class SubjectStream:
    """A deterministic, endless sequence of subjects: position k -> subject.

    Finite pools are visited in epochs, each a fresh permutation drawn from ``seed`` and the epoch number; an
    endless phantom spec (``phantom:A-``) yields seed A + k. Positions never depend on what was loaded before, so a
    resumed run sees exactly the subjects the uninterrupted run would have.

    Raises
    ------
    ValueError
        When no subject is found, or an endless phantom stream is mixed with other sources.
    """

    def __init__(self, specs: Sequence[DataSpec], *, seed: int) -> None:
        if not specs:
            raise ValueError("at least one --data source is needed")
        endless = [s for s in specs if s.endless]
        if endless and len(specs) > 1:
            raise ValueError("an endless phantom stream (phantom:A-) cannot be mixed with other --data sources")
        self.seed = seed
        self.endless_start = endless[0].start if endless else None
        self.endless_overrides = endless[0].overrides if endless else ()
        self.subjects: list[Subject] = [] if endless else [s for spec in specs for s in spec.subjects()]
        if not endless and not self.subjects:
            raise ValueError(f"no training subject found in {[s.describe() for s in specs]}")
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Pool size (2**62 for an endless stream)."""
        return len(self.subjects) if self.endless_start is None else 2**62

    def at(self, position: int) -> Subject:
        """The subject at stream position ``position`` (>= 0)."""
        if self.endless_start is not None:
            seed = self.endless_start + position
            return Subject("phantom", f"seed {seed}", seed=seed, overrides=self.endless_overrides)
        n = len(self.subjects)
        epoch, index = divmod(position, n)
        order = self._permutations.get(epoch)
        if order is None:
            order = np.random.default_rng([_ORDER_SALT, self.seed, epoch]).permutation(n)
            self._permutations = {epoch: order}
        return self.subjects[int(order[index])]
