"""The MAP end to end: a phantom study through `python -m app` and `gadsynth run`, outputs checked as a PACS would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import dcmread

from tests.conftest import REPO
from training.phantom import PhantomOptions, PhantomStudy, generate_study

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run_app(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """A small phantom study with lesions of every kind."""
    return generate_study(PhantomOptions(seed=11, size="small"), tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def map_run(
    phantom: PhantomStudy, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("map-out")
    result = _run_app("-i", str(phantom.dicom_dir), "-o", str(out), "--preview")
    return out, result


def _read_series(folder: Path) -> list:
    return sorted((dcmread(p) for p in folder.glob("*.dcm")), key=lambda ds: int(ds.InstanceNumber))


class TestSuccessfulRun:
    def test_exit_code_and_report(self, map_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
        out, result = map_run
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        assert report["status"] == "ok"
        assert set(report["roles"]) >= {"t1_pre", "t1_low_dose"}
        assert report["model"]["name"] == "ce-lowdose-v1"  # the shipped default for a study with a low dose
        assert report["model_choice"]["chosen"] == "ce-lowdose-v1" and not report["model_choice"]["named"]
        assert len(report["model"]["sha256"]) == 64
        assert {"load_study", "register", "brain_mask", "normalize", "infer", "postprocess", "write_dicom"} <= set(
            report["timings_s"]
        )
        assert report["noise"]["sigma"] > 0
        assert "t1_low_dose" in report["registration"]
        assert (out / "preview.png").stat().st_size > 10_000
        # the condition the model was given, feature by feature with its source
        condition = report["extra"]["condition"]
        assert list(condition) == ["dose", "field_strength_t", "r1", "sigma", "voxel_mm", "inversion_prepared"]
        assert condition["dose"]["source"] == "header" and 0.1 <= condition["dose"]["value"] <= 0.34
        assert condition["dose"]["value"] == pytest.approx(report["contrast"]["t1_low_dose"]["dose"])
        assert condition["inversion_prepared"]["value"] in (0.0, 1.0) and condition["voxel_mm"]["source"] == "grid"

    def test_synthetic_series_matches_t1_pre(
        self, phantom: PhantomStudy, map_run: tuple[Path, subprocess.CompletedProcess[str]]
    ) -> None:
        out, _ = map_run
        source = _read_series(phantom.series["t1_pre"].directory)
        synthetic = _read_series(out / "synthetic_t1c")
        assert len(synthetic) == len(source)
        by_position = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient): ds for ds in source}
        for ds in synthetic:
            src = by_position[tuple(round(float(v), 3) for v in ds.ImagePositionPatient)]
            assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
            assert ds.StudyInstanceUID == src.StudyInstanceUID
            assert ds.SeriesInstanceUID != src.SeriesInstanceUID
            np.testing.assert_allclose(ds.ImageOrientationPatient, src.ImageOrientationPatient, atol=1e-6)
            np.testing.assert_allclose(ds.PixelSpacing, src.PixelSpacing, atol=1e-6)
            assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
            assert "SYNTHETIC" in ds.SeriesDescription.upper()
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
            assert int(ds.SeriesNumber) == 9001

    def test_seg_references_source_instances(
        self, phantom: PhantomStudy, map_run: tuple[Path, subprocess.CompletedProcess[str]]
    ) -> None:
        out, _ = map_run
        seg = hd.seg.segread(out / "seg" / "enhancement_seg.dcm")
        source_uids = {
            dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in phantom.series["t1_pre"].directory.glob("*.dcm")
        }
        referenced = {uid for _, _, uid in seg.get_source_image_uids()}
        assert referenced and referenced <= source_uids
        assert seg.SeriesInstanceUID != phantom.series["t1_pre"].series_instance_uid

    def test_every_output_passes_dciodvfy(
        self, map_run: tuple[Path, subprocess.CompletedProcess[str]], dciodvfy: str
    ) -> None:
        out, _ = map_run
        files = sorted(out.rglob("*.dcm"))
        assert files
        for path in files:
            result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
            errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
            assert not errors, f"{path}: {errors}"
            if "seg" in path.parts:
                hd.seg.segread(path)
            elif "sr" in path.parts:
                hd.sr.srread(path)
            else:
                hd.imread(path)

    def test_sr_reports_the_run(
        self, phantom: PhantomStudy, map_run: tuple[Path, subprocess.CompletedProcess[str]]
    ) -> None:
        out, _ = map_run
        report = json.loads((out / "report.json").read_text())
        (entry,) = [o for o in report["outputs"] if o["kind"] == "structured_report"]
        assert Path(entry["path"]) == out / "sr" / "report_sr.dcm"
        assert (entry["series_number"], entry["sop_class_uid"]) == (9005, "1.2.840.10008.5.1.4.1.1.88.34")
        sr = hd.sr.srread(out / "sr" / "report_sr.dcm")
        assert sr.SeriesInstanceUID == entry["series_instance_uid"]
        assert sr.StudyInstanceUID == report["study_instance_uid"]
        assert "SYNTHETIC" in sr.SeriesDescription and report["model"]["name"] in sr.SeriesDescription
        texts = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence]
        assert f"t1_pre (pre-contrast T1-weighted): {report['roles']['t1_pre']['series_instance_uid']}" in texts
        low = report["roles"]["t1_low_dose"]["series_instance_uid"]
        assert f"t1_low_dose (low-dose contrast-enhanced T1-weighted): {low}" in texts
        assert not any(report["roles"][r]["series_instance_uid"] in " ".join(texts) for r in ("t1_standard_dose", "t2"))
        (group,) = sr.content.get_volumetric_roi_measurement_groups()
        (volume,) = group.get_measurements()
        seg = dcmread(out / "seg" / "enhancement_seg.dcm")
        segment = [  # the frames of segment 1 (segment 2, "Low confidence", is not a measured volume)
            int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) == 1
            for f in seg.PerFrameFunctionalGroupsSequence
        ]
        voxels = np.count_nonzero(seg.pixel_array[np.asarray(segment)])  # the enhancement segment's set voxels
        voxel_ml = float(np.prod(report["roles"]["t1_pre"]["spacing_mm"])) / 1000.0
        assert volume.value > 0 and volume.unit.value == "ml"
        assert volume.value == pytest.approx(voxels * voxel_ml, rel=1e-3)
        params = [i.TextValue for i in group[0].ContentSequence if i.name.meaning == "Algorithm Parameters"]
        assert f"model_sha256={report['model']['sha256']}" in params

    def test_synthetic_slices_derive_from_the_model_inputs_only(
        self, phantom: PhantomStudy, map_run: tuple[Path, subprocess.CompletedProcess[str]]
    ) -> None:
        out, _ = map_run
        report = json.loads((out / "report.json").read_text())
        uids = {role: summary["series_instance_uid"] for role, summary in report["roles"].items()}
        low_dose = {
            dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in phantom.series["t1_low_dose"].directory.glob("*.dcm")
        }
        named_low_dose = set()
        for ds in _read_series(out / "synthetic_t1c"):
            text = ds.DerivationDescription
            assert f"{uids['t1_pre']} (t1_pre)" in text and f"{uids['t1_low_dose']} (t1_low_dose)" in text
            assert not any(uids[r] in text for r in ("t1_standard_dose", "t2", "flair", "adc"))
            series = {item.SeriesInstanceUID for item in ds.ReferencedSeriesSequence}
            assert series <= {uids["t1_pre"], uids["t1_low_dose"]}
            others = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence[1:]}
            assert others <= low_dose and len(others) <= 3
            named_low_dose |= others
        assert len(named_low_dose) >= len(low_dose) - 4  # the low dose covers the t1_pre but for a moved edge

    def test_enhancing_lesions_brighter_than_t1_pre(
        self, phantom: PhantomStudy, map_run: tuple[Path, subprocess.CompletedProcess[str]]
    ) -> None:
        out, _ = map_run
        reader = sitk.ImageSeriesReader()
        pre = sitk.GetArrayFromImage(
            sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(phantom.series["t1_pre"].directory)))
        ).astype(np.float32)
        syn = sitk.GetArrayFromImage(sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(out / "synthetic_t1c")))).astype(
            np.float32
        )
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(phantom.truth_dir / "lesions.nii.gz")))
        enhancing = [lesion["id"] for lesion in phantom.params["lesions"] if lesion["enhancing"]]
        assert enhancing, "the phantom must hold at least one enhancing lesion"
        for lesion_id in enhancing:
            inside = labels == lesion_id
            if inside.sum() < 3:
                continue
            assert syn[inside].mean() > pre[inside].mean(), f"lesion {lesion_id} is not brighter"


@pytest.fixture(scope="module")
def pre_only(tmp_path_factory: pytest.TempPathFactory) -> PhantomStudy:
    """A study with pre-contrast T1, T2 and FLAIR only: the zero-dose model's inputs."""
    return generate_study(
        PhantomOptions(seed=12, size="small", roles=("t1_pre", "t2", "flair")), tmp_path_factory.mktemp("pre")
    )


