"""Study loader: recursive loading, skipped objects with reasons, duplicates, and every bad-input error."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from operators.errors import MultipleStudiesError, NoStudyError
from operators.fast_header import first_frame_group, frame_positions, raw_int, raw_numbers, raw_text, read_header
from operators.study_loader import load_studies, load_study
from tests.operators.dicom_factory import SeriesSpec, write_series

XA30 = "dcm_qa_xa30"


@pytest.fixture(scope="module")
def xa30_study(real_dicom: Path):  # type: ignore[no-untyped-def]
    return load_study(real_dicom / XA30 / "In")


class TestRealStudy:
    """The Siemens XA30 session: 20 image series; the Phoenix documents and the PDF are skipped."""

    def test_series_found(self, xa30_study) -> None:  # type: ignore[no-untyped-def]
        numbers = [s.series_number for s in xa30_study.series]
        assert numbers == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 20, 21, 22, 24, 25, 27, 28]
        assert all(s.modality == "MR" for s in xa30_study.series)
        by_number = {s.series_number: s for s in xa30_study.series}
        assert len(by_number[7].instances) == 20 and len(by_number[5].instances) == 1
        assert by_number[5].description == "anat-T1w_acq-tfl"

    def test_headers_only(self, xa30_study) -> None:  # type: ignore[no-untyped-def]
        instance = xa30_study.series[0].instances[0]
        assert "PixelData" not in instance.dataset
        assert instance.pixel_data_offset is not None
        with instance.path.open("rb") as fp:
            fp.seek(instance.pixel_data_offset)
            assert fp.read(4) == b"\xe0\x7f\x10\x00"

    def test_non_images_skipped_with_reasons(self, xa30_study) -> None:  # type: ignore[no-untyped-def]
        reasons = {s.path.name: s.reason for s in xa30_study.skipped}
        assert reasons["XA_validation.pdf"] == "not DICOM"
        phoenix = [r for p, r in ((s.path, s.reason) for s in xa30_study.skipped) if "99_Phoenix" in str(p)]
        assert len(phoenix) == 7
        assert all(r.startswith("not an image: Modality SR") for r in phoenix)


class TestSkipping:
    """Non-DICOM files, non-image objects and duplicate instances are skipped, listed and logged."""

    def test_duplicates_dropped_once_with_note(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        paths = write_series(tmp_path / "a", SeriesSpec())
        (tmp_path / "copy").mkdir()
        shutil.copy(paths[0], tmp_path / "copy" / "again.dcm")
        with caplog.at_level(logging.INFO, logger="operators.study_loader"):
            study = load_study(tmp_path)
        assert len(study.series[0].instances) == 10
        duplicates = [s for s in study.skipped if s.reason.startswith("duplicate SOP instance")]
        assert len(duplicates) == 1
        kept = {i.path for i in study.series[0].instances}
        assert duplicates[0].path not in kept
        assert f"Dropped a duplicate of SOP instance {duplicates[0].reason.split()[3]}" in caplog.text
        assert "Skipped 1 file(s): duplicate SOP instance" in caplog.text

    def test_junk_and_truncated_header(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec())
        (tmp_path / "notes.txt").write_text("not dicom")
        (tmp_path / "empty.dcm").write_bytes(b"")
        data = paths[3].read_bytes()
        paths[3].write_bytes(data[:400])  # cut inside the header
        study = load_study(tmp_path)
        reasons = {s.path.name: s.reason for s in study.skipped}
        assert reasons["notes.txt"] == "not DICOM"
        assert reasons["empty.dcm"] == "empty file (0 bytes)"
        assert paths[3].name in reasons
        assert reasons[paths[3].name].endswith("(the file ends early: truncated?)")
        assert len(study.series[0].instances) == 9

    def test_dataset_without_meta_header(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec(slices=3))
        ds = dcmread(paths[0])
        del ds.file_meta
        ds.SOPInstanceUID = generate_uid()
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, True
        write_dataset(buffer, ds)  # no preamble, no 'DICM', no meta header: as some PACS exports
        raw = tmp_path / "raw.dcm"
        raw.write_bytes(buffer.getvalue())
        study = load_study(tmp_path)
        assert len(study.series[0].instances) == 4
        loaded = next(i for i in study.series[0].instances if i.path == raw)
        assert loaded.transfer_syntax_uid == "1.2.840.10008.1.2"


class TestErrors:
    """Inputs that hold no usable study."""

    def test_empty_folder(self, tmp_path: Path) -> None:
        with pytest.raises(NoStudyError, match=r"No DICOM image found under .*: 0 files examined\.") as info:
            load_study(tmp_path)
        assert info.value.attribute == "PixelData"

    def test_missing_folder(self, tmp_path: Path) -> None:
        with pytest.raises(NoStudyError, match=r"Input .*nowhere does not exist"):
            load_study(tmp_path / "nowhere")

    def test_only_non_images(self, real_dicom: Path, tmp_path: Path) -> None:
        shutil.copytree(real_dicom / XA30 / "In" / "99_Phoenix_Document", tmp_path / "sr")
        with pytest.raises(NoStudyError, match=r"7 files examined, skipped as not an image: Modality SR"):
            load_study(tmp_path)

    def test_no_mr(self, tmp_path: Path) -> None:
        write_series(tmp_path, SeriesSpec(modality="CT", description="head CT"))
        with pytest.raises(NoStudyError, match=r"No MR image series under .*: found only Modality CT") as info:
            load_study(tmp_path)
        assert (info.value.expected, info.value.found) == ("MR", "CT")

    def test_two_studies(self, tmp_path: Path) -> None:
        write_series(tmp_path / "a", SeriesSpec(study_uid="1.2.3.1"))
        write_series(tmp_path / "b", SeriesSpec(study_uid="1.2.3.2"))
        with pytest.raises(MultipleStudiesError, match=r"holds 2 MR studies \(1\.2\.3\.1, 1\.2\.3\.2\)"):
            load_study(tmp_path)
        assert load_study(tmp_path, study_instance_uid="1.2.3.2").study_instance_uid == "1.2.3.2"
        with pytest.raises(NoStudyError, match=r"No MR study 9\.9 under"):
            load_study(tmp_path, study_instance_uid="9.9")
        assert [s.study_instance_uid for s in load_studies(tmp_path)] == ["1.2.3.1", "1.2.3.2"]


class TestRawValues:
    """Attribute values read straight from raw bytes agree with pydicom's conversion."""

    def test_agree_with_pydicom(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec(slope=2.5))
        ds = dcmread(paths[0], stop_before_pixels=True)
        full = dcmread(paths[0], stop_before_pixels=True)
        assert raw_text(ds, 0x0020000E) == full.SeriesInstanceUID
        assert raw_numbers(ds, 0x00200032) == [float(v) for v in full.ImagePositionPatient]
        assert raw_numbers(ds, 0x00281053) == [2.5]
        assert raw_int(ds, 0x00280010) == full.Rows and raw_int(ds, 0x00280011) == full.Columns
        assert raw_text(ds, 0x00080008) == "\\".join(full.ImageType)
        assert raw_text(ds, 0x00181060) is None  # absent


