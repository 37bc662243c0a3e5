"""Series to volume: geometry and values against dcm2niix and known synthetic series; every geometry error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from operators.errors import (
    CorruptFileError,
    InconsistentGeometryError,
    UnsupportedImageError,
    UnsupportedTransferSyntaxError,
)
from operators.pixel_reader import read_pixels
from operators.roles import Role
from operators.series_to_volume import build_volume, build_volumes
from operators.study import Selection
from operators.study_loader import load_studies, load_study
from tests.operators.dicom_factory import SeriesSpec, slice_positions, stored_values, write_series

XA30 = "dcm_qa_xa30"


def _reference(real_dicom: Path, name: str) -> sitk.Image:
    return sitk.ReadImage(str(real_dicom / XA30 / "Ref" / name))


def _same_grid(ours: sitk.Image, ref: sitk.Image) -> sitk.Image:
    """Our image permuted / flipped (no interpolation) into the reference's axis order (NIfTI RAS vs DICOM LPS)."""
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ref.GetDirection())
    return sitk.DICOMOrient(ours, code)


class TestRealEnhanced:
    """Siemens XA30 Enhanced MR: series 5 (3D T1w) rebuilds exactly like dcm2niix's reference."""

    def test_t1w_matches_dcm2niix_affine_shape_and_values(self, real_dicom: Path) -> None:
        series = load_study(real_dicom / XA30 / "In" / "5_anat-T1w_acq-tfl").series[0]
        volume = build_volume(series, Role.T1_PRE)
        ref = _reference(real_dicom, "5_anat-T1w_acq-tfl.nii")
        ours = _same_grid(volume.image, ref)
        assert ours.GetSize() == ref.GetSize() == (96, 128, 128)
        np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(ours.GetSpacing(), ref.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(ours.GetDirection(), ref.GetDirection(), atol=1e-6)
        # The same world -> voxel mapping: compare the full 4x4 affines.
        for image in (ours, ref):
            assert image.TransformIndexToPhysicalPoint((95, 127, 127)) == pytest.approx(
                ref.TransformIndexToPhysicalPoint((95, 127, 127)), abs=2e-3
            )
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref).astype(np.float32))
        assert volume.image.GetPixelID() == sitk.sitkFloat32

    def test_slices_reference_their_frames(self, real_dicom: Path) -> None:
        series = load_study(real_dicom / XA30 / "In" / "5_anat-T1w_acq-tfl").series[0]
        volume = build_volume(series)
        assert len(volume.slices) == 96
        assert {s.sop_instance_uid for s in volume.slices} == {series.instances[0].sop_instance_uid}
        assert sorted(s.frame_number for s in volume.slices) == list(range(1, 97))
        # Slice k sits where its source frame's Plane Position says.
        frames = volume.slices[0].dataset.PerFrameFunctionalGroupsSequence
        for k in (0, 50, 95):
            frame = frames[volume.slices[k].frame_number - 1]
            position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
            assert volume.image.TransformIndexToPhysicalPoint((0, 0, k)) == pytest.approx(position, abs=1e-3)

    def test_adc_map_matches_dcm2niix(self, real_dicom: Path) -> None:
        series = load_study(real_dicom / XA30 / "In" / "11_DWI_dir80_PA").series[0]
        ref = _reference(real_dicom, "11_DWI_dir80_PA.nii")
        ours = _same_grid(build_volume(series).image, ref)
        np.testing.assert_allclose(ours.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref).astype(np.float32))

    def test_multi_volume_series_is_refused(self, real_dicom: Path) -> None:
        series = load_study(real_dicom / XA30 / "In" / "8_gre_field_mapping").series[0]
        with pytest.raises(InconsistentGeometryError, match=r"66 slices at 33 positions.*more than one volume"):
            build_volume(series)