class TestZeroDose:
    def test_shipped_zero_dose_model_runs_without_a_low_dose(self, pre_only: PhantomStudy, tmp_path: Path) -> None:
        result = _run_app("-i", str(pre_only.dicom_dir), "-o", str(tmp_path))
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["model"]["name"] == "ce-zerodose-v1" and report["model_choice"]["chosen"] == "ce-zerodose-v1"
        chosen = [c for c in report["model_choice"]["candidates"] if c["chosen"]]
        assert [c["rule"] for c in chosen] == ["zero-dose"]
        series = _read_series(tmp_path / "synthetic_t1c")
        assert len(series) == len(list(pre_only.series["t1_pre"].directory.glob("*.dcm")))
        assert "SYNTHETIC" in series[0].SeriesDescription and "ce-zerodose-v1" in series[0].SeriesDescription


class TestIneligibleAndBroken:
    def test_t1_only_exits_2_with_reason(self, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
        study = generate_study(PhantomOptions(seed=13, size="small", roles=("t1_pre",)), tmp_path_factory.mktemp("t1"))
        result = _run_app("-i", str(study.dicom_dir), "-o", str(tmp_path))
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["status"] == "not_eligible"
        assert report["error"]["error"] == "NoMatchingSeriesError"
        message = report["error"]["message"]
        assert "t1_low_dose" in message and "flair" in message  # what each candidate model lacks
        assert not (tmp_path / "synthetic_t1c").exists()

    def test_empty_folder_exits_2(self, tmp_path: Path) -> None:
        (tmp_path / "in").mkdir()
        result = _run_app("-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"))
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["error"]["error"] == "NoStudyError"

    def test_missing_folder_exits_2(self, tmp_path: Path) -> None:
        result = _run_app("-i", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out"))
        assert result.returncode == 2
        assert "does not exist" in json.loads((tmp_path / "out" / "report.json").read_text())["error"]["message"]

    def test_truncated_file_exits_2(self, phantom: PhantomStudy, tmp_path: Path) -> None:
        study = tmp_path / "study"
        subprocess.run(["cp", "-r", str(phantom.dicom_dir), str(study)], check=True)
        victim = sorted((study / phantom.series["t1_pre"].directory.name).glob("*.dcm"))[5]
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        result = _run_app("-i", str(study), "-o", str(tmp_path / "out"))
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["status"] == "not_eligible"


class TestFrontDoors:
    def test_holoscan_environment_variables(self, phantom: PhantomStudy, tmp_path: Path) -> None:
        env = {
            **ENV,
            "HOLOSCAN_INPUT_PATH": str(phantom.dicom_dir),
            "HOLOSCAN_OUTPUT_PATH": str(tmp_path / "out"),
            "HOLOSCAN_MODEL_PATH": str(REPO / "models"),
        }
        result = _run_app("-l", "WARN", "-w", str(tmp_path / "work"), env=env)  # as MONAI Deploy runners call it
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(list((tmp_path / "out" / "synthetic_t1c").glob("*.dcm"))) == len(
            list(phantom.series["t1_pre"].directory.glob("*.dcm"))
        )

    def test_bad_models_folder_is_one_clear_line_and_a_report(self, phantom: PhantomStudy, tmp_path: Path) -> None:
        result = _run_app("-i", str(phantom.dicom_dir), "-o", str(tmp_path), "-m", str(tmp_path / "no-models"))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr and "models_dir must be an existing folder" in result.stderr
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["status"] == "error" and report["error"]["error"] == "ConfigurationError"

    def test_usage_error_is_not_exit_2(self) -> None:
        result = _run_app("--no-such-option")
        assert result.returncode == 1 and "unrecognized arguments" in result.stderr

    def test_gadsynth_run_with_preview(self, phantom: PhantomStudy, tmp_path: Path) -> None:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "gadsynth"), "run", str(phantom.dicom_dir), str(tmp_path), "--preview"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert (tmp_path / "preview.png").is_file()
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["status"] == "ok"
        assert (tmp_path / "sr" / "report_sr.dcm").is_file()
        assert {"kind": "structured_report", "path": str(tmp_path / "sr" / "report_sr.dcm")}.items() <= next(
            o for o in report["outputs"] if o["kind"] == "structured_report"
        ).items()

    def test_unknown_model_is_an_internal_error_with_a_clear_message(
        self, phantom: PhantomStudy, tmp_path: Path
    ) -> None:
        result = _run_app("-i", str(phantom.dicom_dir), "-o", str(tmp_path), "--model-name", "no-such-model")
        assert result.returncode == 1
        report = json.loads((tmp_path / "report.json").read_text())
        assert "no-such-model" in report["error"]["message"]
        assert "ce-baseline-linear" in report["error"]["message"]


