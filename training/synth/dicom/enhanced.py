"""Enhanced MR Image Storage: one multi-frame object per series with shared and per-frame functional groups.

Frames are grouped by block (stack, b-value and gradient direction, or time point) and, within a block,
ordered by position (ascending or descending along the slice normal, chosen per series). The b-value of a
frame is in the MR Diffusion functional group (per frame; for series that are not diffusion-weighted a b = 0
group, per frame or shared as the vendor does it, see :mod:`training.synth.conventions`), and for Philips
also in its private (2001,xx03) in the frame's group; geometry is in the Plane Position / Plane Orientation
groups.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage

from training.synth.config import case_rng
from training.synth.conventions import NON_DIFFUSION_KINDS, SeriesStyle, VendorInfo, vendor_info
from training.synth.dicom.dicom_common import (
    block_of,
    code,
    da_str,
    diffusion_image,
    ds_str,
    file_meta,
    frame_time,
    image_pixel,
    item,
    study_attrs,
    tm_str,
    window,
)
from training.synth.dicom.diffusion_tags import (
    ENHANCED_SHARED_B0_VENDORS,
    DiffusionImage,
    add_enhanced_frame_private,
    enhanced_diffusion_item,
)
from training.synth.dicom.encoding import encode_frames_dcmtk, set_pixel_data
from training.synth.geometry import Grid
from training.synth.imaging import FrameInfo, SeriesImages
from training.synth.protocol import SeriesPlan, StudyPlan, uid_for

logger = logging.getLogger(__name__)

__all__ = ["enhanced_dataset"]

# (tag of the index attribute, tag of the functional group sequence that holds it, label)
_DIM_STACK = (0x00209056, 0x00209111, "Stack ID")
_DIM_IN_STACK = (0x00209057, 0x00209111, "In-Stack Position Number")
_DIM_BVALUE = (0x00189087, 0x00189117, "Diffusion b-value")
_DIM_TEMPORAL = (0x00209128, 0x00209111, "Temporal Position Index")
_DIM_GRADIENT = (0x00189089, 0x00189076, "Diffusion Gradient Orientation")


def _dt(study: StudyPlan, seconds: float) -> str:
    return da_str(study.study_date) + tm_str(seconds)


def _pulse_sequence(ds: Dataset, style: SeriesStyle, kind: str) -> None:
    gradient = style.scanning_sequence == ("GR",)
    epi = style.scanning_sequence == ("EP",)
    ds.PulseSequenceName = style.protocol[:16]
    ds.MRAcquisitionType = style.acquisition_type
    ds.EchoPulseSequence = "GRADIENT" if gradient else "SPIN"
    if not gradient:
        ds.MultipleSpinEcho = "YES" if kind in ("t2_sag", "t2_cor", "t2w", "localizer") else "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "YES" if epi else "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "FAT" if "FS" in style.scan_options else "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "PARTIAL" if (epi or kind in ("t2_sag", "t2_cor", "t2w")) else "SINGLE"
    if style.acquisition_type == "3D":
        ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1


def _pixel_measures(grid: Grid) -> Dataset:
    """Pixel Measures item: pixel spacing, slice thickness and spacing of ``grid``."""
    return item(
        PixelSpacing=[ds_str(v) for v in grid.pixel_spacing],
        SliceThickness=ds_str(grid.thickness),
        SpacingBetweenSlices=ds_str(grid.spacing[2]),
    )


def _frame_type(style: SeriesStyle) -> Dataset:
    """MR Image Frame Type item of a series of ``style``."""
    return item(
        FrameType=list(style.enhanced_image_type),
        PixelPresentation="MONOCHROME",
        VolumetricProperties="VOLUME",
        VolumeBasedCalculationTechnique="NONE",
        ComplexImageComponent="MAGNITUDE",
        AcquisitionContrast=style.acquisition_contrast,
    )


def _timing(style: SeriesStyle) -> Dataset:
    """MR Timing and Related Parameters item: repetition time, echo trains, SAR and operating modes."""
    gradient = style.scanning_sequence == ("GR",)
    timing = item(
        RepetitionTime=style.repetition_time,
        FlipAngle=style.flip_angle,
        EchoTrainLength=style.echo_train_length,
        RFEchoTrainLength=style.echo_train_length if not gradient else 0,
        GradientEchoTrainLength=1 if gradient else 0,
        GradientOutputType="DB_DT",
        GradientOutput=0.0,
    )
    timing.SpecificAbsorptionRateSequence = Sequence(
        [item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY", SpecificAbsorptionRateValue=0.5)]
    )
    timing.OperatingModeSequence = Sequence(
        [
            item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL"),
            item(OperatingModeType="RF", OperatingMode="IEC_NORMAL"),
            item(OperatingModeType="GRADIENT", OperatingMode="IEC_NORMAL"),
        ]
    )
    return timing


def _fov_geometry(style: SeriesStyle, grid: Grid) -> Dataset:
    """MR FOV/Geometry item: phase encoding along the rows, steps from the size of ``grid``."""
    cols, rows, _ = grid.size
    fov = item(
        InPlanePhaseEncodingDirection="ROW",
        MRAcquisitionFrequencyEncodingSteps=rows,
        MRAcquisitionPhaseEncodingStepsInPlane=cols,
        PercentSampling=100.0,
        PercentPhaseFieldOfView=round(100.0 * cols / rows, 4),
    )
    if style.acquisition_type == "3D":
        fov.MRAcquisitionPhaseEncodingStepsOutOfPlane = grid.size[2]
    return fov


def _modifier(style: SeriesStyle) -> Dataset:
    """MR Modifier item: no preparation, RF spoiling for gradient echo."""
    modifier = item(
        InversionRecovery="NO",
        FlowCompensation="NONE",
        T2Preparation="NO",
        SpectrallySelectedExcitation="NONE",
        SpatialPresaturation="NONE",
        PartialFourier="NO",
        ParallelAcquisition="NO",
    )
    if style.scanning_sequence == ("GR",):
        modifier.Spoiling = "RF"
    return modifier


def _imaging_modifier(style: SeriesStyle) -> Dataset:
    """MR Imaging Modifier item: transmitter frequency and pixel bandwidth."""
    return item(
        MagnetizationTransfer="NONE",
        BloodSignalNulling="NO",
        Tagging="NONE",
        TransmitterFrequency=123.2424,
        PixelBandwidth=ds_str(style.pixel_bandwidth),
    )


def _receive_coil(info: VendorInfo) -> Dataset:
    """MR Receive Coil item: the vendor's body and spine multi-coil."""
    coil = item(
        ReceiveCoilName=info.coil,
        ReceiveCoilManufacturerName=info.manufacturer,
        ReceiveCoilType="MULTICOIL",
        QuadratureReceiveCoil="NO",
    )
    coil.MultiCoilDefinitionSequence = Sequence(
        [item(MultiCoilElementName=name, MultiCoilElementUsed="YES") for name in ("BODY", "SPINE")]
    )
    coil.MultiCoilConfiguration = "BODY+SPINE"
    return coil