class TestRealTransferSyntaxes:
    """dcm_qa_ts: one Siemens image in nine transfer syntaxes."""

    def test_all_nine_decode_to_identical_pixels(self, real_dicom: Path) -> None:
        folder = real_dicom / "dcm_qa_ts" / "In"
        study = load_study(folder)
        instances = [i for s in study.series for i in s.instances]
        syntaxes = {i.transfer_syntax_uid for i in instances}
        assert len(instances) == 9
        assert len(syntaxes) == 7  # two files each for JPEG lossless and JPEG-LS
        truth = dcmread(folder / "1.dcm").pixel_array
        for instance in instances:
            pixels = read_pixels(study.series[0], instance)
            assert pixels.shape == (1, 384, 384)
            np.testing.assert_array_equal(pixels[0], truth, err_msg=instance.transfer_syntax_uid)

    def test_single_mosaic_image_is_not_a_volume(self, real_dicom: Path, tmp_path: Path) -> None:
        shutil.copy(real_dicom / "dcm_qa_ts" / "In" / "1.dcm", tmp_path / "1.dcm")
        series = load_study(tmp_path).series[0]
        with pytest.raises(
            InconsistentGeometryError, match=r"NumberOfFrames: expected at least 2 slices.*a single slice"
        ):
            build_volume(series)


class TestSyntheticGeometry:
    """Known synthetic series: origin, spacing, direction, values and slice order."""

    @pytest.mark.parametrize(
        "orientation",
        [
            (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # axial
            (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal
            (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),  # coronal
            (0.9848078, 0.1736482, 0.0, -0.1736482, 0.9848078, 0.0),  # axial rotated 10 degrees in plane
        ],
        ids=["axial", "sagittal", "coronal", "oblique"],
    )
    def test_geometry_and_values(self, tmp_path: Path, orientation: tuple[float, ...]) -> None:
        spec = SeriesSpec(orientation=orientation, slope=2.0, intercept=-5.0)
        write_series(tmp_path, spec)
        volume = build_volume(load_study(tmp_path).series[0])
        image = volume.image
        assert image.GetSize() == (spec.columns, spec.rows, spec.slices)
        np.testing.assert_allclose(image.GetSpacing(), spec.spacing, rtol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), spec.origin, atol=1e-3)
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        np.testing.assert_allclose(direction[:, 0], orientation[:3], atol=1e-6)
        np.testing.assert_allclose(direction[:, 1], orientation[3:], atol=1e-6)
        expected = stored_values(spec).astype(np.float64) * 2.0 - 5.0
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected.astype(np.float32))
        # Files are named in reverse slice order: the volume follows positions, not file names.
        assert [s.dataset.InstanceNumber for s in volume.slices] == list(range(1, spec.slices + 1))

    @pytest.mark.parametrize(
        "syntax",
        [ImplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless],
        ids=["implicit", "big-endian", "rle", "jpeg-ls", "jpeg2000"],
    )
    def test_transfer_syntaxes_give_the_same_volume(self, tmp_path: Path, syntax: str) -> None:
        spec = SeriesSpec(rows=32, columns=32)
        write_series(tmp_path, spec, transfer_syntax=syntax)
        volume = build_volume(load_study(tmp_path).series[0])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(volume.image), stored_values(spec).astype(np.float32))


