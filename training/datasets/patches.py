"""Patch sampling biased toward enhancement, as a pure function of (seed, step): resuming gives the same batches."""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from operators.errors import InputDicomError
from training.datasets.sample import Sample
from training.datasets.sources import SampleCache, Subject, SubjectStream

__all__ = ["Batch", "PatchSampler", "PatchSettings", "extract_patch", "pad_sample", "validation_batches"]

logger = logging.getLogger(__name__)

_PATCH_SALT = 0x9A7
_VALIDATION_SALT = 0x7A1
#: How many stream positions past a failing subject are tried before giving up.
_MAX_SKIPS = 50

#: One batch: image (N, C, D, H, W), condition (N, F) or absent, target / p / brain (N, 1, D, H, W), and origin
#: (N, 3), each patch's first voxel in the (padded) sample; all float32.
Batch = dict[str, np.ndarray]


@dataclass(frozen=True, kw_only=True)
class PatchSettings:
    """How patches are drawn.

    Parameters
    ----------
    size:
        Patch size (D, H, W) in voxels; volumes smaller than this are zero-padded.
    lesion_fraction:
        Share of patches centred (with jitter) on enhancement: a voxel whose smoothed contrast signal
        (``Sample.focus``) exceeds ``focus_threshold`` noise levels, drawn with probability proportional to it, so
        compact strongly enhancing regions (lesions) win over vessels and dura. The rest are centred on a random
        brain voxel.
    focus_threshold:
        Smoothed contrast signal, in units of the noise level, above which a voxel may be a patch centre.
    working_set:
        Subjects in memory at once; a batch draws its patches from these.
    refresh_every:
        Steps between advancing the working set by one subject (so N steps touch N / refresh_every + working_set
        subjects).
    flip:
        Random flips along each axis (augmentation).
    """

    size: tuple[int, int, int] = (64, 64, 64)
    lesion_fraction: float = 0.5
    focus_threshold: float = 3.0
    working_set: int = 8
    refresh_every: int = 4
    flip: bool = False

    def __post_init__(self) -> None:
        if len(self.size) != 3 or any(int(s) < 4 for s in self.size):
            raise ValueError(f"patch size must be three integers >= 4; found {self.size}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        if not 0.0 <= self.lesion_fraction <= 1.0:
            raise ValueError(f"lesion_fraction must be within 0 to 1; found {self.lesion_fraction}")
        if self.working_set < 1 or self.refresh_every < 1:
            raise ValueError(
                f"working_set and refresh_every must be >= 1; found {self.working_set}, {self.refresh_every}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["size"] = list(self.size)
        return data


def pad_sample(sample: Sample, size: tuple[int, int, int]) -> Sample:
    """Zero-pad a sample (evenly on both sides) so that every spatial axis holds at least ``size`` voxels."""
    shape = sample.shape
    if all(n >= s for n, s in zip(shape, size, strict=True)):
        return sample
    pads = [((max(s - n, 0)) // 2, max(s - n, 0) - (max(s - n, 0)) // 2) for n, s in zip(shape, size, strict=True)]
    return Sample(
        image=np.pad(sample.image, [(0, 0), *pads]),
        condition=sample.condition,
        target=np.pad(sample.target, pads),
        p=np.pad(sample.p, pads),
        focus=np.pad(sample.focus, pads),
        brain=np.pad(sample.brain, pads),
        meta={**sample.meta, "padding": pads},
    )


def extract_patch(sample: Sample, start: tuple[int, int, int], size: tuple[int, int, int]) -> Batch:
    """One patch (batch of one) starting at ``start``; the sample must be at least ``size`` along each axis."""
    region = tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))
    patch: Batch = {
        "image": sample.image[(slice(None), *region)][None],
        "target": sample.target[region][None, None],
        "p": sample.p[region][None, None],
        "brain": sample.brain[region][None, None].astype(np.float32),
        "origin": np.asarray([start], dtype=np.float32),
    }
    if sample.condition is not None:
        patch["condition"] = sample.condition[None]
    return patch


def _stack(patches: list[Batch]) -> Batch:
    return {
        key: np.ascontiguousarray(np.concatenate([p[key] for p in patches]), dtype=np.float32) for key in patches[0]
    }


class _Loaded:
    """A padded sample with the flat indices of its brain voxels and of its enhancement (cumulative weights)."""

    def __init__(self, subject: Subject, sample: Sample, settings: PatchSettings) -> None:
        self.subject = subject
        self.sample = pad_sample(sample, settings.size)
        focus = self.sample.focus.ravel()
        self.brain_index = np.flatnonzero(self.sample.brain)
        self.enhancing_index = np.flatnonzero(focus > settings.focus_threshold)
        self.enhancing_weight = np.cumsum(focus[self.enhancing_index], dtype=np.float64)

    def enhancing_centre(self, rng: np.random.Generator) -> int:
        """A flat voxel index drawn with probability proportional to the smoothed enhancement."""
        position = np.searchsorted(self.enhancing_weight, rng.random() * self.enhancing_weight[-1], side="right")
        return int(self.enhancing_index[min(int(position), self.enhancing_index.size - 1)])


def _draw_patch(loaded: _Loaded, settings: PatchSettings, rng: np.random.Generator) -> Batch:
    """One patch centred (with jitter of up to a quarter patch) on an enhancing or a brain voxel."""
    size = settings.size
    shape = loaded.sample.shape
    use_lesion = loaded.enhancing_index.size > 0 and rng.random() < settings.lesion_fraction
    if use_lesion:
        flat = loaded.enhancing_centre(rng)
    elif loaded.brain_index.size:
        flat = int(loaded.brain_index[int(rng.integers(loaded.brain_index.size))])
    else:
        flat = int(rng.integers(int(np.prod(shape))))
    centre = [int(c) for c in np.unravel_index(flat, shape)]
    start = []
    for c, s, n in zip(centre, size, shape, strict=True):
        jitter = int(rng.integers(-(s // 4), s // 4 + 1))
        start.append(int(np.clip(c - s // 2 + jitter, 0, n - s)))
    patch = extract_patch(loaded.sample, (start[0], start[1], start[2]), size)
    if settings.flip:
        axes = tuple(axis for axis in (2, 3, 4) if rng.random() < 0.5)
        if axes:
            patch = {k: (np.ascontiguousarray(np.flip(v, axis=axes)) if v.ndim == 5 else v) for k, v in patch.items()}
    return patch


class PatchSampler:
    """Draws training batches from a subject stream through a sample cache.

    Step t uses the working set of stream positions [t // refresh_every, t // refresh_every + working_set); each
    batch element picks a subject of that set and a patch centre from ``numpy.random.default_rng`` seeded with
    (seed, t, element). Nothing depends on earlier calls, so batches are reproducible and resumable.
    """

    def __init__(self, stream: SubjectStream, cache: SampleCache, settings: PatchSettings, *, seed: int) -> None:
        self.stream = stream
        self.cache = cache
        self.settings = settings
        self.seed = seed
        self._memory: OrderedDict[int, _Loaded] = OrderedDict()
        self._failed: dict[str, str] = {}
        #: <b, s_SD> / <b, s_LD> per subject key, for every subject loaded (the paper's gamma is their mean).
        self.gamma_ratios: dict[str, float] = {}

    @property
    def failed(self) -> dict[str, str]:
        """Subjects that could not be turned into samples, with the reason (they are skipped)."""
        return dict(self._failed)

    def load(self, position: int) -> _Loaded:
        """The sample at a stream position; a subject that fails is skipped for the next position that works.

        Raises
        ------
        RuntimeError
            When ``_MAX_SKIPS`` positions in a row fail.
        """
        cached = self._memory.get(position)
        if cached is not None:
            self._memory.move_to_end(position)
            return cached
        for offset in range(_MAX_SKIPS):
            subject = self.stream.at(position + offset)
            if subject.key in self._failed:
                continue
            try:
                sample = self.cache.get(subject)
            except InputDicomError as exc:
                self._failed[subject.key] = str(exc)
                logger.warning("training subject %s skipped: %s", subject.key, exc)
                continue
            loaded = _Loaded(subject, sample, self.settings)
            if sample.gamma_ratio is not None:
                self.gamma_ratios[subject.key] = sample.gamma_ratio
            self._memory[position] = loaded
            while len(self._memory) > self.settings.working_set + 1:
                self._memory.popitem(last=False)
            return loaded
        raise RuntimeError(
            f"{_MAX_SKIPS} training subjects in a row failed from stream position {position}: "
            f"{list(self._failed.items())[-3:]}"
        )

    def batch(self, step: int, batch_size: int) -> Batch:
        """The training batch of step ``step`` (>= 0)."""
        base = step // self.settings.refresh_every
        patches = []
        for element in range(batch_size):
            rng = np.random.default_rng([_PATCH_SALT, self.seed, step, element])
            position = base + int(rng.integers(self.settings.working_set))
            patches.append(_draw_patch(self.load(position), self.settings, rng))
        return _stack(patches)

    def positions_used(self, steps: int) -> range:
        """The stream positions a run of ``steps`` steps draws from."""
        last_base = max(steps - 1, 0) // self.settings.refresh_every
        return range(0, last_base + self.settings.working_set)


def validation_batches(
    cache: SampleCache,
    subjects: list[Subject],
    settings: PatchSettings,
    *,
    seed: int,
    per_subject: int,
    batch_size: int,
) -> list[Batch]:
    """Fixed validation patches from held-out subjects (same bias toward enhancement, no flips), in batches.

    Raises
    ------
    InputDicomError
        When a validation subject cannot be turned into a sample.
    """
    patches: list[Batch] = []
    plain = dataclasses.replace(settings, flip=False)
    for index, subject in enumerate(subjects):
        loaded = _Loaded(subject, cache.get(subject), plain)
        for k in range(per_subject):
            rng = np.random.default_rng([_VALIDATION_SALT, seed, index, k])
            patches.append(_draw_patch(loaded, plain, rng))
    return [_stack(patches[i : i + batch_size]) for i in range(0, len(patches), batch_size)]