GOLDEN = Path(__file__).parent / "golden"
#: Fields of report.json that change from run to run (or with the output folder), compared by type only.
VOLATILE = {"job_id", "started_at", "finished_at", "output_path", "input_path", "seconds"}
#: ... and, in the list of outputs, the new series' UIDs and where they were written.
VOLATILE_OUTPUTS = {"path", "series_instance_uid"}


def _pixel_hashes(out: Path) -> dict[str, str]:
    """SHA-256 of the pixel data of every image output (the SR holds none)."""
    datasets = {f"{p.parent.name}/{p.name}": dcmread(p) for p in sorted(out.rglob("*.dcm"))}
    return {name: hashlib.sha256(ds.PixelData).hexdigest() for name, ds in datasets.items() if "PixelData" in ds}


def _compare(old: object, new: object, path: str, problems: list[str]) -> None:
    key = path.rsplit("/", 1)[-1]
    if isinstance(old, dict) and isinstance(new, dict):
        if path.endswith("/timings_s"):  # timings: the same stages, plus the preview stage's own
            missing = set(old) - set(new)
            if missing:
                problems.append(f"{path}: stages {sorted(missing)} missing")
            return
        for name in sorted(set(old) | set(new)):
            if name not in new:
                problems.append(f"{path}/{name} missing")
            elif name not in old:
                problems.append(f"{path}/{name} added")
            else:
                _compare(old[name], new[name], f"{path}/{name}", problems)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            problems.append(f"{path}: {len(old)} items before, {len(new)} now")
        for index, (a, b) in enumerate(zip(old, new, strict=False)):
            _compare(a, b, f"{path}[{index}]", problems)
    elif key in VOLATILE or (path.startswith("/outputs") and key in VOLATILE_OUTPUTS):
        if type(old) is not type(new):
            problems.append(f"{path}: {type(old).__name__} before, {type(new).__name__} now")
    elif isinstance(old, float) and isinstance(new, float):
        if abs(old - new) > 1e-4 * max(1.0, abs(old)):  # multi-threaded ITK sums move the last digits
            problems.append(f"{path}: {old} before, {new} now")
    elif old != new:
        problems.append(f"{path}: {old!r} before, {new!r} now")