class TestGeometryErrors:
    """Series that are not one regular 3D stack are refused with the attribute, expected and found."""

    def test_missing_slice(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec(description="T1 gap"))
        paths[4].unlink()
        series = load_study(tmp_path).series[0]
        with pytest.raises(
            InconsistentGeometryError,
            match=r"'T1 gap'.*ImagePositionPatient: expected uniform slice spacing \(2\.000 mm\), "
            r"found a gap of 4\.000 mm between slices 3 and 4 of 9",
        ) as info:
            build_volume(series)
        assert info.value.attribute == "ImagePositionPatient"
        assert info.value.series_instance_uid == series.series_instance_uid

    def test_tilted_gantry(self, tmp_path: Path) -> None:
        spec = SeriesSpec(description="CT-like tilt")
        positions = slice_positions(spec) + np.outer(np.arange(spec.slices), [0.0, 0.35, 0.0])  # 10 degrees
        write_series(tmp_path, spec, positions=positions)
        with pytest.raises(
            InconsistentGeometryError, match=r"no gantry tilt\), found a stack tilted by 9\.9[0-9] degrees"
        ):
            build_volume(load_study(tmp_path).series[0])

    def test_mixed_orientations(self, tmp_path: Path) -> None:
        spec = SeriesSpec(description="3-plane")
        write_series(tmp_path / "a", spec)
        write_series(tmp_path / "b", SeriesSpec(**{**spec.__dict__, "orientation": (1.0, 0, 0, 0, 0, -1.0)}))
        with pytest.raises(InconsistentGeometryError, match=r"ImageOrientationPatient: expected the same orientation"):
            build_volume(load_study(tmp_path).series[0])

    def test_mixed_sizes(self, tmp_path: Path) -> None:
        spec = SeriesSpec(description="sizes")
        write_series(tmp_path / "a", spec)
        other = SeriesSpec(**{**spec.__dict__, "rows": 20, "origin": (-10.0, -12.0, 30.0)})
        write_series(tmp_path / "b", other)
        with pytest.raises(InconsistentGeometryError, match=r"Rows/Columns: expected one size for all slices"):
            build_volume(load_study(tmp_path).series[0])

    def test_single_slice(self, tmp_path: Path) -> None:
        write_series(tmp_path, SeriesSpec(slices=1))
        with pytest.raises(InconsistentGeometryError, match="a single slice"):
            build_volume(load_study(tmp_path).series[0])

    def test_missing_position(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec())
        ds = dcmread(paths[0])
        del ds.ImagePositionPatient
        ds.save_as(paths[0])
        with pytest.raises(InconsistentGeometryError, match="ImagePositionPatient is missing"):
            build_volume(load_study(tmp_path).series[0])


#: (attribute, raw value written into slice 3, the expected-text the error must carry)
BAD_HEADER_VALUES = [
    ("ImagePositionPatient", "", r"ImagePositionPatient is missing"),
    ("ImagePositionPatient", "abc\\1\\2", r"ImagePositionPatient: expected 3 numbers, found 'abc\\1\\2'"),
    ("ImagePositionPatient", "nan\\0\\0", r"ImagePositionPatient: expected 3 finite numbers"),
    ("ImagePositionPatient", "1\\2", r"ImagePositionPatient: expected 3 numbers, found 2 values"),
    ("ImageOrientationPatient", "0\\0\\0\\0\\0\\0", r"ImageOrientationPatient: expected two orthogonal"),
    ("ImageOrientationPatient", "1\\0\\0\\1\\0\\0", r"ImageOrientationPatient: expected two orthogonal"),
    ("ImageOrientationPatient", "1\\0\\0\\0\\nan\\0", r"ImageOrientationPatient: expected 6 finite"),
    ("ImageOrientationPatient", "2\\0\\0\\0\\2\\0", r"ImageOrientationPatient: expected unit direction"),
    ("PixelSpacing", "0\\1", r"PixelSpacing: expected two positive spacings"),
    ("PixelSpacing", "-1\\1", r"PixelSpacing: expected two positive spacings"),
    ("PixelSpacing", "nan\\1", r"PixelSpacing: expected 2 finite numbers"),
    ("PixelSpacing", "one\\two", r"PixelSpacing: expected 2 numbers, found 'one\\two'"),
    ("RescaleSlope", "steep", r"RescaleSlope: expected 1 numbers, found 'steep'"),
    ("RescaleSlope", "nan", r"RescaleSlope: expected 1 finite numbers"),
    ("RescaleSlope", "0", r"RescaleSlope: expected a non-zero number"),
    ("RescaleIntercept", "inf", r"RescaleIntercept: expected 1 finite numbers"),
]


