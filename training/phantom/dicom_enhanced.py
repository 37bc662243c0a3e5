"""Enhanced MR Image Storage for the phantom: one multi-frame object with the functional groups scanners write."""

from __future__ import annotations

import datetime as dt
import logging

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import EnhancedMRImageStorage

from training.phantom.dicom_header import (
    LARMOR_MHZ_PER_T,
    PixelFormat,
    SeriesGeometry,
    code_item,
    common_dataset,
    ds_list,
    ds_str,
    dt_str,
    instance_uid,
)
from training.phantom.dicom_vendor import (
    BRAIN,
    GADOLINIUM,
    GADOLINIUM_MG_PER_MMOL,
    INTRAVENOUS_ROUTE,
    VendorProfile,
    agent_product,
)
from training.phantom.types import Protocol, SimulatedSeries, StudyHeader

__all__ = ["enhanced_dataset", "enhanced_image_type"]

logger = logging.getLogger(__name__)

#: Image Flavor (ImageType value 3) and Acquisition Contrast per role, from the Enhanced MR defined terms.
_ROLE_CONTRAST: dict[str, tuple[str, str]] = {
    "t1_pre": ("T1", "T1"),
    "t1_low_dose": ("T1", "T1"),
    "t1_standard_dose": ("T1", "T1"),
    "t1_map": ("T1", "T1"),
    "t2": ("T2", "T2"),
    "flair": ("FLUID_ATTENUATED", "FLUID_ATTENUATED"),
    "adc": ("DIFFUSION", "DIFFUSION"),
}


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _seq(**attributes: object) -> Sequence:
    return Sequence([_item(**attributes)])


def enhanced_image_type(protocol: Protocol) -> tuple[list[str], str]:
    """ImageType / FrameType (4 values: pixel data characteristics, flavor, derived pixel contrast) and
    AcquisitionContrast for a protocol. The ADC map is DERIVED\\PRIMARY\\DIFFUSION\\ADC like Siemens XA writes it."""
    flavor, contrast = _ROLE_CONTRAST.get(
        protocol.role, ("VOLUME" if protocol.mr_acquisition_type == "3D" else "STATIC", "UNKNOWN")
    )
    if protocol.role == "adc":
        return ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"], contrast
    if protocol.role == "t1_map":
        return ["DERIVED", "PRIMARY", flavor, "T1_MAP"], contrast
    value1 = protocol.image_type[0] if protocol.image_type else "ORIGINAL"
    value2 = protocol.image_type[1] if len(protocol.image_type) > 1 else "PRIMARY"
    return [value1, value2, flavor, "NONE"], contrast


def _pulse_sequence(ds: Dataset, protocol: Protocol) -> None:
    """MR Pulse Sequence module: present only on ORIGINAL images (dciodvfy rejects it on DERIVED ones)."""
    scanning = protocol.scanning_sequence.split("\\")
    epi = "EP" in scanning
    gradient = "GR" in scanning or epi
    spin = "SE" in scanning
    ds.PulseSequenceName = protocol.sequence_name
    ds.EchoPulseSequence = "BOTH" if gradient and spin else ("GRADIENT" if gradient else "SPIN")
    if spin:
        ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "YES" if epi else "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "FAT" if epi else "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.SegmentedKSpaceTraversal = "FULL" if epi else ("PARTIAL" if protocol.echo_train_length > 1 else "SINGLE")
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.NumberOfKSpaceTrajectories = 1
    if protocol.mr_acquisition_type == "3D":
        ds.CoverageOfKSpace = "FULL"


def _contrast_module(ds: Dataset, series: SimulatedSeries) -> Sequence | None:
    """Enhanced Contrast/Bolus module on post-contrast series; returns the Contrast/Bolus Usage functional group."""
    contrast = series.protocol.contrast
    if contrast is None:
        return None
    product = agent_product(contrast.agent)
    agent = code_item(product.code)
    agent.ContrastBolusAgentNumber = 1
    agent.ContrastBolusAdministrationRouteSequence = Sequence([code_item(INTRAVENOUS_ROUTE)])
    agent.ContrastBolusIngredientCodeSequence = Sequence([code_item(GADOLINIUM)])
    agent.ContrastBolusVolume = ds_str(contrast.volume_ml)
    agent.ContrastBolusIngredientConcentration = ds_str(contrast.concentration_mmol_per_ml * GADOLINIUM_MG_PER_MMOL)
    agent.ContrastAdministrationProfileSequence = _seq(
        ContrastBolusVolume=ds_str(contrast.volume_ml), ContrastBolusStartTime=contrast.start_time.strftime("%H%M%S")
    )
    ds.ContrastBolusAgentSequence = Sequence([agent])
    return _seq(ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="YES", ContrastBolusAgentDetected="YES")


