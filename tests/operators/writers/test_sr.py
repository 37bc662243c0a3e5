"""Tests for the report SR (Comprehensive 3D SR, TID 1500): content read back with highdicom, header, evidence,
validity and errors."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from app import __version__
from operators.roles import Role
from operators.study import Volume
from operators.writers import (
    InputSeries,
    ModelIdentity,
    write_enhancement_seg,
    write_report_sr,
    write_synthetic_series,
)
from operators.writers.sr import MAX_WARNINGS, WARNING_PREFIX, enhancing_volume_ml
from tests.operators.writers._sources import dciodvfy_errors, synthetic_from

WARNINGS = ["Contrast dose of t1_low_dose not in the header: 0.25 assumed", "PatientSex of the source was blanked"]


def _mask(volume: Volume) -> np.ndarray:
    values = sitk.GetArrayFromImage(volume.image)
    mask: np.ndarray = values > np.percentile(values, 85)
    return mask


class Run:
    """One run's outputs, written once per module: the synthetic series, the SEG and the SR."""

    def __init__(self, pre: Volume, low: Volume, folder: Path, model: ModelIdentity) -> None:
        self.pre, self.low, self.mask = pre, low, _mask(pre)
        inputs = [InputSeries(low.series, Role.T1_LOW_DOSE)]
        self.synthetic = write_synthetic_series(
            pre, synthetic_from(pre), folder / "syn", series_number=9001, model=model, other_sources=inputs
        )
        self.seg_path = write_enhancement_seg(pre, self.mask, folder / "seg.dcm", series_number=9003, model=model)
        self.path = write_report_sr(
            pre,
            folder / "sr" / "report_sr.dcm",
            series_number=9005,
            model=model,
            seg_path=self.seg_path,
            enhancement_mask=self.mask,
            synthetic_files=self.synthetic,
            other_sources=inputs,
            warnings=WARNINGS,
        )
        self.ds = pydicom.dcmread(self.path)
        self.sr = hd.sr.srread(self.path)
        self.seg = pydicom.dcmread(self.seg_path, stop_before_pixels=True)

    def texts(self, name: pydicom.sr.coding.Code) -> list[str]:
        container = next(i for i in self.ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
        return [
            item.TextValue
            for item in container.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == name.value
        ]


@pytest.fixture(scope="module")
def run(study_pair: tuple[Volume, Volume], tmp_path_factory: pytest.TempPathFactory, model: ModelIdentity) -> Run:
    pre, low = study_pair
    return Run(pre, low, tmp_path_factory.mktemp("sr_run"), model)


class TestContent:
    def test_it_is_a_tid_1500_measurement_report(self, run: Run) -> None:
        assert isinstance(run.sr, hd.sr.Comprehensive3DSR)
        assert run.ds.SOPClassUID == Comprehensive3DSRStorage
        assert run.ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
        assert run.ds.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
        assert isinstance(run.sr.content, hd.sr.MeasurementReport)

    def test_the_observer_is_gadsynth_with_the_model(self, run: Run, model: ModelIdentity) -> None:
        (device,) = run.sr.content.get_observer_contexts(observer_type=codes.DCM.Device)
        attributes = device.observer_identifying_attributes
        assert attributes.manufacturer_name == "GadSynth"
        assert attributes.model_name == model.name

    def test_volume_references_the_seg_segment(self, run: Run) -> None:
        (group,) = run.sr.content.get_volumetric_roi_measurement_groups()
        assert group.tracking_identifier == "Predicted contrast enhancement (synthetic)"
        segment = group.referenced_segment
        assert segment is not None
        assert segment.referenced_sop_instance_uid == run.seg.SOPInstanceUID
        assert segment.referenced_sop_class_uid == run.seg.SOPClassUID
        assert segment.referenced_segment_numbers == [1]
        source_series = segment.source_series_for_segmentation
        assert source_series is not None and source_series.value == run.pre.series.series_instance_uid
        assert group.finding_type == hd.sr.CodedConcept("C113842", "NCIt", "Enhancing Lesion")

    def test_volume_is_the_mask_times_the_voxel_volume_in_ml(self, run: Run) -> None:
        (group,) = run.sr.content.get_volumetric_roi_measurement_groups()
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        spacing = run.pre.image.GetSpacing()
        expected = run.mask.sum() * spacing[0] * spacing[1] * spacing[2] / 1000.0
        assert expected > 0
        assert volume.value == pytest.approx(expected, abs=1e-4)
        assert volume.unit == hd.sr.CodedConcept("ml", "UCUM", "milliliter")
        assert enhancing_volume_ml(run.pre, run.mask) == pytest.approx(expected)

    def test_algorithm_names_the_model_version_and_sha256(self, run: Run, model: ModelIdentity) -> None:
        (group,) = run.sr.content.get_volumetric_roi_measurement_groups()
        items = {
            i.ConceptNameCodeSequence[0].CodeMeaning: i.get("TextValue")
            for i in group[0].ContentSequence
            if i.ValueType == "TEXT"
        }
        assert items["Algorithm Name"] == f"GadSynth {model.name}"
        assert items["Algorithm Version"] == model.version
        parameters = [
            i.TextValue
            for i in group[0].ContentSequence
            if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
        ]
        assert f"model_sha256={model.sha256}" in parameters
        assert f"gadsynth_version={__version__}" in parameters

    def test_the_roles_name_each_input_series(self, run: Run) -> None:
        roles = run.texts(codes.DCM.SourceSeriesForImageProcessingOperation)
        assert roles == [
            f"t1_pre (pre-contrast T1-weighted): {run.pre.series.series_instance_uid}",
            f"t1_low_dose (low-dose contrast-enhanced T1-weighted): {run.low.series.series_instance_uid}",
        ]

    def test_it_says_synthetic_and_names_the_synthetic_series(self, run: Run) -> None:
        notice = run.texts(codes.DCM.Comment)[0]
        assert "SYNTHETIC" in notice and "predicted, not acquired" in notice
        assert str(pydicom.dcmread(run.synthetic[0]).SeriesInstanceUID) in notice

    def test_the_warnings_are_text_items(self, run: Run) -> None:
        comments = run.texts(codes.DCM.Comment)[1:]
        assert comments == [WARNING_PREFIX + warning for warning in WARNINGS]


class TestHeader:
    def test_new_series_in_the_source_study(self, run: Run) -> None:
        ds, source = run.ds, run.pre.slices[0].dataset
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID not in {
            source.SeriesInstanceUID,
            run.seg.SeriesInstanceUID,
            pydicom.dcmread(run.synthetic[0]).SeriesInstanceUID,
        }
        assert (ds.Modality, int(ds.SeriesNumber), int(ds.InstanceNumber)) == ("SR", 9005, 1)
        assert ds.SeriesDescription == "GADSYNTH REPORT (SYNTHETIC CONTRAST, ce-lowdose-v1)"

    def test_patient_and_study_are_copied(self, run: Run) -> None:
        source = run.pre.slices[0].dataset
        keywords = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "AccessionNumber")
        for keyword in (*keywords, "StudyDate", "StudyTime", "StudyID", "StudyDescription", "ReferringPhysicianName"):
            assert run.ds[keyword].value == source[keyword].value, keyword

    def test_gadsynth_is_the_manufacturer_and_contributes_once(self, run: Run, model: ModelIdentity) -> None:
        ds = run.ds
        assert (ds.Manufacturer, ds.ManufacturerModelName) == ("GadSynth", model.name)
        assert list(ds.SoftwareVersions) == [f"GadSynth {__version__}", f"{model.name} {model.version}"]
        purposes = [i.PurposeOfReferenceCodeSequence[0].CodeValue for i in ds.ContributingEquipmentSequence]
        assert purposes.count("109101") == 1  # the scanner of the source, once
        gadsynth = [i for i in ds.ContributingEquipmentSequence if i.Manufacturer == "GadSynth"]
        assert len(gadsynth) == 1 and model.sha256 in gadsynth[0].ContributionDescription

    def test_a_machine_result_nobody_signed(self, run: Run) -> None:
        assert (run.ds.CompletionFlag, run.ds.VerificationFlag, run.ds.PreliminaryFlag) == (
            "COMPLETE",
            "UNVERIFIED",
            "PRELIMINARY",
        )

    def test_evidence_lists_inputs_synthetic_series_and_seg(self, run: Run) -> None:
        evidence = {(series, sop) for _, series, sop, _ in run.sr.get_evidence()}
        expected = {(run.pre.series.series_instance_uid, ref.sop_instance_uid) for ref in run.pre.slices}
        expected |= {(run.low.series.series_instance_uid, ref.sop_instance_uid) for ref in run.low.slices}
        expected |= {(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in map(pydicom.dcmread, run.synthetic)}
        expected.add((run.seg.SeriesInstanceUID, run.seg.SOPInstanceUID))
        assert evidence == expected
        assert "PertinentOtherEvidenceSequence" not in run.ds  # everything is in the study


class TestValidity:
    def test_dciodvfy_reports_nothing(self, run: Run, dciodvfy: str) -> None:
        assert dciodvfy_errors(dciodvfy, run.path) == ([], [])

    def test_dciodvfy_reports_no_errors_for_each_source(
        self, source: Volume, tmp_path: Path, model: ModelIdentity, dciodvfy: str
    ) -> None:
        mask = _mask(source)
        seg = write_enhancement_seg(source, mask, tmp_path / "seg.dcm", series_number=9003, model=model)
        path = write_report_sr(
            source, tmp_path / "sr.dcm", series_number=9005, model=model, seg_path=seg, enhancement_mask=mask
        )
        errors, _ = dciodvfy_errors(dciodvfy, path)
        assert errors == []
        assert hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()

    def test_every_element_reads_strictly(self, run: Run) -> None:
        for element in pydicom.dcmread(run.path).iterall():
            _ = element.value


class TestWarnings:
    def test_many_warnings_are_capped_and_counted(
        self, study_pair: tuple[Volume, Volume], tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, _ = study_pair
        mask = _mask(pre)
        seg = write_enhancement_seg(pre, mask, tmp_path / "seg.dcm", series_number=9003, model=model)
        many = [f"warning {n}" for n in range(MAX_WARNINGS + 7)] + ["warning 0", "  "]
        path = write_report_sr(
            pre, tmp_path / "sr.dcm", series_number=5, model=model, seg_path=seg, enhancement_mask=mask, warnings=many
        )
        ds = pydicom.dcmread(path)
        container = ds.ContentSequence[-1]
        texts = [i.TextValue for i in container.ContentSequence if i.TextValue.startswith(WARNING_PREFIX)]
        assert len(texts) == MAX_WARNINGS + 1
        assert texts[-1] == f"{WARNING_PREFIX}7 more: see report.json"


class TestErrors:
    @pytest.fixture(scope="class")
    @classmethod
    def seg(
        cls, study_pair: tuple[Volume, Volume], tmp_path_factory: pytest.TempPathFactory, model: ModelIdentity
    ) -> Path:
        pre, _ = study_pair
        folder = tmp_path_factory.mktemp("sr_errors")
        return write_enhancement_seg(pre, _mask(pre), folder / "seg.dcm", series_number=9003, model=model)

    def _write(self, source: Volume, seg: Path, tmp_path: Path, model: ModelIdentity, **options: object) -> Path:
        arguments: dict[str, object] = {"series_number": 9005, "seg_path": seg, "enhancement_mask": _mask(source)}
        arguments.update(options)
        return write_report_sr(source, tmp_path / "sr.dcm", model=model, **arguments)  # type: ignore[arg-type]

    def test_mask_must_be_boolean(
        self, study_pair: tuple[Volume, Volume], seg: Path, tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, _ = study_pair
        with pytest.raises(TypeError, match=r"must be a boolean NumPy array\. Found uint8"):
            self._write(pre, seg, tmp_path, model, enhancement_mask=_mask(pre).astype(np.uint8))

    def test_mask_must_have_the_volume_shape(
        self, study_pair: tuple[Volume, Volume], seg: Path, tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, _ = study_pair
        with pytest.raises(
            ValueError, match=r"must have shape \(8, 24, 20\) \(slice, row, col\)\. Found \(8, 24, 19\)"
        ):
            self._write(pre, seg, tmp_path, model, enhancement_mask=_mask(pre)[:, :, 1:])

    def test_seg_must_be_a_segmentation_of_the_study(
        self, study_pair: tuple[Volume, Volume], seg: Path, tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, _ = study_pair
        not_seg = pre.series.instances[0].path
        with pytest.raises(
            ValueError, match=r"must be a Segmentation of study .* Found SOP class '1\.2\.840\.10008\.5\.1\.4\.1\.1\.4'"
        ):
            self._write(pre, seg, tmp_path, model, seg_path=not_seg)

    def test_description_must_say_synthetic(
        self, study_pair: tuple[Volume, Volume], seg: Path, tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, _ = study_pair
        with pytest.raises(ValueError, match=r"must say that the series is synthetic"):
            self._write(pre, seg, tmp_path, model, series_description="GADSYNTH REPORT")

    def test_series_number_must_be_an_int(
        self, study_pair: tuple[Volume, Volume], seg: Path, tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, _ = study_pair
        with pytest.raises(TypeError, match=r"series_number must be an int\. Found str"):
            self._write(pre, seg, tmp_path, model, series_number="9005")

    def test_configured_number_and_description(
        self, study_pair: tuple[Volume, Volume], seg: Path, tmp_path: Path, model: ModelIdentity
    ) -> None:
        pre, _ = study_pair
        path = self._write(pre, seg, tmp_path, model, series_number=77, series_description="Synthetic report")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (int(ds.SeriesNumber), ds.SeriesDescription) == (77, "Synthetic report")
