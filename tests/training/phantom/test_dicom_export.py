"""Tests of the phantom's DICOM exporter: dciodvfy validity, lossless pixels, geometry, vendor and contrast headers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.tag import Tag
from pydicom.uid import EnhancedMRImageStorage, MRImageStorage
from scipy.spatial.transform import Rotation

from training.phantom.dicom_export import TRANSFER_SYNTAXES, write_series
from training.phantom.dicom_vendor import AGENT_PRODUCTS, GADOLINIUM_MG_PER_MMOL, vendor_profile
from training.phantom.types import ContrastHeader, Protocol, SimulatedSeries, StudyHeader

# Direction matrices (SimpleITK row-major; columns = row, column and slice axes in LPS).
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
#: Sagittal as scanners write it: along a row anterior->posterior, down a column head->feet, slices R->L (left-handed).
SAGITTAL = tuple(float(v) for v in np.column_stack([(0, 1, 0), (0, 0, -1), (1, 0, 0)]).ravel())
OBLIQUE = tuple(float(v) for v in Rotation.from_euler("xyz", [14.0, -9.0, 23.0], degrees=True).as_matrix().ravel())
GEOMETRIES = {"axial": AXIAL, "sagittal": SAGITTAL, "oblique": OBLIQUE}

SHAPE = (9, 40, 36)  # slices, rows, columns: small, but JPEG 2000 needs >= 32 rows and columns
GADOBUTROL = ContrastHeader(
    agent="gadobutrol", volume_ml=7.5, dose=1.0, concentration_mmol_per_ml=1.0, start_time=dt.time(10, 21, 30)
)

_ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND")
_MPRAGE = {"scanning_sequence": "GR\\IR", "sequence_variant": "SK\\SP\\MP", "mr_acquisition_type": "3D"}
#: Protocol fields per role (TR / TE / TI in ms, flip angle in degrees), as the physics engineer fills them.
PROTOCOLS: dict[str, dict[str, object]] = {
    "t1_pre": {**_MPRAGE, "repetition_time_ms": 1900.0, "echo_time_ms": 2.3, "inversion_time_ms": 900.0,
               "flip_angle_deg": 9.0, "echo_train_length": 1, "image_type": _ORIGINAL},
    "t2": {"scanning_sequence": "SE", "sequence_variant": "SK\\SP\\OSP", "mr_acquisition_type": "2D",
           "repetition_time_ms": 4000.0, "echo_time_ms": 95.0, "inversion_time_ms": None, "flip_angle_deg": 150.0,
           "echo_train_length": 15, "image_type": _ORIGINAL},
    "flair": {"scanning_sequence": "SE\\IR", "sequence_variant": "SK\\SP\\MP", "mr_acquisition_type": "2D",
              "repetition_time_ms": 9000.0, "echo_time_ms": 85.0, "inversion_time_ms": 2500.0,
              "flip_angle_deg": 150.0, "echo_train_length": 21, "image_type": _ORIGINAL},
    "adc": {"scanning_sequence": "EP", "sequence_variant": "SK\\SP", "mr_acquisition_type": "2D",
            "repetition_time_ms": 5200.0, "echo_time_ms": 68.0, "inversion_time_ms": None, "flip_angle_deg": 90.0,
            "echo_train_length": 1, "image_type": ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")},
}  # fmt: skip
PROTOCOLS["t1_standard_dose"] = PROTOCOLS["t1_pre"]


def make_study(vendor: str = "siemens", field_strength_t: float = 3.0) -> StudyHeader:
    """A synthetic exam header (names and IDs are made up)."""
    return StudyHeader(
        patient_name="PHANTOM^SUBJECT7",
        patient_id="GSPH0007",
        patient_birth_date="19680312",
        patient_sex="F",
        patient_weight_kg=75.0,
        patient_size_m=1.68,
        study_instance_uid="1.2.826.0.1.3680043.8.498.7001",
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.7002",
        study_date=dt.date(2024, 5, 6),
        study_time=dt.time(10, 0, 0),
        accession_number="GS24050607",
        vendor=vendor,  # type: ignore[arg-type]
        field_strength_t=field_strength_t,
    )


def make_series(
    role: str = "t1_pre",
    *,
    geometry: str = "axial",
    seed: int = 0,
    shape: tuple[int, int, int] = SHAPE,
    contrast: ContrastHeader | None = None,
) -> SimulatedSeries:
    """A seeded uint16 volume (full 12-bit range, with the extremes present) and the protocol of `role`."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 4096, size=shape, dtype=np.uint16)
    array.flat[:2] = (0, 4095)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.94, 1.07, 1.6 if role.startswith("t1") else 4.5))
    image.SetOrigin((-88.25, -101.5 + seed, 37.125))
    image.SetDirection(GEOMETRIES[geometry])
    fields = PROTOCOLS[role]
    protocol = Protocol(
        role=role,
        description=f"{role}_{geometry}",
        series_number=3 + seed,
        sequence_name="*tfl3d1_16ns" if fields["mr_acquisition_type"] == "3D" else "*tse2d1_15",
        acquisition_time=dt.time(10, 5 + 4 * seed, 0),
        contrast=contrast,
        **fields,  # type: ignore[arg-type]
    )
    return SimulatedSeries(
        protocol=protocol,
        image=image,
        series_instance_uid=f"1.2.826.0.1.3680043.8.498.7100.{seed}",
        slice_thickness_mm=image.GetSpacing()[2],
        extra={"b_value": 1000.0} if role == "adc" else {},
    )


