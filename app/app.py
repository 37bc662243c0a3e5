"""The MAP: the pipeline's operators composed with add_flow (DICOM study in, synthetic T1+C DICOM out)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application, Operator

from app.config import Settings
from operators.brain_mask import BrainMaskOperator
from operators.dicom_writer import DicomWriterOperator, WriterSettings
from operators.inference import InferenceOperator, InferenceSettings
from operators.model_manifest import ModelManifest
from operators.model_inputs import NormalizationOperator
from operators.postprocess import PostprocessOperator
from operators.registration import RegistrationOperator
from operators.run_record import RunRecord, StageFailed
from operators.series_selector import SeriesSelectorOperator
from operators.series_to_volume import SeriesToVolumeOperator
from operators.study_loader import StudyLoaderOperator
from operators.writers.content import ModelIdentity

__all__ = ["GadSynthApp"]

logger = logging.getLogger(__name__)


class _OutputTap:
    """Forwards ``emit`` to the real output context and keeps a reference for report.json."""

    def __init__(self, op_output: Any, record: RunRecord, stage: str) -> None:
        self._op_output = op_output
        self._record = record
        self._stage = stage

    def emit(self, value: Any, name: str, *args: Any, **kwargs: Any) -> None:
        self._record.emitted[(self._stage, name)] = value
        self._op_output.emit(value, name, *args, **kwargs)


def _recorded(operator_class: type[Operator], record: RunRecord) -> type[Operator]:
    """A subclass of ``operator_class`` whose compute is timed, tapped and stops cleanly on bad input.

    An input error (:class:`operators.errors.InputDicomError`) is recorded in ``record`` and the operator emits
    nothing, so the operators downstream never fire and the scheduler ends the run without a traceback.
    """

    def compute(self: Operator, op_input: Any, op_output: Any, context: Any) -> None:
        if record.error is not None:
            return
        try:
            with record.stage(self.name):
                super(recorded_class, self).compute(op_input, _OutputTap(op_output, record, self.name), context)
        except StageFailed:
            return

    recorded_class: type[Operator] = type(operator_class.__name__, (operator_class,), {"compute": compute})
    return recorded_class


class GadSynthApp(Application):  # type: ignore[misc]  # Application comes from an untyped package
    """GadSynth as a MONAI Deploy application.

    Stage order: study loader -> series selector -> series to volume -> registration and brain mask ->
    normalization -> inference -> post-processing -> DICOM writers. report.json is written by the entry point
    from the :class:`RunRecord` (``app/__main__.py``).

    Parameters
    ----------
    input_path, output_path:
        Study folder and output folder.
    manifest:
        The model to run (chosen by the entry point from the settings and the models folder).
    settings:
        Run-time settings (series numbers, providers, threads, TTA).
    record:
        Where the operators record timings, outputs and the first input error.
    """

    def __init__(
        self,
        *,
        input_path: Path,
        output_path: Path,
        manifest: ModelManifest,
        settings: Settings,
        record: RunRecord,
        argv: list[str] | None = None,
    ) -> None:
        self._input_path = input_path
        self._output_path = output_path
        self._manifest = manifest
        self._settings = settings
        self._record = record
        super().__init__(argv or ["gadsynth"])

    def compose(self) -> None:
        record = self._record
        manifest = self._manifest
        settings = self._settings

        def op(cls: type[Operator], name: str, *args: Any, **kwargs: Any) -> Operator:
            return _recorded(cls, record)(self, *args, name=name, **kwargs)

        loader = op(StudyLoaderOperator, "load_study", CountCondition(self, 1), input_folder=self._input_path)
        selector = op(
            SeriesSelectorOperator,
            "select_series",
            rules=settings.selection_rules,
            required=tuple(manifest.required_roles),
        )
        to_volume = op(SeriesToVolumeOperator, "build_volumes")
        registration = op(RegistrationOperator, "register", roles=tuple(manifest.required_roles))
        brain_mask = op(BrainMaskOperator, "brain_mask")
        normalization = op(NormalizationOperator, "normalize", manifest=manifest)
        inference = op(
            InferenceOperator,
            "infer",
            settings=InferenceSettings(
                providers=tuple(settings.providers) if settings.providers else None,
                intra_op_threads=settings.intra_op_threads,
                tta=settings.tta,
            ),
        )
        postprocess = op(PostprocessOperator, "postprocess")
        writer = op(
            DicomWriterOperator,
            "write_dicom",
            output_folder=self._output_path,
            model=ModelIdentity(name=manifest.name, version=manifest.version, sha256=manifest.sha256),
            settings=WriterSettings(
                synthetic_series_number=settings.synthetic_series_number,
                beyond_dose_series_number=settings.beyond_dose_series_number,
                seg_series_number=settings.seg_series_number,
                sc_series_number=settings.sc_series_number,
                write_beyond_standard_dose=settings.write_beyond_standard_dose,
                write_secondary_capture=settings.write_secondary_capture,
            ),
        )

        self.add_flow(loader, selector, {("study", "study")})
        self.add_flow(selector, to_volume, {("selection", "selection")})
        self.add_flow(to_volume, registration, {("volumes", "volumes")})
        self.add_flow(to_volume, brain_mask, {("volumes", "volumes")})
        self.add_flow(registration, normalization, {("registered", "registered")})
        self.add_flow(brain_mask, normalization, {("brain_mask", "brain_mask")})
        self.add_flow(selector, normalization, {("selection", "selection")})
        self.add_flow(normalization, inference, {("normalized", "normalized")})
        self.add_flow(inference, postprocess, {("prediction", "prediction")})
        self.add_flow(normalization, postprocess, {("normalized", "normalized")})
        self.add_flow(registration, writer, {("registered", "source")})
        self.add_flow(postprocess, writer, {("synthetic", "synthetic")})