def _shared_groups(
    series: SimulatedSeries,
    study: StudyHeader,
    profile: VendorProfile,
    geometry: SeriesGeometry,
    fmt: PixelFormat,
    frame_type: list[str],
    acquisition_contrast: str,
    contrast_usage: Sequence | None,
) -> Dataset:
    protocol = series.protocol
    three_d = protocol.mr_acquisition_type == "3D"
    inversion = "IR" in protocol.scanning_sequence.split("\\")
    phase_direction = "COLUMN" if protocol.scanning_sequence.startswith("EP") else "ROW"
    phase_steps = geometry.columns if phase_direction == "ROW" else geometry.rows
    freq_steps = geometry.rows if phase_direction == "ROW" else geometry.columns
    shared = Dataset()
    shared.PixelMeasuresSequence = _seq(
        PixelSpacing=geometry.pixel_spacing,
        SliceThickness=ds_str(series.slice_thickness_mm),
        SpacingBetweenSlices=ds_str(geometry.spacing_between_slices),
    )
    shared.PlaneOrientationSequence = _seq(ImageOrientationPatient=geometry.orientation)
    shared.MRImageFrameTypeSequence = _seq(
        FrameType=frame_type,
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast=acquisition_contrast,
    )
    shared.MRTimingAndRelatedParametersSequence = _seq(
        RepetitionTime=ds_str(protocol.repetition_time_ms),
        EchoTrainLength=protocol.echo_train_length,
        FlipAngle=ds_str(protocol.flip_angle_deg),
        RFEchoTrainLength=0 if "GR" in protocol.scanning_sequence else protocol.echo_train_length,
        GradientEchoTrainLength=protocol.echo_train_length if "EP" in protocol.scanning_sequence else 1,
        OperatingModeSequence=Sequence(
            [
                _item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL"),
                _item(OperatingModeType="RF", OperatingMode="IEC_NORMAL"),
            ]
        ),
        SpecificAbsorptionRateSequence=_seq(
            SpecificAbsorptionRateDefinition="IEC_HEAD", SpecificAbsorptionRateValue=0.3
        ),
    )
    fov = _item(
        InPlanePhaseEncodingDirection=phase_direction,
        MRAcquisitionFrequencyEncodingSteps=freq_steps,
        MRAcquisitionPhaseEncodingStepsInPlane=phase_steps,
        PercentSampling="100",
        PercentPhaseFieldOfView="100",
    )
    if three_d:
        fov.MRAcquisitionPhaseEncodingStepsOutOfPlane = geometry.n_slices
    shared.MRFOVGeometrySequence = Sequence([fov])
    shared.MREchoSequence = _seq(EffectiveEchoTime=float(protocol.echo_time_ms))
    modifier = _item(
        InversionRecovery="YES" if inversion else "NO",
        FlowCompensation="NONE",
        T2Preparation="NO",
        SpectrallySelectedExcitation="NONE",
        SpatialPresaturation="NONE",
        PartialFourier="NO",
        ParallelAcquisition="YES",
        ParallelAcquisitionTechnique="SENSE",
        ParallelReductionFactorInPlane=profile.parallel_factor,
        ParallelReductionFactorOutOfPlane=1.0,
        ParallelReductionFactorSecondInPlane=1.0,
    )
    if "GR" in protocol.scanning_sequence or "EP" in protocol.scanning_sequence:
        modifier.Spoiling = "RF" if "SP" in protocol.sequence_variant.split("\\") else "NONE"
    if inversion and protocol.inversion_time_ms is not None:
        modifier.InversionTimes = [float(protocol.inversion_time_ms)]
    shared.MRModifierSequence = Sequence([modifier])
    shared.MRImagingModifierSequence = _seq(
        PixelBandwidth=ds_str(protocol.pixel_bandwidth_hz),
        MagnetizationTransfer="NONE",
        BloodSignalNulling="NO",
        Tagging="NONE",
        TransmitterFrequency=round(LARMOR_MHZ_PER_T * study.field_strength_t, 6),
    )
    coil = _item(
        ReceiveCoilName=profile.receive_coil,
        ReceiveCoilManufacturerName=profile.coil_manufacturer,
        ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO",
    )
    coil.MultiCoilDefinitionSequence = Sequence(
        [_item(MultiCoilElementName=name, MultiCoilElementUsed="YES") for name in profile.coil_elements]
    )
    shared.MRReceiveCoilSequence = Sequence([coil])
    shared.MRTransmitCoilSequence = _seq(
        TransmitCoilName="Body", TransmitCoilManufacturerName=profile.coil_manufacturer, TransmitCoilType="BODY"
    )
    shared.MRAveragesSequence = _seq(NumberOfAverages="1")
    anatomy = _item(FrameLaterality="U")
    anatomy.AnatomicRegionSequence = Sequence([code_item(BRAIN)])
    shared.FrameAnatomySequence = Sequence([anatomy])
    shared.PixelValueTransformationSequence = _seq(RescaleIntercept="0", RescaleSlope="1", RescaleType="US")
    shared.FrameVOILUTSequence = _seq(WindowCenter=fmt.window_center, WindowWidth=fmt.window_width)
    if protocol.role == "adc":
        diffusion = _item(DiffusionDirectionality="ISOTROPIC")
        b_value = series.extra.get("b_value", series.extra.get("diffusion_b_value"))
        if isinstance(b_value, int | float):
            diffusion.DiffusionBValue = float(b_value)
        shared.MRDiffusionSequence = Sequence([diffusion])
    if contrast_usage is not None:
        shared.ContrastBolusUsageSequence = contrast_usage
    return shared


