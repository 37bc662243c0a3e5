"""The pipeline object: one stage list, warm model sessions across studies, the MAP built from the same stages."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom import Dataset, config, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from scipy import ndimage

from app.app import run_map
from app.config import load_settings
from app.model_choice import named_choice
from app.pipeline import STAGE_NAMES, STAGES, Pipeline, PipelineRequest, PipelineResult, StageResults
from operators.model_manifest import ModelManifest
from operators.roles import Role
from operators.study import ContrastInfo, Volume
from tests.conftest import REPO
from tests.operators.mni_head import enhancing_pair, head_volume, mni_head, rigid
from training.phantom import PhantomOptions, PhantomStudy, generate_study

GOLDEN = Path(__file__).parent / "golden"
BASELINE = REPO / "models" / "ce-baseline-linear"
SPACING = 3.0
DOSE = 0.25
CONTRAST = {Role.T1_LOW_DOSE: ContrastInfo(dose=DOSE, agent="gadobutrol", field_strength_t=3.0, r1=4.5)}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[PhantomStudy]:
    root = tmp_path_factory.mktemp("studies")
    return [generate_study(PhantomOptions(seed=seed, size="small"), root / str(seed)) for seed in (11, 14)]


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(load_settings())


class TestOnePipelineManyStudies:
    def test_second_study_builds_no_session(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        created = []
        for index, study in enumerate(studies):
            result = pipeline.run(PipelineRequest(study_dir=study.dicom_dir, output_dir=tmp_path / str(index)))
            assert result.exit_code == 0, result.report.error
            assert result.report.model is not None and result.report.model.name == "ce-lowdose-v1"
            created.append(pipeline.sessions.created)
        assert created == [1, 1]

    def test_plain_loop_gives_the_same_pixels_as_the_map(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        """Seed 11 through ``Pipeline.run`` matches the golden output of `gadsynth run` (the MAP graph)."""
        result = pipeline.run(PipelineRequest(study_dir=studies[0].dicom_dir, output_dir=tmp_path))
        assert result.exit_code == 0
        datasets = {f"{p.parent.name}/{p.name}": dcmread(p) for p in sorted(tmp_path.rglob("*.dcm"))}
        hashes = {name: hashlib.sha256(ds.PixelData).hexdigest() for name, ds in datasets.items() if "PixelData" in ds}
        assert hashes == json.loads((GOLDEN / "seed11-small-pixels.json").read_text())

    def test_typed_results_of_every_stage(self, pipeline: Pipeline, studies: list[PhantomStudy]) -> None:
        result = pipeline.run(PipelineRequest(study_dir=studies[1].dicom_dir, last_stage="normalize"))
        results = result.results
        assert result.exit_code == 0
        assert results.selection is not None and Role.T1_LOW_DOSE in results.selection.roles
        assert results.volumes is not None and set(results.volumes) == {Role.T1_PRE, Role.T1_LOW_DOSE}
        assert results.normalized is not None and results.prediction is None
        assert list(result.report.timings_s) == list(STAGE_NAMES[1 : STAGE_NAMES.index("normalize") + 1])

    def test_request_overrides_the_model(self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path) -> None:
        request = PipelineRequest(study_dir=studies[1].dicom_dir, output_dir=tmp_path, model="ce-baseline-linear")
        result = pipeline.run(request)
        assert result.exit_code == 0
        assert result.report.model_choice is not None and result.report.model_choice.named
        assert result.report.model is not None and result.report.model.name == "ce-baseline-linear"

    def test_unknown_stage_is_refused(self, pipeline: Pipeline) -> None:
        with pytest.raises(ValueError, match=r"Unknown stage 'nope'\. Stages: prepare_output, load_study"):
            pipeline.stages(PipelineRequest(study_dir=None, last_stage="nope"))


def _volume(array: np.ndarray, role: Role, uid: str) -> Volume:
    return head_volume(array, role, uid, SPACING)


class TestMap:
    """The MAP graph is the stage list, one MONAI Deploy operator per stage, chained with add_flow."""

    @pytest.fixture(scope="class")
    @classmethod
    def moved_pair(cls) -> tuple[dict[Role, Volume], dict[str, np.ndarray]]:
        pair = enhancing_pair(SPACING, sigma_pc=5.0, sigma_ld=6.0, scale_pc=3.0, scale_ld=3.3, uptake=60.0, seed=11)
        head, _ = mni_head(SPACING)
        pose = rigid(head, rotation_deg=(2.0, -3.0, 2.0), translation_mm=(3.0, -2.0, 2.0))
        low = _volume(pair["x_ld"], Role.T1_LOW_DOSE, "1.2.2")
        moved = sitk.Resample(low.image, head, pose.GetInverse(), sitk.sitkBSpline, 0.0)
        volumes = {
            Role.T1_PRE: _volume(pair["x_pc"], Role.T1_PRE, "1.2.1"),
            Role.T1_LOW_DOSE: Volume(Role.T1_LOW_DOSE, low.series, moved, []),
        }
        return volumes, pair

    def _given(self, volumes: dict[Role, Volume]) -> StageResults:
        manifest = ModelManifest.load(BASELINE)
        return StageResults(volumes=dict(volumes), contrast=dict(CONTRAST), choice=named_choice(manifest))

    def test_registration_to_postprocessing_through_monai_deploy(
        self, pipeline: Pipeline, moved_pair: tuple[dict[Role, Volume], dict[str, np.ndarray]]
    ) -> None:
        volumes, pair = moved_pair
        request = PipelineRequest(study_dir=None, first_stage="register", last_stage="postprocess")
        result = run_map(pipeline, request, given=self._given(volumes))
        assert result.exit_code == 0, result.report.error
        assert list(result.report.timings_s) == [
            "register",
            "brain_mask",
            "normalize",
            "assess_inputs",
            "infer",
            "postprocess",
        ]
        assert result.results.synthetic is not None
        synthetic = sitk.GetArrayFromImage(result.results.synthetic.synthetic)
        core = ndimage.binary_erosion(pair["enhancing"], iterations=1)
        assert float(np.mean(synthetic[core] - pair["x_pc"][core])) > 0.5 * 3.0 * 60.0 / DOSE
        assert float((result.results.synthetic.mask & pair["enhancing"]).sum()) / float(pair["enhancing"].sum()) > 0.7

    @pytest.mark.timeout(120)
    def test_a_rejected_stage_ends_the_graph(
        self, pipeline: Pipeline, moved_pair: tuple[dict[Role, Volume], dict[str, np.ndarray]]
    ) -> None:
        """A low-dose series 500 mm away is refused by registration; the graph ends at once (it used to spin)."""
        volumes, _ = moved_pair
        low = volumes[Role.T1_LOW_DOSE]
        far = sitk.Image(low.image)
        far.SetOrigin(tuple(v + 500.0 for v in far.GetOrigin()))
        given = self._given({**volumes, Role.T1_LOW_DOSE: Volume(Role.T1_LOW_DOSE, low.series, far, [])})
        request = PipelineRequest(study_dir=None, first_stage="register", last_stage="postprocess")
        result = run_map(pipeline, request, given=given)
        assert result.exit_code == 2
        assert result.report.failed_stage == "register"
        assert list(result.report.timings_s) == ["register"]


class TestStageListIsWrittenOnce:
    def test_stage_order(self) -> None:
        assert STAGE_NAMES == (
            "prepare_output",
            "load_study",
            "select_series",
            "choose_model",
            "build_volumes",
            "register",
            "brain_mask",
            "normalize",
            "assess_inputs",
            "infer",
            "postprocess",
            "uncertainty",
            "write_dicom",
            "preview",
        )
        assert len({stage.output for stage in STAGES}) == len(STAGES)  # each stage fills its own result

    def test_no_front_door_calls_the_stage_functions_itself(self) -> None:
        """Only app/stages.py calls the stage functions; every other module goes through the Pipeline.

        The benchmarks of single stages (training/bench/ingest.py, inference.py) time those functions alone
        by design, and the evaluation reads the acquired series of a test subject to score it (not a pipeline run).
        """
        allowed = {
            "training/bench/ingest.py",
            "training/bench/inference.py",
            "training/bench/large.py",  # reads a phantom series to make a 0.5 mm study of it
            "training/evaluate_data.py",
        }
        stage_functions = {
            "load_study",
            "select_roles",
            "build_volumes",
            "register_volumes",
            "brain_mask",
            "normalize",
            "infer",
            "postprocess",
            "write_outputs",
        }
        offenders = []
        for folder in ("app", "training"):
            for path in sorted((REPO / folder).rglob("*.py")):
                if str(path.relative_to(REPO)) in allowed | {"app/stages.py"}:
                    continue
                for node in ast.walk(ast.parse(path.read_text())):
                    if (
                        isinstance(node, ast.Call)
                        and isinstance(node.func, ast.Name)
                        and node.func.id in stage_functions
                    ):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {node.func.id}")
        assert not offenders, offenders


class TestConstruction:
    def test_rules_are_loaded_and_checked_once(self, tmp_path: Path) -> None:
        bad = tmp_path / "rules.json"
        bad.write_text(json.dumps({"selections": []}))
        with pytest.raises(ValueError, match="selections"):
            Pipeline(load_settings(selection_rules=bad))


def _mutated(study: PhantomStudy, root: Path, role: str, change: Callable[[Dataset, int], None]) -> Path:
    """A copy of a phantom study whose ``role`` series files are changed by ``change(ds, index)``."""
    target = root / "dicom"
    shutil.copytree(study.dicom_dir, target)
    folder = target / study.series[role].directory.name
    for index, path in enumerate(sorted(folder.glob("*.dcm"))):
        ds = dcmread(path)
        change(ds, index)
        ds.save_as(path)
    return target


class TestRefusedStudies:
    """Series that cannot belong together, or a study with contrast but no usable low dose, are refused (exit 2)."""

    def _run(self, pipeline: Pipeline, study_dir: Path, out: Path) -> PipelineResult:
        result = pipeline.run(PipelineRequest(study_dir=study_dir, output_dir=out))
        assert result.exit_code == 2, result.report.error
        assert not list(out.rglob("*.dcm"))
        error = result.report.error
        assert error is not None and error.attribute and error.expected and error.found and error.series_instance_uid
        return result

    def test_low_dose_of_another_patient(self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path) -> None:
        def other_patient(ds: Dataset, index: int) -> None:
            ds.PatientID = "SOMEONE-ELSE-4711"

        study = _mutated(studies[1], tmp_path, "t1_low_dose", other_patient)
        result = self._run(pipeline, study, tmp_path / "out")
        error = result.report.error
        assert error is not None and error.attribute == "PatientID"
        assert error.series_instance_uid == studies[1].series["t1_low_dose"].series_instance_uid
        assert "SOMEONE-ELSE-4711" not in json.dumps(result.report.model_dump(mode="json"))  # never the IDs

    def test_low_dose_that_is_not_mr(self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path) -> None:
        def ct(ds: Dataset, index: int) -> None:
            ds.Modality = "CT"

        result = self._run(pipeline, _mutated(studies[1], tmp_path, "t1_low_dose", ct), tmp_path / "out")
        assert result.report.error is not None and result.report.error.attribute in {"Modality", "t1_low_dose"}

    def test_contrast_without_a_usable_low_dose_is_not_sent_to_the_zero_dose_model(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        target = tmp_path / "dicom"
        shutil.copytree(studies[1].dicom_dir, target)
        low = target / studies[1].series["t1_low_dose"].directory.name
        for path in sorted(low.glob("*.dcm"))[1:]:  # one slice left: the selector excludes it
            path.unlink()
        result = self._run(pipeline, target, tmp_path / "out")
        error = result.report.error
        assert error is not None and error.attribute == "t1_low_dose"
        assert "made for studies without contrast" in error.message
        assert result.report.model is None


class TestOutputFolder:
    """Outputs appear all at once or not at all; an earlier run's results are never overwritten."""

    def test_non_empty_folder_is_refused_and_left_as_it_was(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        (tmp_path / "report.json").write_text('{"earlier": "run"}')
        result = pipeline.run(PipelineRequest(study_dir=studies[1].dicom_dir, output_dir=tmp_path))
        assert result.exit_code == 2
        assert result.failed_stage == "prepare_output"
        assert result.report.error is not None and result.report.error.attribute == "output"
        assert "1 entries (report.json)" in result.report.error.found
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
        assert json.loads((tmp_path / "report.json").read_text()) == {"earlier": "run"}

    def test_path_under_a_file_is_refused(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        (tmp_path / "a-file").write_text("")
        result = pipeline.run(PipelineRequest(study_dir=studies[1].dicom_dir, output_dir=tmp_path / "a-file" / "out"))
        assert result.exit_code == 2 and result.report.error is not None
        assert result.report.error.expected == "a folder this process can write"

    def test_a_failing_writer_leaves_only_report_json(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The SEG writer fails after the synthetic series was written: no series is left behind."""
        import operators.dicom_writer as dicom_writer

        def broken_seg(*args: object, **kwargs: object) -> Path:
            raise ValueError("'0000' is not a valid PatientSexValues")

        monkeypatch.setattr(dicom_writer, "write_enhancement_seg", broken_seg)
        result = pipeline.run(PipelineRequest(study_dir=studies[1].dicom_dir, output_dir=tmp_path, preview=True))
        assert result.exit_code == 1 and result.failed_stage == "write_dicom"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["failed_stage"] == "write_dicom"
        assert [o["kind"] for o in report["outputs"]] == ["report"]

    def test_success_moves_everything_into_place(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        result = pipeline.run(PipelineRequest(study_dir=studies[1].dicom_dir, output_dir=tmp_path, preview=True))
        assert result.exit_code == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "preview.png",
            "report.json",
            "seg",
            "sr",
            "synthetic_t1c",
            "uncertainty",
        ]
        for entry in result.report.outputs:
            assert Path(entry.path).exists() and ".gadsynth-partial-" not in entry.path


class TestProvenance:
    def test_outputs_name_only_the_series_the_model_consumed(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        """The acquired standard dose is registered too (as training asks), but the model never sees it."""
        request = PipelineRequest(
            study_dir=studies[1].dicom_dir, output_dir=tmp_path, extra_roles=(Role.T1_STANDARD_DOSE,)
        )
        result = pipeline.run(request)
        assert result.exit_code == 0, result.report.error
        assert result.results.registered is not None and Role.T1_STANDARD_DOSE in result.results.registered.volumes
        uids = {role: summary.series_instance_uid for role, summary in result.report.roles.items()}
        ignored = [uids[role] for role in ("t1_standard_dose", "t2", "flair", "adc") if role in uids]
        assert ignored
        sr_texts = [
            item.TextValue for item in dcmread(tmp_path / "sr" / "report_sr.dcm").ContentSequence[-1].ContentSequence
        ]
        for path in [*sorted((tmp_path / "synthetic_t1c").glob("*.dcm")), tmp_path / "sr" / "report_sr.dcm"]:
            ds = dcmread(path)
            text = ds.get("DerivationDescription", " ".join(sr_texts))
            assert uids["t1_pre"] in text and uids["t1_low_dose"] in text, path
            assert not any(uid in text for uid in ignored), path
            referenced = {item.SeriesInstanceUID for item in ds.get("ReferencedSeriesSequence", [])}
            assert not referenced & set(ignored), path


class TestOutsideTheBrain:
    def test_synthetic_equals_the_source_outside_the_grown_brain_mask(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        from operators.postprocess import BRAIN_MARGIN_MM, brain_region

        result = pipeline.run(PipelineRequest(study_dir=studies[1].dicom_dir, output_dir=tmp_path))
        assert result.exit_code == 0
        normalized = result.results.normalized
        assert normalized is not None
        spacing = tuple(float(v) for v in reversed(normalized.reference.GetSpacing()))
        region = brain_region(normalized.brain, spacing, BRAIN_MARGIN_MM)
        assert 0.05 < region.mean() < 0.8  # a head, not the whole field of view
        sources = {ds.SOPInstanceUID: ds for ds in map(dcmread, studies[1].series["t1_pre"].directory.glob("*.dcm"))}
        volume = result.results.volumes[Role.T1_PRE] if result.results.volumes else None
        assert volume is not None
        index = {ref.sop_instance_uid: k for k, ref in enumerate(volume.slices)}
        outside_voxels = 0
        for path in sorted((tmp_path / "synthetic_t1c").glob("*.dcm")):
            out = dcmread(path)
            uid = out.SourceImageSequence[0].ReferencedSOPInstanceUID
            source, k = sources[uid], index[uid]
            outside = ~region[k]
            synthetic, original = (
                ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
                for ds in (out, source)
            )
            np.testing.assert_allclose(synthetic[outside], original[outside], rtol=0, atol=1e-6)
            outside_voxels += int(outside.sum())
        assert outside_voxels > 0


class TestFolders:
    def test_symlinked_studies_are_followed_and_one_is_named(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path
    ) -> None:
        (tmp_path / "in").mkdir()
        for index, study in enumerate(studies):
            (tmp_path / "in" / f"link{index}").symlink_to(study.dicom_dir, target_is_directory=True)
        (tmp_path / "in" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)  # never followed twice
        request = PipelineRequest(study_dir=tmp_path / "in", last_stage="select_series")
        refused = pipeline.run(request)
        assert refused.exit_code == 2 and refused.report.error is not None
        assert refused.report.error.error == "MultipleStudiesError"
        assert "--study UID" in refused.report.error.message
        uid = str(dcmread(next(studies[1].series["t1_pre"].directory.glob("*.dcm"))).StudyInstanceUID)
        named = pipeline.run(
            PipelineRequest(study_dir=tmp_path / "in", study_instance_uid=uid, last_stage="select_series")
        )
        assert named.exit_code == 0 and named.report.study_instance_uid == uid
        assert named.results.selection is not None and Role.T1_LOW_DOSE in named.results.selection.roles


#: (SpecificCharacterSet, PatientName, StudyDescription) as real sites write them.
CHARACTER_SETS = [
    ("ISO_IR 192", "山田^太郎", "Kopf MRT Ü 頭部"),
    (["ISO 2022 IR 13", "ISO 2022 IR 87"], "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎", "頭部 MRI"),
    (["ISO 2022 IR 6", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎", "MRI"),
    (["", "ISO 2022 IR 149"], "Hong^Gildong=홍^길동", "뇌 MRI"),
    ("GB18030", "Wang^XiaoDong=王^小东", "头部 MRI"),
    ("ISO_IR 100", "Müller^Jürgen", "Schädel MRT"),
    ("ISO_IR 999", "Smith^John", "Head MRI"),
]


def _dciodvfy_errors(dciodvfy: str, path: Path) -> list[str]:
    import subprocess

    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


class TestRealHeaders:
    """Studies from sites in other languages and with invalid patient fields run end to end; outputs stay valid."""

    @pytest.mark.parametrize(("charset", "name", "description"), CHARACTER_SETS, ids=lambda v: str(v)[:20])
    def test_character_sets(
        self,
        pipeline: Pipeline,
        studies: list[PhantomStudy],
        tmp_path: Path,
        dciodvfy: str,
        monkeypatch: pytest.MonkeyPatch,
        charset: str | list[str],
        name: str,
        description: str,
    ) -> None:
        target = tmp_path / "dicom"
        shutil.copytree(studies[1].dicom_dir, target)
        # a site's writer, not ours: its values are not validated (pydicom would refuse an unknown character set)
        monkeypatch.setattr(config.settings, "reading_validation_mode", config.IGNORE)
        for path in target.rglob("*.dcm"):
            ds = dcmread(path)
            ds[0x00080005] = DataElement(0x00080005, "CS", charset, validation_mode=config.IGNORE)
            if charset == "ISO_IR 999":  # pydicom cannot encode for an unknown set: the bytes, as a site sends them
                ds[0x00100010] = DataElement(0x00100010, "PN", name.encode("latin-1"), validation_mode=config.IGNORE)
            else:
                ds.PatientName = name
            ds.StudyDescription = description
            ds.save_as(path)
        monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
        result = pipeline.run(PipelineRequest(study_dir=target, output_dir=tmp_path / "out"))
        assert result.exit_code == 0, result.report.error
        first = sorted((tmp_path / "out" / "synthetic_t1c").glob("*.dcm"))[0]
        seg = tmp_path / "out" / "seg" / "enhancement_seg.dcm"
        for path in (first, seg):
            assert _dciodvfy_errors(dciodvfy, path) == [], path
            assert str(dcmread(path).PatientName) == name
        if charset == "ISO_IR 999":
            assert any("UTF-8" in w for w in result.report.warnings)

    def test_invalid_patient_fields(
        self, pipeline: Pipeline, studies: list[PhantomStudy], tmp_path: Path, dciodvfy: str
    ) -> None:
        target = tmp_path / "dicom"
        shutil.copytree(studies[1].dicom_dir, target)
        broken = {"PatientSex": "0000", "PatientBirthDate": "***", "PatientAge": "old", "StudyDescription": "x" * 300}
        for path in target.rglob("*.dcm"):
            ds = dcmread(path)
            for keyword, value in broken.items():
                tag = tag_for_keyword(keyword)
                ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)
            ds.save_as(path)
        result = pipeline.run(PipelineRequest(study_dir=target, output_dir=tmp_path / "out"))
        assert result.exit_code == 0, result.report.error
        seg = tmp_path / "out" / "seg" / "enhancement_seg.dcm"
        sr = tmp_path / "out" / "sr" / "report_sr.dcm"
        for path in [*sorted((tmp_path / "out" / "synthetic_t1c").glob("*.dcm"))[:3], seg, sr]:
            assert _dciodvfy_errors(dciodvfy, path) == [], path
        (warning,) = [w for w in result.report.warnings if "left empty" in w]
        assert all(keyword in warning for keyword in broken)
        assert "0000" not in warning and "***" not in warning
        texts = [item.TextValue for item in dcmread(sr).ContentSequence[-1].ContentSequence]
        assert f"Warning: {warning}" in texts  # the SR lists the run's warnings, the writers' own included


class TestWorkingGrid:
    """A T1 finer than the working spacing runs on a coarser grid; the outputs keep the source's grid and slices.

    Sub-millimetre studies are too slow for the suite (``gadsynth bench --only large`` runs a 0.5 mm one); here the
    4 mm phantom runs with a working spacing of 6 mm, the same code path.
    """

    def test_outputs_on_the_source_grid(self, studies: list[PhantomStudy], tmp_path: Path, dciodvfy: str) -> None:
        coarse = Pipeline(load_settings(min_working_spacing_mm=6.0))
        result = coarse.run(PipelineRequest(study_dir=studies[1].dicom_dir, output_dir=tmp_path, preview=True))
        assert result.exit_code == 0, result.report.error
        work = result.results.volumes[Role.T1_PRE].image if result.results.volumes else None
        assert work is not None and work.GetSpacing() == pytest.approx((6.0, 6.0, 6.0), rel=0.05)
        assert result.results.synthetic is not None and result.results.source_reference is not None
        assert result.results.synthetic.synthetic.GetSize() == result.results.source_reference.image.GetSize()
        assert result.report.extra["postprocess"]["working_grid"]["spacing_mm"][0] == pytest.approx(6.0, rel=0.05)
        written = sorted((tmp_path / "synthetic_t1c").glob("*.dcm"))
        assert len(written) == len(list(studies[1].series["t1_pre"].directory.glob("*.dcm")))
        assert _dciodvfy_errors(dciodvfy, written[0]) == []
        assert _dciodvfy_errors(dciodvfy, tmp_path / "seg" / "enhancement_seg.dcm") == []
        assert _dciodvfy_errors(dciodvfy, tmp_path / "sr" / "report_sr.dcm") == []
        low_dose = studies[1].series["t1_low_dose"].series_instance_uid
        middle = dcmread(written[len(written) // 2])
        assert low_dose in {item.SeriesInstanceUID for item in middle.ReferencedSeriesSequence}
        assert (tmp_path / "preview.png").is_file()
