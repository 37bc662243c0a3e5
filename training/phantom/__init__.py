"""Physics-based phantom: one subject's brain MRI exam (pre/low-dose/standard-dose T1, T2, FLAIR, ADC) plus truth."""

from training.phantom.generate import PhantomStudy, SeriesTruth, generate_study
from training.phantom.options import LesionSpec, PhantomOptions, parse_lesion_spec

__all__ = ["LesionSpec", "PhantomOptions", "PhantomStudy", "SeriesTruth", "generate_study", "parse_lesion_spec"]
