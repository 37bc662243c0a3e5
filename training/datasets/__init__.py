"""Training data: phantom stream, DICOM and NIfTI sources, preprocessed through the pipeline's own code, and patches."""

from training.datasets.nifti import NIFTI_SIDECAR, read_sidecar, sample_from_nifti
from training.datasets.patches import Batch, PatchSampler, PatchSettings, validation_batches
from training.datasets.sample import Sample, load_sample, sample_from_dicom, sample_from_volumes, save_sample
from training.datasets.sources import (
    DataSpec,
    PhantomVariation,
    SampleCache,
    Subject,
    SubjectStream,
    parse_data_spec,
    phantom_options,
)

__all__ = [
    "NIFTI_SIDECAR",
    "Batch",
    "DataSpec",
    "PatchSampler",
    "PatchSettings",
    "PhantomVariation",
    "Sample",
    "SampleCache",
    "Subject",
    "SubjectStream",
    "load_sample",
    "parse_data_spec",
    "phantom_options",
    "read_sidecar",
    "sample_from_dicom",
    "sample_from_nifti",
    "sample_from_volumes",
    "save_sample",
    "validation_batches",
]
