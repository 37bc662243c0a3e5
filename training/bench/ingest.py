"""Ingest benchmark: our loader + volume builder against MONAI Deploy's stock operators, on the same series."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["bench_ingest", "write_classic_series"]

logger = logging.getLogger(__name__)


def write_classic_series(
    out_dir: Path, *, slices: int = 192, rows: int = 256, columns: int = 256, seed: int = 0
) -> Path:
    """Write a synthetic classic MR Image Storage series (one file per slice, explicit VR little endian).

    The pixel values are smooth noise; the geometry is a 1 mm sagittal 3D T1 stack. Returns the folder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    base = (rng.random((rows, columns)) * 800).astype(np.uint16)
    now = dt.datetime(2024, 1, 1, 9, 0, 0)
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "MR"
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.SeriesDescription = "T1 MPRAGE SAG"
        ds.PatientName, ds.PatientID = "Bench^Ingest", "BENCH"
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = now.strftime("%H%M%S")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant = ["GR", "IR"], ["SK", "SP", "MP"]
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime, ds.FlipAngle = 2300, 2.98, 900, 9
        ds.MagneticFieldStrength = 3
        ds.SliceThickness = 1
        ds.PixelSpacing = [1, 1]
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-96.0 + k, -128.0, 128.0]
        ds.PatientPosition = "HFS"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = (base + k).astype("<u2").tobytes()
        ds.save_as(out_dir / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return out_dir


def _best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _ours(folder: Path) -> Any:
    from operators.series_to_volume import build_volume
    from operators.study_loader import load_study

    study = load_study(folder)
    return build_volume(study.series[0])


def _sdk_operators() -> tuple[Any, Any]:
    """MONAI Deploy's DICOM loader and series-to-volume operator classes.

    ``monai.deploy.operators.__init__`` imports every operator, including the bundle operator that needs MONAI
    core (PyTorch), which this image does not have; the two DICOM modules need neither, so their package is
    registered without running its ``__init__``.
    """
    import importlib
    import sys
    import types

    import monai.deploy

    name = "monai.deploy.operators"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(Path(monai.deploy.__file__).parent / "operators")]
        sys.modules[name] = package
    loader = importlib.import_module(f"{name}.dicom_data_loader_operator")
    to_volume = importlib.import_module(f"{name}.dicom_series_to_volume_operator")
    return loader.DICOMDataLoaderOperator, to_volume.DICOMSeriesToVolumeOperator


def _monai(folder: Path) -> Any:
    from monai.deploy.core import Fragment
    from monai.deploy.core.domain.dicom_series_selection import SelectedSeries, StudySelectedSeries

    loader_class, to_volume_class = _sdk_operators()
    fragment = Fragment()
    loader = loader_class(fragment, input_folder=folder, name="loader")
    to_volume = to_volume_class(fragment, name="to_volume")
    studies = loader.load_data_to_studies(folder)
    selected = StudySelectedSeries(studies[0])
    selected.add_selected_series(SelectedSeries("t1", studies[0].get_all_series()[0], None))
    return to_volume.convert_to_image([selected])


def _phantom_dicom(out: Path, **options: Any) -> Path | None:
    """DICOM folder of a phantom study (generated once into `out`), or None while the simulator is missing."""
    try:
        from training.phantom import PhantomOptions, generate_study
    except ImportError:
        logger.info("Phantom simulator not available")
        return None
    if not (out / "dicom").is_dir():
        generate_study(PhantomOptions(**options), out)
    return out / "dicom"


def _t1_series(work_dir: Path) -> Path:
    """A 192-slice 256x256 classic 3D T1 series: the phantom's full-size pre-contrast T1, else a synthetic one."""
    phantom = _phantom_dicom(work_dir / "phantom_t1", seed=3, size="full", roles=("t1_pre",))
    if phantom is not None:
        folders = [p for p in phantom.iterdir() if p.is_dir()]
        if len(folders) == 1 and len(list(folders[0].iterdir())) == 192:
            return folders[0]
    series_dir = work_dir / "classic_t1_192"
    if not series_dir.exists() or len(list(series_dir.iterdir())) != 192:
        write_classic_series(series_dir)
    return series_dir


def bench_ingest(work_dir: Path, *, repeats: int = 5) -> dict[str, float]:
    """Time loading + volume building of one 192x256x256 classic T1 series, ours against MONAI Deploy's.

    Both run on the same files in the same process, alternately, best of `repeats` each (warm file cache). The
    series is the phantom's full-size pre-contrast T1 (a synthetic series while the phantom is unavailable).

    Returns
    -------
    dict
        ``ours_s``, ``monai_s``, ``speedup`` (monai_s / ours_s), ``slices``, and, when the phantom simulator is
        available, ``study_s`` (load, select and build every role of a full-size six-series phantom study),
        ``study_instances`` and ``study_roles``.
    """
    import SimpleITK as sitk

    from operators.series_selector import select_roles
    from operators.series_to_volume import build_volumes
    from operators.study_loader import load_study

    series_dir = _t1_series(work_dir)
    ours_s = monai_s = float("inf")
    ours: Any = None
    monai: Any = None
    for _ in range(repeats):
        t, ours = _best_of(1, lambda: _ours(series_dir))
        ours_s = min(ours_s, t)
        t, monai = _best_of(1, lambda: _monai(series_dir))
        monai_s = min(monai_s, t)
    same = np.array_equal(sitk.GetArrayFromImage(ours.image), np.asarray(monai.asnumpy(), dtype=np.float32))
    logger.info("Ingest of %s: ours %.3f s, MONAI Deploy %.3f s; same voxels: %s", series_dir, ours_s, monai_s, same)
    result = {"ours_s": ours_s, "monai_s": monai_s, "speedup": monai_s / ours_s, "slices": float(len(ours.slices))}
    study = _phantom_dicom(work_dir / "phantom_study", seed=7, size="full")
    if study is not None:
        t, volumes = _best_of(repeats, lambda: build_volumes(select_roles(load_study(study), required=())))
        result["study_s"] = t
        result["study_instances"] = float(sum(len(s.instances) for s in load_study(study).series))
        result["study_roles"] = float(len(volumes))
        logger.info("Whole phantom study (%d series built): %.3f s", len(volumes), t)
    return result
