"""Physics-based phantom: one subject's brain MRI exam (pre/low-dose/standard-dose T1, T2, FLAIR, ADC) plus truth.

The generator (nilearn's MNI template, pydicom, SimpleITK) loads on first use, so that the options can be imported
where only numpy is installed (a GPU box training from a prepared sample cache).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.phantom.options import LesionSpec, PhantomOptions, parse_lesion_spec

if TYPE_CHECKING:
    from training.phantom.generate import PhantomStudy, SeriesTruth, generate_study

__all__ = ["LesionSpec", "PhantomOptions", "PhantomStudy", "SeriesTruth", "generate_study", "parse_lesion_spec"]

_GENERATOR_NAMES = frozenset({"PhantomStudy", "SeriesTruth", "generate_study"})


def __getattr__(name: str) -> Any:
    if name in _GENERATOR_NAMES:
        from training.phantom import generate

        return getattr(generate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