def dciodvfy_errors(tool: str, path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for one file."""
    result = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def read_strict(path: Path) -> pydicom.Dataset:
    """Read a file and touch every value, so that strict validation (autouse fixture) sees all of them."""
    ds = pydicom.dcmread(path)
    for element in ds.iterall():
        _ = element.value
    return ds


def assert_same_geometry(image: sitk.Image, expected: sitk.Image) -> None:
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-4)


# One series per transfer syntax, each in another geometry / role, so every syntax and geometry is covered once.
SYNTAX_CASES = [
    ("explicit-le", "axial", "t1_pre"),
    ("implicit-le", "sagittal", "t1_standard_dose"),
    ("jpeg-ls", "oblique", "t2"),
    ("jpeg2000", "sagittal", "flair"),
    ("rle", "oblique", "adc"),
]


def _series_for(role: str, geometry: str) -> SimulatedSeries:
    return make_series(role, geometry=geometry, contrast=GADOBUTROL if role == "t1_standard_dose" else None)


class TestClassic:
    """MR Image Storage, one file per slice."""

    @pytest.mark.parametrize(("syntax", "geometry", "role"), SYNTAX_CASES)
    def test_valid_lossless_and_geometry(
        self, tmp_path: Path, dciodvfy: str, syntax: str, geometry: str, role: str
    ) -> None:
        series = _series_for(role, geometry)
        paths = write_series(series, make_study(), tmp_path, transfer_syntax=syntax)  # type: ignore[arg-type]
        expected = sitk.GetArrayFromImage(series.image)
        assert [p.name for p in paths] == [f"IM{k:04d}.dcm" for k in range(1, SHAPE[0] + 1)]
        for path in paths:
            assert dciodvfy_errors(dciodvfy, path) == [], path.name
        for k, path in enumerate(paths):
            ds = read_strict(path)
            assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
            assert ds.SOPClassUID == MRImageStorage
            assert ds.InstanceNumber == k + 1
            np.testing.assert_array_equal(ds.pixel_array, expected[k])
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(p) for p in paths])
        rebuilt = reader.Execute()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(rebuilt), expected)
        assert_same_geometry(rebuilt, series.image)

    @pytest.mark.parametrize("syntax", ["explicit-le", "implicit-le", "rle"])
    def test_files_are_what_pydicom_itself_writes(self, tmp_path: Path, syntax: str) -> None:
        """The per-slice fast path (template encoded once) gives the bytes of pydicom's own `dcmwrite`."""
        series = make_series("t1_standard_dose", contrast=GADOBUTROL)
        for path in write_series(series, make_study(), tmp_path, transfer_syntax=syntax)[:3]:  # type: ignore[arg-type]
            ds = read_strict(path)  # every value decoded, so dcmwrite re-encodes them all
            buffer = BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            assert buffer.getvalue() == path.read_bytes()

    def test_gdcm_sees_one_series_sorted_along_the_normal(self, tmp_path: Path) -> None:
        series = make_series(geometry="oblique")
        write_series(series, make_study(), tmp_path)
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path))
        assert sorted(Path(n).name for n in names) == [f"IM{k:04d}.dcm" for k in range(1, SHAPE[0] + 1)]
        rebuilt = sitk.ReadImage(names)
        assert_same_geometry(rebuilt, series.image)  # right-handed grid: GDCM's order is the acquisition order

    def test_slice_attributes(self, tmp_path: Path) -> None:
        series = make_series(geometry="oblique")
        paths = write_series(series, make_study(), tmp_path)
        direction = np.asarray(series.image.GetDirection()).reshape(3, 3)
        normal = np.cross(direction[:, 0], direction[:, 1])
        for k, path in enumerate(paths):
            ds = read_strict(path)
            position = np.asarray(series.image.TransformIndexToPhysicalPoint((0, 0, k)))
            np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-4)
            np.testing.assert_allclose(
                [float(v) for v in ds.ImageOrientationPatient], direction[:, :2].T.ravel(), atol=1e-6
            )
            assert float(ds.SliceLocation) == pytest.approx(float(position @ normal), abs=1e-4)
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx([1.07, 0.94])
            assert float(ds.SpacingBetweenSlices) == pytest.approx(1.6)
            assert float(ds.SliceThickness) == pytest.approx(1.6)