class TestBadHeaderValues:
    """Values no scanner should write are refused, naming the series, the instance, the attribute and the value."""

    @pytest.mark.parametrize(("keyword", "raw", "match"), BAD_HEADER_VALUES)
    def test_refused_with_what_was_found(self, tmp_path: Path, keyword: str, raw: str, match: str) -> None:
        from pydicom.datadict import tag_for_keyword
        from pydicom.dataelem import RawDataElement

        paths = write_series(tmp_path, SeriesSpec(description="hostile"))
        ds = dcmread(paths[3])
        tag = tag_for_keyword(keyword)
        # written raw, as a broken scanner would: pydicom would refuse to encode most of these values
        ds[tag] = RawDataElement(tag, "DS", len(raw), raw.encode(), 0, False, True)
        ds.save_as(paths[3])
        series = load_study(tmp_path).series[0]
        with pytest.raises(InconsistentGeometryError, match=match) as info:
            build_volume(series)
        assert info.value.attribute == keyword
        assert info.value.series_instance_uid == series.series_instance_uid
        assert info.value.expected and info.value.found
        assert ds.SOPInstanceUID in str(info.value)

    @pytest.mark.parametrize("rows", [0, 65535])
    def test_matrix_out_of_bounds_is_refused_before_reading_pixels(self, tmp_path: Path, rows: int) -> None:
        paths = write_series(tmp_path, SeriesSpec(description="huge"))
        for path in paths:
            ds = dcmread(path)
            ds.Rows = ds.Columns = rows
            ds.save_as(path)
        with pytest.raises(InconsistentGeometryError, match=r"Rows/Columns: expected 1 to 2048 pixels each"):
            build_volume(load_study(tmp_path).series[0])


class TestPixelErrors:
    """Truncated files, unknown transfer syntaxes and colour images."""

    def test_truncated_pixel_data(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec(rows=32, columns=32))
        data = paths[2].read_bytes()
        paths[2].write_bytes(data[: len(data) - 700])
        with pytest.raises(
            CorruptFileError, match=r"holds 1348 bytes of pixel data, expected 2048 .*truncated"
        ) as info:
            build_volume(load_study(tmp_path).series[0])
        assert info.value.attribute == "PixelData"

    def test_truncated_compressed_file(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec(rows=32, columns=32), transfer_syntax=RLELossless)
        data = paths[2].read_bytes()
        paths[2].write_bytes(data[: len(data) - 300])
        with pytest.raises(CorruptFileError, match="cannot decode the pixel data"):
            build_volume(load_study(tmp_path).series[0])

    def test_unsupported_transfer_syntax(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec())
        for path in paths:
            ds = dcmread(path)
            ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # H.264: no decoder installed
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([b"\x00" * 16])
            ds["PixelData"].VR = "OB"
            ds.save_as(path)
        with pytest.raises(
            UnsupportedTransferSyntaxError,
            match=r"1\.2\.840\.10008\.1\.2\.4\.102 \(MPEG-4 AVC/H\.264 High Profile"
            r".*which no installed decoder handles",
        ) as info:
            build_volume(load_study(tmp_path).series[0])
        assert info.value.attribute == "TransferSyntaxUID"

    def test_colour_image(self, tmp_path: Path) -> None:
        paths = write_series(tmp_path, SeriesSpec(rows=4, columns=4, slices=3))
        for path in paths:
            ds = dcmread(path)
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = bytes(4 * 4 * 3)
            ds.save_as(path)
        with pytest.raises(UnsupportedImageError, match="SamplesPerPixel is 3"):
            build_volume(load_study(tmp_path).series[0])