class TestSameAsBefore:
    """Regression lock on the outputs of this phantom (seed 11, small), `gadsynth run` on this machine's CPU.

    The report golden comes from the code before the single-pipeline redesign (commit 8cb402f): the redesign
    changed no pixel. The pixel golden was regenerated once since, when the synthetic image was made to equal
    the source outside the grown brain mask (issue 10): every voxel that changed then became the source's value.
    The report golden gained one entry in ``outputs`` when the report SR was added (issue 13): nothing else in it
    changed, and the SR holds no pixels, so the pixel golden did not change. The report golden gained
    ``extra/inference/region`` when inference moved to the brain's bounding box (issue 12): on this 4 mm head the
    box grown by the margin and the network's context is the whole volume, and no pixel changed. Both goldens were
    then regenerated from a run of ce-lowdose-v1 1.2.0, which replaced 1.1.0 as the default (issue 12): every
    pixel of the synthetic series and every model-dependent figure changed with the model. They were regenerated
    once more when the model folder gained its error model and input-distribution reference (issue 15): the
    synthetic series kept every pixel; the SEG gained its "Low confidence" segment, the uncertainty series was
    added, and the report gained ``extra/ood``, ``extra/uncertainty`` and the stages assess_inputs and uncertainty.
    The report golden changed once more when the selector learned the Enhanced MR term ``T1_MAP`` (issue 15): each
    series' "not quantitative T1 map" reason names one more ImageType value it lacks; no pixel changed.
    Both goldens were regenerated from a run of ce-lowdose-v1 1.3.0, which replaced 1.2.0 as the default (issue 12):
    new weights, and its manifest turns on the low-dose averaging, so every pixel of the synthetic series changed;
    the report gained ``extra/postprocess/average_low_dose`` and the model-dependent figures changed. They were
    regenerated again from ce-lowdose-v1 1.5.0 (issue 12): new weights and error model, the same manifest otherwise;
    and from ce-lowdose-v1 1.10.0 (issue 12): new weights and error model, the voxel size in the condition; and from
    ce-lowdose-v1 1.12.0 (issue 12): new weights and error model, the T1 sequence in the condition. The report
    golden then gained ``extra/postprocess/gate_below_threshold`` (false for 1.12.0; issue 12) and
    ``extra/condition`` (the condition vector, feature by feature with its source): no pixel changed. Both were
    regenerated from ce-lowdose-v1 1.13.0 (issue 12): 1.12.0's weights with ``gate_below_threshold`` on and a
    refitted error model, so the synthetic and uncertainty series changed.
    """

    def test_pixel_data_is_byte_for_byte_the_same(self, map_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
        out, result = map_run
        assert result.returncode == 0, result.stderr[-2000:]
        golden = json.loads((GOLDEN / "seed11-small-pixels.json").read_text())
        assert _pixel_hashes(out) == golden

    def test_report_matches_the_previous_format_key_by_key(
        self, map_run: tuple[Path, subprocess.CompletedProcess[str]]
    ) -> None:
        out, _ = map_run
        old = json.loads((GOLDEN / "seed11-small-report.json").read_text())
        new = json.loads((out / "report.json").read_text())
        # Volumes are now built only for the roles the model uses (T2, FLAIR, ADC and the acquired standard dose
        # are no longer decoded for a low-dose model), so those roles carry no grid.
        for role in ("t1_standard_dose", "t2", "flair", "adc"):
            for field in ("size", "spacing_mm"):
                assert new["roles"][role][field] is None
                old["roles"][role][field] = None
        problems: list[str] = []
        _compare(old, new, "", problems)
        assert not problems, "\n".join(problems)