def _adc_mapping(images: SeriesImages) -> Dataset:
    """Real World Value Mapping item of an ADC map: stored values to um2/s."""
    mapping = item(
        RealWorldValueFirstValueMapped=0,
        RealWorldValueLastValueMapped=2**images.bits_stored - 1,
        RealWorldValueIntercept=images.intercept,
        RealWorldValueSlope=images.slope,
        LUTExplanation="Apparent diffusion coefficient",
        LUTLabel="ADC",
    )
    mapping.MeasurementUnitsCodeSequence = Sequence([code("um2/s", "UCUM", "um2/s")])
    return mapping


def _shared_groups(study: StudyPlan, series: SeriesPlan, images: SeriesImages, grid: Grid) -> Dataset:
    """The Shared Functional Groups item of a series: what is the same for every frame.

    Parameters
    ----------
    study
        The study.
    series
        The series.
    images
        Its pixel data (window, rescale and, for an ADC map, its real-world value mapping).
    grid
        Its first stack.

    Returns
    -------
    pydicom.dataset.Dataset
        The item.
    """
    style = series.style
    info = vendor_info(study.plan.vendor)
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([_pixel_measures(grid)])
    if len(series.grids) == 1:
        shared.PlaneOrientationSequence = Sequence(
            [item(ImageOrientationPatient=[ds_str(v) for v in grid.image_orientation])]
        )
    anatomy = item(FrameLaterality="U")
    anatomy.AnatomicRegionSequence = Sequence([code("41216001", "SCT", "Prostate")])
    shared.FrameAnatomySequence = Sequence([anatomy])
    wc, ww = window(images)
    shared.FrameVOILUTSequence = Sequence([item(WindowCenter=wc, WindowWidth=ww)])
    shared.PixelValueTransformationSequence = Sequence(
        [item(RescaleIntercept=ds_str(images.intercept), RescaleSlope=ds_str(images.slope), RescaleType="US")]
    )
    shared.MRImageFrameTypeSequence = Sequence([_frame_type(style)])
    shared.MRTimingAndRelatedParametersSequence = Sequence([_timing(style)])
    shared.MRFOVGeometrySequence = Sequence([_fov_geometry(style, grid)])
    shared.MREchoSequence = Sequence([item(EffectiveEchoTime=style.echo_time)])
    shared.MRModifierSequence = Sequence([_modifier(style)])
    shared.MRImagingModifierSequence = Sequence([_imaging_modifier(style)])
    shared.MRReceiveCoilSequence = Sequence([_receive_coil(info)])
    shared.MRTransmitCoilSequence = Sequence(
        [
            item(
                TransmitCoilName="Body",
                TransmitCoilManufacturerName=info.manufacturer,
                TransmitCoilType="BODY",
            )
        ]
    )
    shared.MRAveragesSequence = Sequence([item(NumberOfAverages=ds_str(style.averages))])
    if series.kind in NON_DIFFUSION_KINDS and study.plan.vendor in ENHANCED_SHARED_B0_VENDORS:
        b0 = enhanced_diffusion_item(study.plan.vendor, DiffusionImage("none"))
        if b0 is not None:
            shared.MRDiffusionSequence = Sequence([b0])
    if series.kind == "adc":
        shared.RealWorldValueMappingSequence = Sequence([_adc_mapping(images)])
    return shared


