"""Package for the DICOM writers (derived MR, SEG, report SR, Secondary Capture) and report.json."""

from operators.writers.content import ModelIdentity
from operators.writers.derived_mr import SYNTHETIC_IMAGE_TYPE, default_series_description, write_synthetic_series
from operators.writers.enums import ConversionType, ImageTypeValue, OutputKind, PixelRepresentation, ReportStatus
from operators.writers.provenance import InputSeries, input_series
from operators.writers.report import (
    ContrastEntry,
    ErrorInfo,
    ModelInfo,
    NoiseEstimate,
    OutputEntry,
    PipelineReport,
    RegistrationFigures,
    SelectionEntry,
    SeriesSummary,
    read_report,
    write_report,
)
from operators.writers.sc import write_secondary_capture
from operators.writers.seg import write_enhancement_seg
from operators.writers.sr import write_report_sr

__all__ = [
    "SYNTHETIC_IMAGE_TYPE",
    "ContrastEntry",
    "ConversionType",
    "ErrorInfo",
    "ImageTypeValue",
    "InputSeries",
    "ModelIdentity",
    "ModelInfo",
    "NoiseEstimate",
    "OutputEntry",
    "OutputKind",
    "PipelineReport",
    "PixelRepresentation",
    "RegistrationFigures",
    "ReportStatus",
    "SelectionEntry",
    "SeriesSummary",
    "default_series_description",
    "input_series",
    "read_report",
    "write_enhancement_seg",
    "write_report",
    "write_report_sr",
    "write_secondary_capture",
    "write_synthetic_series",
]