def enhanced_dataset(
    series: SimulatedSeries,
    study: StudyHeader,
    profile: VendorProfile,
    geometry: SeriesGeometry,
    fmt: PixelFormat,
    *,
    frame_times: list[dt.datetime],
    duration_s: float,
) -> Dataset:
    """Build the whole Enhanced MR header (no Pixel Data): shared groups for what is constant, per-frame groups
    for Frame Content and Plane Position, a Stack ID / In-Stack Position dimension organization."""
    protocol = series.protocol
    original = protocol.role not in {"adc", "t1_map"}
    frame_type, acquisition_contrast = enhanced_image_type(protocol)
    start = frame_times[0]
    content = start + dt.timedelta(seconds=duration_s)
    ds = common_dataset(
        series, study, profile, sop_class_uid=EnhancedMRImageStorage, content_time=content, geometry=geometry, fmt=fmt
    )
    ds.SOPInstanceUID = instance_uid(series.series_instance_uid, "sop", 1)
    ds.ImageType = frame_type
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = acquisition_contrast
    ds.ContentQualification = "PRODUCT"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = geometry.n_slices
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionDateTime = dt_str(start)
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.ApplicableSafetyStandardAgency = "IEC"
    if original:
        ds.AcquisitionDuration = duration_s
        _pulse_sequence(ds, protocol)
    else:
        del ds.MRAcquisitionType  # part of MR Pulse Sequence, which a DERIVED image must not carry
        del ds.AcquisitionNumber
    ds.AcquisitionContextSequence = Sequence()
    contrast_usage = _contrast_module(ds, series)
    organization_uid = instance_uid(series.series_instance_uid, "dimension-organization")
    ds.DimensionOrganizationSequence = _seq(DimensionOrganizationUID=organization_uid)
    ds.DimensionOrganizationType = "3D"
    frame_content = Tag("FrameContentSequence")
    ds.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=organization_uid,
                DimensionIndexPointer=Tag(pointer),
                FunctionalGroupPointer=frame_content,
                DimensionDescriptionLabel=label,
            )
            for pointer, label in (("StackID", "Stack ID"), ("InStackPositionNumber", "In-Stack Position Number"))
        ]
    )
    ds.SharedFunctionalGroupsSequence = Sequence(
        [_shared_groups(series, study, profile, geometry, fmt, frame_type, acquisition_contrast, contrast_usage)]
    )
    frame_duration_ms = duration_s * 1000.0 / (1 if protocol.mr_acquisition_type == "3D" else geometry.n_slices)
    per_frame = []
    for k in range(geometry.n_slices):
        content_item = Dataset()
        if original:
            content_item.FrameAcquisitionDateTime = dt_str(frame_times[k])
            content_item.FrameReferenceDateTime = dt_str(frame_times[k])
            content_item.FrameAcquisitionDuration = frame_duration_ms
        content_item.StackID = "1"
        content_item.InStackPositionNumber = k + 1
        content_item.DimensionIndexValues = [1, k + 1]
        frame = Dataset()
        frame.FrameContentSequence = Sequence([content_item])
        frame.PlanePositionSequence = _seq(ImagePositionPatient=ds_list(geometry.positions[k]))
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    return ds