class TestEnhanced:
    """Enhanced MR Image Storage, one multi-frame file with functional groups."""

    @pytest.mark.parametrize(("syntax", "geometry", "role"), SYNTAX_CASES)
    def test_valid_lossless_and_geometry(
        self, tmp_path: Path, dciodvfy: str, syntax: str, geometry: str, role: str
    ) -> None:
        series = _series_for(role, geometry)
        paths = write_series(series, make_study(), tmp_path, output_format="enhanced", transfer_syntax=syntax)  # type: ignore[arg-type]
        expected = sitk.GetArrayFromImage(series.image)
        assert [p.name for p in paths] == ["IM0001.dcm"]
        assert dciodvfy_errors(dciodvfy, paths[0]) == []
        ds = read_strict(paths[0])
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
        assert ds.SOPClassUID == EnhancedMRImageStorage
        assert ds.NumberOfFrames == SHAPE[0]
        np.testing.assert_array_equal(ds.pixel_array, expected)
        rebuilt = sitk.ReadImage(str(paths[0]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(rebuilt), expected)
        assert_same_geometry(rebuilt, series.image)

    def test_functional_groups_rebuild_the_grid(self, tmp_path: Path) -> None:
        series = make_series(geometry="oblique")
        ds = read_strict(write_series(series, make_study(), tmp_path, output_format="enhanced")[0])
        shared = ds.SharedFunctionalGroupsSequence[0]
        orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        measures = shared.PixelMeasuresSequence[0]
        row_spacing, column_spacing = (float(v) for v in measures.PixelSpacing)
        positions = np.array(
            [
                [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                for f in ds.PerFrameFunctionalGroupsSequence
            ]
        )
        slice_axis = (positions[-1] - positions[0]) / np.linalg.norm(positions[-1] - positions[0])
        direction = np.column_stack([orientation[:3], orientation[3:], slice_axis])
        np.testing.assert_allclose(direction.ravel(), series.image.GetDirection(), atol=1e-4)
        np.testing.assert_allclose(positions[0], series.image.GetOrigin(), atol=1e-4)
        assert (column_spacing, row_spacing) == pytest.approx(series.image.GetSpacing()[:2])
        assert np.diff(positions, axis=0) @ slice_axis == pytest.approx([series.image.GetSpacing()[2]] * (SHAPE[0] - 1))
        indices = [list(f.FrameContentSequence[0].DimensionIndexValues) for f in ds.PerFrameFunctionalGroupsSequence]
        assert indices == [[1, k] for k in range(1, SHAPE[0] + 1)]
        pointers = [item.DimensionIndexPointer for item in ds.DimensionIndexSequence]
        assert pointers == [Tag("StackID"), Tag("InStackPositionNumber")]

    def test_mr_functional_groups_carry_the_protocol(self, tmp_path: Path) -> None:
        series = make_series("flair")
        ds = read_strict(write_series(series, make_study(), tmp_path, output_format="enhanced")[0])
        shared = ds.SharedFunctionalGroupsSequence[0]
        timing = shared.MRTimingAndRelatedParametersSequence[0]
        assert float(timing.RepetitionTime) == 9000.0
        assert float(timing.FlipAngle) == 150.0
        assert timing.EchoTrainLength == 21
        assert shared.MREchoSequence[0].EffectiveEchoTime == 85.0
        assert shared.MRModifierSequence[0].InversionRecovery == "YES"
        assert shared.MRModifierSequence[0].InversionTimes == 2500.0
        assert list(shared.MRImageFrameTypeSequence[0].FrameType) == ["ORIGINAL", "PRIMARY", "FLUID_ATTENUATED", "NONE"]
        assert ds.PulseSequenceName == "*tse2d1_15"
        assert ds.EchoPulseSequence == "SPIN"
        assert ds.MRAcquisitionType == "2D"

    def test_adc_is_derived_without_pulse_sequence(self, tmp_path: Path) -> None:
        ds = read_strict(write_series(make_series("adc"), make_study(), tmp_path, output_format="enhanced")[0])
        assert list(ds.ImageType) == ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]
        assert "PulseSequenceName" not in ds
        assert "MRAcquisitionType" not in ds
        diffusion = ds.SharedFunctionalGroupsSequence[0].MRDiffusionSequence[0]
        assert diffusion.DiffusionDirectionality == "ISOTROPIC"
        assert diffusion.DiffusionBValue == 1000.0


class TestVendorHeaders:
    """Equipment and acquisition attributes per vendor flavour."""

    @pytest.mark.parametrize(
        ("vendor", "field", "output_format", "manufacturer", "model"),
        [
            ("siemens", 3.0, "classic", "SIEMENS", "Prisma_fit"),
            ("siemens", 1.5, "enhanced", "Siemens Healthineers", "MAGNETOM Sola"),
            ("ge", 3.0, "classic", "GE MEDICAL SYSTEMS", "DISCOVERY MR750"),
            ("ge", 1.5, "enhanced", "GE MEDICAL SYSTEMS", "SIGNA Artist"),
            ("philips", 3.0, "enhanced", "Philips", "Ingenia Elition X"),
            ("philips", 1.5, "classic", "Philips Medical Systems", "Ingenia"),
        ],
    )
    def test_equipment(
        self, tmp_path: Path, vendor: str, field: float, output_format: str, manufacturer: str, model: str
    ) -> None:
        study = make_study(vendor, field)
        ds = read_strict(write_series(make_series(), study, tmp_path, output_format=output_format)[0])  # type: ignore[arg-type]
        profile = vendor_profile(study.vendor, field, output_format)  # type: ignore[arg-type]
        assert (ds.Manufacturer, ds.ManufacturerModelName) == (manufacturer, model)
        versions = "\\".join(ds.SoftwareVersions) if ds["SoftwareVersions"].VM > 1 else ds.SoftwareVersions
        assert versions == profile.software_versions
        assert ds.StationName == profile.station_name
        assert float(ds.MagneticFieldStrength) == field
        assert (ds.PatientPosition, ds.BodyPartExamined, ds.Modality) == ("HFS", "HEAD", "MR")

    def test_classic_acquisition_attributes(self, tmp_path: Path) -> None:
        series = make_series("t1_pre")
        ds = read_strict(write_series(series, make_study("ge", 1.5), tmp_path)[0])
        assert list(ds.ScanningSequence) == ["GR", "IR"]
        assert list(ds.SequenceVariant) == ["SK", "SP", "MP"]
        assert ds.MRAcquisitionType == "3D"
        assert ds.SequenceName == "*tfl3d1_16ns"
        assert (float(ds.RepetitionTime), float(ds.EchoTime), float(ds.InversionTime)) == (1900.0, 2.3, 900.0)
        assert float(ds.FlipAngle) == 9.0
        assert ds.EchoTrainLength == 1
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
        assert float(ds.ImagingFrequency) == pytest.approx(42.577478518 * 1.5, abs=1e-6)
        assert (float(ds.PatientWeight), float(ds.PatientSize)) == (75.0, 1.68)
        assert ds.PatientAge == "056Y"
        assert 0 < float(ds.WindowWidth) <= 4096

    def test_inversion_time_only_on_inversion_recovery(self, tmp_path: Path) -> None:
        ds = read_strict(write_series(make_series("t2"), make_study(), tmp_path)[0])
        assert "InversionTime" not in ds

    def test_adc_is_derived(self, tmp_path: Path) -> None:
        series = make_series("adc")
        series.protocol = dataclasses.replace(series.protocol, image_type=("ORIGINAL", "PRIMARY", "M"))
        ds = read_strict(write_series(series, make_study(), tmp_path)[0])
        assert ds.ImageType[0] == "DERIVED"
        assert "ADC" in ds.ImageType

    def test_times_in_order(self, tmp_path: Path) -> None:
        study = make_study()
        first = [read_strict(p) for p in write_series(make_series("t2", seed=0), study, tmp_path / "a")]
        second = read_strict(write_series(make_series("t1_pre", seed=1), study, tmp_path / "b")[0])
        assert len({ds.AcquisitionTime for ds in first}) == SHAPE[0]  # 2D: interleaved slices within one TR
        for ds in first:
            assert ds.StudyTime <= ds.SeriesTime <= ds.AcquisitionTime < ds.ContentTime
        assert max(ds.ContentTime for ds in first) < second.SeriesTime <= second.AcquisitionTime < second.ContentTime


CLASSIC_CONTRAST = (
    "ContrastBolusAgent",
    "ContrastBolusVolume",
    "ContrastBolusTotalDose",
    "ContrastBolusIngredient",
    "ContrastBolusIngredientConcentration",
    "ContrastBolusStartTime",
)


class TestContrast:
    """Contrast administration appears on post-contrast series only."""

    def test_classic_post_contrast(self, tmp_path: Path) -> None:
        series = make_series("t1_standard_dose", contrast=GADOBUTROL)
        for path in write_series(series, make_study(), tmp_path):
            ds = read_strict(path)
            assert ds.ContrastBolusAgent == "Gadovist (gadobutrol)"
            assert float(ds.ContrastBolusVolume) == 7.5
            assert float(ds.ContrastBolusTotalDose) == 7.5
            assert ds.ContrastBolusIngredient == "GADOLINIUM"
            assert float(ds.ContrastBolusIngredientConcentration) == pytest.approx(GADOLINIUM_MG_PER_MMOL)
            assert ds.ContrastBolusStartTime == "102130"
            assert ds.ContrastBolusAgentSequence[0].CodeValue == AGENT_PRODUCTS["gadobutrol"].code.value
            assert ds.ContrastBolusRoute == "IV"

    @pytest.mark.parametrize("output_format", ["classic", "enhanced"])
    @pytest.mark.parametrize("role", ["t1_pre", "t2", "flair", "adc"])
    def test_pre_contrast_has_none(self, tmp_path: Path, role: str, output_format: str) -> None:
        ds = read_strict(write_series(make_series(role), make_study(), tmp_path, output_format=output_format)[0])  # type: ignore[arg-type]
        present = [e.keyword for e in ds.iterall() if e.keyword.startswith("ContrastBolus")]
        assert present == []

    def test_enhanced_post_contrast(self, tmp_path: Path) -> None:
        agent = dataclasses.replace(GADOBUTROL, agent="gadoterate", volume_ml=3.0, concentration_mmol_per_ml=0.5)
        series = make_series("t1_standard_dose", contrast=agent)
        ds = read_strict(write_series(series, make_study(), tmp_path, output_format="enhanced")[0])
        item = ds.ContrastBolusAgentSequence[0]
        assert (item.CodeValue, item.CodeMeaning) == ("712714000", "Gadoterate meglumine")
        assert float(item.ContrastBolusVolume) == 3.0
        assert float(item.ContrastBolusIngredientConcentration) == pytest.approx(0.5 * GADOLINIUM_MG_PER_MMOL)
        assert item.ContrastBolusIngredientCodeSequence[0].CodeMeaning == "Gadolinium"
        assert item.ContrastAdministrationProfileSequence[0].ContrastBolusStartTime == "102130"
        usage = ds.SharedFunctionalGroupsSequence[0].ContrastBolusUsageSequence[0]
        assert usage.ContrastBolusAgentAdministered == "YES"


class TestDeterminism:
    """UIDs derive from the series UID, so the same input gives byte-identical files."""

    @pytest.mark.parametrize(("output_format", "syntax"), [("classic", "explicit-le"), ("enhanced", "jpeg-ls")])
    def test_byte_identical(self, tmp_path: Path, output_format: str, syntax: str) -> None:
        series, study = make_series("t1_standard_dose", contrast=GADOBUTROL), make_study()
        first = write_series(series, study, tmp_path / "a", output_format=output_format, transfer_syntax=syntax)  # type: ignore[arg-type]
        second = write_series(series, study, tmp_path / "b", output_format=output_format, transfer_syntax=syntax)  # type: ignore[arg-type]
        assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]

    def test_uids_unique_and_tied_to_series(self, tmp_path: Path) -> None:
        study = make_study()
        one = [read_strict(p).SOPInstanceUID for p in write_series(make_series(seed=1), study, tmp_path / "a")]
        two = [read_strict(p).SOPInstanceUID for p in write_series(make_series(seed=2), study, tmp_path / "b")]
        assert len(set(one)) == len(one) == SHAPE[0]
        assert not set(one) & set(two)
        ds = read_strict(tmp_path / "a" / "IM0001.dcm")
        assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (study.study_instance_uid, study.frame_of_reference_uid)
        assert ds.SeriesInstanceUID == make_series(seed=1).series_instance_uid