def _frame_order(images: SeriesImages, series: SeriesPlan, descending: bool) -> list[int]:
    def key(i: int) -> tuple[int, int]:
        f = images.frames[i]
        return (block_of(f, series), -f.slice_index if descending else f.slice_index)

    return sorted(range(len(images.frames)), key=key)


def _per_frame(
    study: StudyPlan, series: SeriesPlan, frame: FrameInfo, n_blocks: int, n_slices: int, directional: bool
) -> Dataset:
    grid = series.grids[frame.grid_index]
    group = Dataset()
    block = block_of(frame, series)
    when = _dt(study, frame_time(series, frame, n_blocks, n_slices, block))
    content = item(
        FrameAcquisitionNumber=(frame.temporal_index + 1) if frame.temporal_index is not None else 1,
        FrameReferenceDateTime=when,
        FrameAcquisitionDateTime=when,
        FrameAcquisitionDuration=round(1000.0 * series.duration_s / max(n_blocks * n_slices, 1), 3),
        StackID=str(frame.grid_index + 1),
        InStackPositionNumber=frame.slice_index + 1,
    )
    dims = [frame.grid_index + 1, frame.slice_index + 1]
    if frame.b_value is not None:
        dims.append(series.b_values.index(frame.b_value) + 1)
    if directional:
        dims.append(frame.direction_index + 1 if frame.direction_index is not None else 1)
    if frame.temporal_index is not None:
        content.TemporalPositionIndex = frame.temporal_index + 1
        dims.append(frame.temporal_index + 1)
    content.DimensionIndexValues = dims
    group.FrameContentSequence = Sequence([content])
    group.PlanePositionSequence = Sequence(
        [item(ImagePositionPatient=[ds_str(v) for v in grid.slice_position(frame.slice_index)])]
    )
    if len(series.grids) > 1:
        group.PlaneOrientationSequence = Sequence(
            [item(ImageOrientationPatient=[ds_str(v) for v in grid.image_orientation])]
        )
    vendor = study.plan.vendor
    diffusion = diffusion_image(series, frame)
    if diffusion is not None:
        in_shared = diffusion.image == "none" and vendor in ENHANCED_SHARED_B0_VENDORS
        diffusion_item = None if in_shared else enhanced_diffusion_item(vendor, diffusion)
        if diffusion_item is not None:
            group.MRDiffusionSequence = Sequence([diffusion_item])
        add_enhanced_frame_private(group, vendor, diffusion)
    if frame.temporal_index is not None:
        group.TemporalPositionSequence = Sequence(
            [item(TemporalPositionTimeOffset=float(frame.time_offset_s))]
        )
    return group