class TestSelectionAndOperator:
    """Every selected role becomes a volume."""

    def test_build_volumes_for_every_role(self, tmp_path: Path) -> None:
        write_series(tmp_path / "a", SeriesSpec(series_number=1))
        write_series(tmp_path / "b", SeriesSpec(series_number=2, protocol="t2", description="T2 TSE"))
        study = load_studies(tmp_path)
        assert len(study) == 2  # each synthetic series has its own study UID
        first, second = study[0].series[0], study[1].series[0]
        selection = Selection(study=study[0], roles={Role.T1_PRE: first, Role.T2: second}, decisions=[])
        volumes = build_volumes(selection)
        assert set(volumes) == {Role.T1_PRE, Role.T2}
        assert volumes[Role.T2].role == Role.T2 and volumes[Role.T2].series is second


#: One small phantom study per combination that matters (vendor, T1 orientation, format, transfer syntax,
#: T1 sequence): every vendor, both orientations, both formats and every transfer syntax appear at least once.
PHANTOM_CASES = [
    ("siemens", "sagittal", "classic", "explicit-le", "mprage"),
    ("ge", "axial", "classic", "implicit-le", "gre"),
    ("philips", "sagittal", "enhanced", "explicit-le", "mprage"),
    ("siemens", "axial", "enhanced", "jpeg-ls", "mprage"),
    ("ge", "sagittal", "enhanced", "jpeg2000", "mprage"),
    ("philips", "axial", "classic", "rle", "gre"),
]


def _phantom(case: tuple[str, ...], out: Path) -> Path:
    """Generate the small phantom study of one case into `out` (skipped where the simulator is missing)."""
    phantom = pytest.importorskip("training.phantom")
    vendor, orientation, output_format, syntax, sequence = case
    options = phantom.PhantomOptions(
        seed=40 + PHANTOM_CASES.index(case),
        size="small",
        vendor=vendor,
        t1_orientation=orientation,
        t1_sequence=sequence,
        output_format=output_format,
        transfer_syntax=syntax,
        save_series_truth=True,
    )
    phantom.generate_study(options, out)
    return out


class TestPhantomStudies:
    """Simulated exams: all six roles found, every volume equal to the simulator's truth (geometry and values)."""

    @pytest.mark.parametrize("case", PHANTOM_CASES, ids=["-".join(c) for c in PHANTOM_CASES])
    def test_roles_and_volumes(self, case: tuple[str, ...], tmp_path: Path) -> None:
        from operators.series_selector import select_roles

        out = _phantom(case, tmp_path)
        params = json.loads((out / "truth" / "params.json").read_text())
        selection = select_roles(load_study(out / "dicom"), required=tuple(Role(r) for r in params["series"]))
        expected = {role: s["series_instance_uid"] for role, s in params["series"].items()}
        assert {r.value: s.series_instance_uid for r, s in selection.roles.items()} == expected
        for role in (Role.T1_LOW_DOSE, Role.T1_STANDARD_DOSE):
            info = selection.contrast[role]
            assert info.dose == pytest.approx(params["series"][role.value]["dose"], rel=0.03)
            assert (info.agent, info.field_strength_t) == (
                params["contrast"]["agent"],
                params["contrast"]["field_strength_t"],
            )
            assert info.r1 == pytest.approx(params["contrast"]["r1_per_mM_per_s"]) and info.source == "header"
        volumes = build_volumes(selection)
        for role, volume in volumes.items():
            truth = sitk.ReadImage(str(out / "truth" / "series" / f"{role.value}.nii.gz"))
            image = volume.image
            assert image.GetSize() == truth.GetSize(), role
            np.testing.assert_allclose(image.GetOrigin(), truth.GetOrigin(), atol=1e-3, err_msg=role)
            np.testing.assert_allclose(image.GetSpacing(), truth.GetSpacing(), rtol=1e-5, err_msg=role)
            np.testing.assert_allclose(image.GetDirection(), truth.GetDirection(), atol=1e-5, err_msg=role)
            np.testing.assert_allclose(
                sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(truth), rtol=1e-6, atol=1e-4, err_msg=role
            )