class TestBadInput:
    """Every rejected input names what was expected and what was found."""

    def test_unknown_output_format(self, tmp_path: Path) -> None:
        with pytest.raises(
            ValueError, match=r"output_format must be one of \['classic', 'enhanced'\]. Found 'dicomdir'"
        ):
            write_series(make_series(), make_study(), tmp_path, output_format="dicomdir")  # type: ignore[arg-type]

    def test_unknown_transfer_syntax(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"transfer_syntax must be one of .*'rle'\]. Found 'jpeg-lossy'"):
            write_series(make_series(), make_study(), tmp_path, transfer_syntax="jpeg-lossy")  # type: ignore[arg-type]

    def test_pixel_type(self, tmp_path: Path) -> None:
        series = make_series()
        series.image = sitk.Cast(series.image, sitk.sitkFloat32)
        with pytest.raises(TypeError, match=r"pixel type must be UInt16. Found 32-bit float"):
            write_series(series, make_study(), tmp_path)

    def test_not_3d(self, tmp_path: Path) -> None:
        series = make_series()
        series.image = sitk.Image(40, 36, sitk.sitkUInt16)
        with pytest.raises(ValueError, match=r"image must be 3D. Found 2D"):
            write_series(series, make_study(), tmp_path)

    def test_direction_not_orthonormal(self, tmp_path: Path) -> None:
        series = make_series()
        tilt = np.deg2rad(10.0)
        series.image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, float(np.sin(tilt)), 0.0, 0.0, float(np.cos(tilt))))
        with pytest.raises(ValueError, match="direction cosines must be orthonormal"):
            write_series(series, make_study(), tmp_path)

    def test_inversion_recovery_without_inversion_time(self, tmp_path: Path) -> None:
        series = make_series("flair")
        series.protocol = dataclasses.replace(series.protocol, inversion_time_ms=None)
        with pytest.raises(ValueError, match=r"ScanningSequence 'SE\\\\IR' includes IR but inversion_time_ms is None"):
            write_series(series, make_study(), tmp_path)

    def test_jpeg2000_too_small(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match=r"JPEG 2000 needs at least 32 rows and columns.*Found 40 x 20"):
            write_series(make_series(shape=(4, 40, 20)), make_study(), tmp_path, transfer_syntax="jpeg2000")

    def test_unknown_agent(self, tmp_path: Path) -> None:
        agent = dataclasses.replace(GADOBUTROL, agent="gadofakeol")
        with pytest.raises(KeyError, match="Unknown contrast agent 'gadofakeol'"):
            write_series(make_series("t1_standard_dose", contrast=agent), make_study(), tmp_path)
        assert not any(tmp_path.iterdir())  # validated before anything was written

    def test_unknown_vendor(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="Unknown vendor flavour 'toshiba'"):
            write_series(make_series(), make_study("toshiba"), tmp_path)

    def test_description_too_long(self, tmp_path: Path) -> None:
        series = make_series()
        series.protocol = dataclasses.replace(series.protocol, description="x" * 65)
        with pytest.raises(ValueError, match=r"SeriesDescription must be at most 64 characters. Found 65"):
            write_series(series, make_study(), tmp_path)

    def test_slice_thickness(self, tmp_path: Path) -> None:
        series = dataclasses.replace(make_series(), slice_thickness_mm=0.0)
        with pytest.raises(ValueError, match=r"slice_thickness_mm must be positive. Found 0.0"):
            write_series(series, make_study(), tmp_path)