class TestFastHeader:
    """The fast header reader gives exactly pydicom's data set, or declines."""

    def test_same_as_pydicom_on_real_files(self, real_dicom: Path) -> None:
        files = sorted(real_dicom.glob("dcm_qa_ts/In/*.dcm"))  # every transfer syntax
        kinds = ("5_anat", "7_func", "8_gre", "11_DWI", "14_DWI", "27_asl", "99_Phoenix")  # T1, fMRI, ..., SR
        files += [min(f.iterdir()) for f in (real_dicom / XA30 / "In").iterdir() if f.name.startswith(kinds)]
        files.append(real_dicom / XA30 / "In" / "XA_validation.pdf")
        read = 0
        for path in files:
            fast = read_header(path)
            if path.suffix == ".pdf" or path.name == "3.dcm":  # not DICOM; big endian
                assert fast is None, path
                continue
            assert fast is not None, path
            ds, offset = fast
            with path.open("rb") as fp:
                reference = dcmread(fp, stop_before_pixels=True)
                position = fp.tell()
                expected_offset = position if fp.read(4) == b"\xe0\x7f\x10\x00" else None
            assert ds == reference, path  # every element, sequences included
            assert ds.file_meta == reference.file_meta and offset == expected_offset, path
            read += 1
        assert read == len(files) - 2 == 15  # 8 transfer syntaxes (not big endian), 7 XA30 series

    @pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"], ids=["implicit", "explicit"])
    @pytest.mark.parametrize("undefined", [True, False], ids=["undefined-length", "defined-length"])
    def test_nested_sequences(self, tmp_path: Path, syntax: str, undefined: bool) -> None:
        paths = write_series(tmp_path, SeriesSpec(slices=1))
        ds = dcmread(paths[0])
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "407976008", "SCT", "Gadobutrol"
        item = Dataset()
        item.ContrastBolusAgentSequence = Sequence([inner])
        item.ContrastBolusVolume = 7.5
        ds.ContrastBolusAgentSequence = Sequence([item, Dataset()])
        ds.file_meta.TransferSyntaxUID = syntax
        for sequence in (ds.ContrastBolusAgentSequence, item.ContrastBolusAgentSequence):
            sequence.is_undefined_length = undefined
        ds["ContrastBolusAgentSequence"].is_undefined_length = undefined
        ds.save_as(paths[0], implicit_vr=syntax.endswith(".2"), little_endian=True)
        fast = read_header(paths[0])
        assert fast is not None
        reference = dcmread(paths[0], stop_before_pixels=True)
        assert fast[0] == reference
        assert fast[0].ContrastBolusAgentSequence[0].ContrastBolusAgentSequence[0].CodeMeaning == "Gadobutrol"

    def test_declines_truncated_files(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec(slices=1))
        data = paths[0].read_bytes()
        paths[0].write_bytes(data[:700])
        assert read_header(paths[0]) is None

    def test_first_frame_and_positions_without_full_conversion(self, real_dicom: Path) -> None:
        path = min((real_dicom / XA30 / "In" / "5_anat-T1w_acq-tfl").iterdir())
        fast = read_header(path)
        assert fast is not None
        ds = fast[0]
        first = first_frame_group(ds)
        positions = frame_positions(ds)
        assert isinstance(ds.get_item(0x52009230).value, bytes)  # still raw: nothing converted the 96 items
        reference = dcmread(path, stop_before_pixels=True).PerFrameFunctionalGroupsSequence
        assert first == reference[0]
        assert positions == [
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] for item in reference
        ]