def _dimensions(ds: Dataset, series: SeriesPlan, images: SeriesImages, dim_uid: str) -> None:
    dims = [_DIM_STACK, _DIM_IN_STACK]
    if any(f.b_value is not None for f in images.frames):
        dims.append(_DIM_BVALUE)
    if any(f.direction_index is not None for f in images.frames):
        dims.append(_DIM_GRADIENT)
    if any(f.temporal_index is not None for f in images.frames):
        dims.append(_DIM_TEMPORAL)
    ds.DimensionOrganizationSequence = Sequence([item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = Sequence(
        [
            item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=pointer,
                FunctionalGroupPointer=group,
                DimensionDescriptionLabel=label,
            )
            for pointer, group, label in dims
        ]
    )
    if len(series.grids) == 1 and len(dims) == 2:
        ds.DimensionOrganizationType = "3D"


@dataclass(frozen=True)
class _FrameLayout:
    """How the frames of a series are written.

    Attributes
    ----------
    order
        Indices of ``SeriesImages.frames`` in the order written.
    n_slices
        Slices per stack.
    n_blocks
        Blocks of frames (stack, b-value and direction, or time point).
    directional
        Whether frames have a gradient direction.
    """

    order: list[int]
    n_slices: int
    n_blocks: int
    directional: bool


def _frame_layout(images: SeriesImages, series: SeriesPlan, descending: bool) -> _FrameLayout:
    """The frame order of a series (by block, then by position, ``descending`` or not) and its counts."""
    order = _frame_order(images, series, descending=descending)
    n_slices = max(f.slice_index for f in images.frames) + 1
    return _FrameLayout(
        order=order,
        n_slices=n_slices,
        n_blocks=len(order) // n_slices,
        directional=any(f.direction_index is not None for f in images.frames),
    )


def _image_attributes(ds: Dataset, study: StudyPlan, series: SeriesPlan) -> None:
    """Set the object-level attributes of an Enhanced MR Image (SOP, image, acquisition, frame of reference).

    Parameters
    ----------
    ds
        The dataset, which already holds the study-level attributes.
    study
        The study.
    series
        The series.
    """
    plan = study.plan
    style = series.style
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = uid_for(plan, "instance", series.key, "enhanced")
    ds.ImageType = list(style.enhanced_image_type)
    ds.AcquisitionDateTime = _dt(study, series.acquisition_time)
    ds.AcquisitionDuration = float(series.duration_s)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = style.acquisition_contrast
    ds.ContentQualification = "PRODUCT"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = ds_str(vendor_info(plan.vendor).field_strength)
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.ImageComments = ""
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PatientPosition = "FFS"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.AcquisitionContextSequence = Sequence([])


def _contrast_agent() -> Dataset:
    """Contrast/Bolus Agent item of a DCE series: intravenous gadolinium."""
    return item(
        CodeValue="C-B0322",
        CodingSchemeDesignator="SRT",
        CodeMeaning="Gadolinium",
        ContrastBolusAgentNumber=1,
        ContrastBolusVolume=15.0,
        ContrastBolusIngredientConcentration=279.3,
        ContrastBolusAdministrationRouteSequence=Sequence([code("G-D101", "SRT", "Intravenous route")]),
        ContrastBolusIngredientCodeSequence=Sequence([code("C-17800", "SRT", "Gadolinium")]),
    )


def _mark_contrast_usage(per_frame: Sequence) -> None:
    """Add Contrast/Bolus Usage to each frame of a DCE series: given and seen after the first time point."""
    for group in per_frame:
        temporal = int(group.FrameContentSequence[0].TemporalPositionIndex)
        group.ContrastBolusUsageSequence = Sequence(
            [
                item(
                    ContrastBolusAgentNumber=1,
                    ContrastBolusAgentAdministered="YES" if temporal > 1 else "NO",
                    ContrastBolusAgentDetected="YES" if temporal > 1 else "NO",
                )
            ]
        )


def _pixel_data(ds: Dataset, images: SeriesImages, order: list[int], compress: str | None) -> None:
    """Set the frame count, Image Pixel attributes, file meta and (possibly compressed) pixel data.

    Parameters
    ----------
    ds
        The dataset.
    images
        The series' pixel data.
    order
        Frames in the order written.
    compress
        The case's pixel encoding.
    """
    ds.NumberOfFrames = len(order)
    image_pixel(ds, images, int(images.stored.shape[1]), int(images.stored.shape[2]))
    stored = np.ascontiguousarray(images.stored[order])
    file_meta(ds)
    encoded = encode_frames_dcmtk(stored, images.bits_stored) if compress == "jpeg-lossless" else None
    set_pixel_data(ds, stored, compress, encoded)


def enhanced_dataset(study: StudyPlan, series: SeriesPlan, images: SeriesImages) -> Dataset:
    """The Enhanced MR Image object of one series.

    Parameters
    ----------
    study
        The study.
    series
        The series (any kind but a screenshot).
    images
        Its pixel data.

    Returns
    -------
    pydicom.dataset.Dataset
        The dataset with file meta and (possibly compressed) pixel data.
    """
    plan = study.plan
    rng = case_rng(plan.seed, plan.case_index, 6000 + series.number)
    layout = _frame_layout(images, series, descending=bool(rng.random() < 0.5))
    ds = Dataset()
    for key, value in study_attrs(study, series):
        setattr(ds, key, value)
    del ds.AcquisitionDate  # not in the Enhanced MR IOD (Acquisition DateTime is)
    _image_attributes(ds, study, series)
    if series.style.enhanced_image_type[0] == "ORIGINAL":
        _pulse_sequence(ds, series.style, series.kind)
    if series.kind == "dce":
        ds.ContrastBolusAgentSequence = Sequence([_contrast_agent()])
    _dimensions(ds, series, images, uid_for(plan, "dimensions", series.key))
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(study, series, images, series.grids[0])])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [
            _per_frame(study, series, images.frames[i], layout.n_blocks, layout.n_slices, layout.directional)
            for i in layout.order
        ]
    )
    if series.kind == "dce":
        _mark_contrast_usage(ds.PerFrameFunctionalGroupsSequence)
    _pixel_data(ds, images, layout.order, plan.compress)
    logger.debug("enhanced series %d: %d frames", series.number, len(layout.order))
    return ds
