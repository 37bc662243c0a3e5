"""Tests of the training data: phantom stream, DICOM and NIfTI sources through the pipeline's code, patch sampling."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from operators.errors import InputDicomError, NoMatchingSeriesError
from operators.roles import Role
from operators.series_selector import select_roles
from operators.series_to_volume import build_volumes
from operators.study_loader import load_study
from training.datasets import (
    PatchSampler,
    PatchSettings,
    PhantomVariation,
    Sample,
    SampleCache,
    Subject,
    SubjectStream,
    parse_data_spec,
    phantom_options,
    sample_from_nifti,
)
from training.datasets.sample import training_roles
from training.phantom import generate_study
from training.train import TrainConfig, preprocessing_manifest

SEED = 5  # a subject with an enhancing (ring) metastasis and a non-enhancing lesion
VARIATION = PhantomVariation()
ROLES = ("t1_pre", "t1_low_dose", "t1_standard_dose")


def _config(tmp: Path) -> TrainConfig:
    return TrainConfig(out=tmp / "models" / "ce-test", width=4, embedding_dim=16, patch=32, margin=4)


def _assert_same(a: Sample, b: Sample) -> None:
    for name in ("image", "target", "p", "focus", "brain"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.condition is not None and b.condition is not None
    np.testing.assert_array_equal(a.condition, b.condition)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A phantom subject built through the stream's cache, and the same study written as DICOM by hand."""
    root = tmp_path_factory.mktemp("data")
    manifest = preprocessing_manifest(_config(root))
    cache = SampleCache(root / "cache", manifest, VARIATION)
    subject = Subject("phantom", f"seed {SEED}", seed=SEED)
    sample = cache.get(subject)
    studies = root / "studies"
    generate_study(phantom_options(SEED, VARIATION, roles=ROLES), studies / f"subject-{SEED}")
    return {
        "root": root,
        "manifest": manifest,
        "cache": cache,
        "subject": subject,
        "sample": sample,
        "studies": studies,
    }


class TestPhantomStream:
    def test_options_are_deterministic_per_seed(self) -> None:
        for seed in (0, 1, 17):
            assert phantom_options(seed, VARIATION) == phantom_options(seed, VARIATION)
        assert phantom_options(0, VARIATION) != phantom_options(1, VARIATION)

    def test_options_vary_over_the_stream(self) -> None:
        options = [phantom_options(seed, VARIATION) for seed in range(80)]
        assert {o.field_strength for o in options} == {1.5, 3.0}
        assert {o.canonical_agent for o in options} == set(VARIATION.agents)
        assert {o.vendor for o in options} == {"siemens", "ge", "philips"}
        assert {o.t1_sequence for o in options} == {"mprage", "gre"}
        assert {o.motion for o in options} == {True, False}
        assert {o.noise_spatially_varying for o in options} == {True, False}
        assert {o.lesion_count for o in options} == {1, 2, 3, 4}
        doses = [o.dose for o in options]
        assert 0.1 <= min(doses) < 0.13 and 0.30 < max(doses) <= 0.33
        noises = [o.noise for o in options]
        assert min(noises) >= 0.01 and max(noises) <= 0.04 and max(noises) - min(noises) > 0.02
        assert len({o.seed for o in options}) == 80

    def test_held_out_pairs_and_doses(self) -> None:
        variation = PhantomVariation(exclude_pairs=(("gadoterate", 1.5), ("gadobutrol", 3.0)), dose_range=(0.1, 0.2))
        options = [phantom_options(seed, variation) for seed in range(60)]
        pairs = {(o.canonical_agent, o.field_strength) for o in options}
        assert ("gadoterate", 1.5) not in pairs and ("gadobutrol", 3.0) not in pairs
        assert ("gadoterate", 3.0) in pairs and ("gadobutrol", 1.5) in pairs
        assert max(o.dose for o in options) <= 0.2

    def test_grid_mix_is_drawn_last(self) -> None:
        """A voxel-size mix draws one grid per subject and leaves every other draw of the seed as it was."""
        mix = PhantomVariation(size="full", resolutions_mm=(1.0, 1.0, 1.0, 2.0, 4.0))
        single = PhantomVariation(size="full")
        drawn = [phantom_options(seed, mix) for seed in range(40)]
        assert {o.resolution_mm for o in drawn} == {1.0, 2.0, 4.0}
        assert 0.4 < sum(o.resolution_mm == 1.0 for o in drawn) / 40 < 0.8
        for seed, options in enumerate(drawn):
            plain = phantom_options(seed, single)
            assert dataclasses.replace(options, resolution_mm=None) == plain
        assert "resolutions_mm" not in single.to_dict()  # records of single-grid runs are unchanged
        with pytest.raises(ValueError, match=r"resolutions_mm must be within 0\.5 to 8 mm"):
            PhantomVariation(resolutions_mm=(1.0, 12.0))

    def test_cache_key_is_the_drawn_subject(self, workspace: dict[str, object]) -> None:
        """Variations that draw the same subject share its cached sample; another draw gets another file."""
        manifest = workspace["manifest"]
        subject = workspace["subject"]
        root = Path(str(workspace["root"]))

        def path(variation: PhantomVariation) -> Path:
            return SampleCache(root, manifest, variation).path(subject)  # type: ignore[arg-type]

        two_mm = dataclasses.replace(VARIATION, resolution_mm=2.0)
        assert path(dataclasses.replace(VARIATION, resolutions_mm=(2.0,))) == path(two_mm)
        assert path(two_mm) != path(VARIATION)

    def test_invalid_variation(self) -> None:
        with pytest.raises(ValueError, match="dose_range must satisfy"):
            PhantomVariation(dose_range=(0.3, 0.1))
        with pytest.raises(ValueError, match="leaves no"):
            PhantomVariation(agents=("gadobutrol",), field_strengths=(3.0,), exclude_pairs=(("Gadovist", 3.0),))
        with pytest.raises(ValueError, match="seed must be >= 0"):
            phantom_options(-1, VARIATION)

    def test_subject_order(self) -> None:
        stream = SubjectStream([parse_data_spec("phantom:10-19")], seed=4)
        epoch = [stream.at(k).seed for k in range(10)]
        assert sorted(epoch) == list(range(10, 20))  # every subject once per epoch
        assert [stream.at(k).seed for k in range(10, 20)] != epoch  # a new order each epoch
        assert [SubjectStream([parse_data_spec("phantom:10-19")], seed=4).at(k).seed for k in range(10)] == epoch
        assert [SubjectStream([parse_data_spec("phantom:10-19")], seed=5).at(k).seed for k in range(10)] != epoch
        endless = SubjectStream([parse_data_spec("phantom:100-")], seed=4)
        assert [endless.at(k).seed for k in (0, 1, 5000)] == [100, 101, 5100]

    def test_sample_is_deterministic(self, workspace: dict[str, object], tmp_path: Path) -> None:
        sample = workspace["sample"]
        assert isinstance(sample, Sample)
        other = SampleCache(tmp_path, workspace["manifest"], VARIATION)  # type: ignore[arg-type]
        _assert_same(other.build(workspace["subject"]), sample)  # type: ignore[arg-type]

    def test_sample_content(self, workspace: dict[str, object]) -> None:
        sample = workspace["sample"]
        assert isinstance(sample, Sample)
        options = phantom_options(SEED, VARIATION)
        assert sample.image.shape == (3, *sample.shape) and sample.image.dtype == np.float32
        assert sample.condition is not None
        dose, field, _, sigma = (float(v) for v in sample.condition)
        assert dose == pytest.approx(options.dose, abs=0.01)  # from the DICOM header (ContrastBolusVolume / weight)
        assert field == options.field_strength and sigma == pytest.approx(sample.meta["sigma_ld"])
        brain_ml = sample.brain.sum() * np.prod(sample.meta["spacing_zyx_mm"]) / 1000.0
        assert 1000 < brain_ml < 2500
        enhancing = (sample.p > 0.5) & sample.brain
        assert enhancing.sum() > 50  # lesions and vessels
        # the target is the noise-free contrast signal: positive where enhancing, ~0 in plain brain
        # p > 0.5 means z_SD > 2.5 sigma_LD, so y = p * z_SD > 1.25 sigma_LD there
        assert float(sample.target[enhancing].min()) > 1.25 * sigma
        assert float(np.median(sample.target[enhancing])) > 2.5 * sigma
        assert float(np.abs(sample.target[sample.brain & (sample.p < 0.01)]).max()) < 1.5 * sigma
        assert 0.7 < float(sample.gamma_ratio or 0) < 1.5

    def test_cache_round_trip(self, workspace: dict[str, object]) -> None:
        cache = workspace["cache"]
        assert isinstance(cache, SampleCache)
        path = cache.path(workspace["subject"])  # type: ignore[arg-type]
        assert path.is_file()
        again = cache.get(workspace["subject"])  # type: ignore[arg-type]
        _assert_same(again, workspace["sample"])  # type: ignore[arg-type]
        assert again.meta == workspace["sample"].meta  # type: ignore[attr-defined]


class TestDicomSource:
    def test_dicom_folder_gives_the_phantom_sample(self, workspace: dict[str, object]) -> None:
        spec = parse_data_spec(f"dicom:{workspace['studies']}")
        subjects = spec.subjects()
        assert [s.name for s in subjects] == [f"subject-{SEED}"]
        cache = SampleCache(Path(str(workspace["root"])) / "dicom-cache", workspace["manifest"], VARIATION)  # type: ignore[arg-type]
        sample = cache.get(subjects[0])
        _assert_same(sample, workspace["sample"])  # type: ignore[arg-type]
        assert sample.meta["source"]["kind"] == "dicom"

    def test_missing_standard_dose(self, workspace: dict[str, object], tmp_path: Path) -> None:
        generate_study(phantom_options(SEED, VARIATION, roles=("t1_pre", "t1_low_dose")), tmp_path / "s")
        cache = SampleCache(tmp_path / "cache", workspace["manifest"], VARIATION)  # type: ignore[arg-type]
        with pytest.raises(NoMatchingSeriesError, match="No series fits role t1_standard_dose"):
            cache.get(Subject("dicom", "s", path=tmp_path / "s"))

    def test_empty_folder(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no training subject found"):
            SubjectStream([parse_data_spec(f"dicom:{tmp_path}")], seed=0)


@pytest.fixture(scope="module")
def nifti_subject(workspace: dict[str, object]) -> Path:
    """The DICOM study of the workspace as NIfTI files (one per role) with a sidecar, as a site would export it."""
    study = load_study(Path(str(workspace["studies"])) / f"subject-{SEED}")
    selection = select_roles(study, required=training_roles(workspace["manifest"]))  # type: ignore[arg-type]
    folder = Path(str(workspace["root"])) / "nifti" / "subject-a"
    folder.mkdir(parents=True)
    for role, volume in build_volumes(selection).items():
        sitk.WriteImage(volume.image, str(folder / f"{role.value}.nii.gz"))
    low = selection.contrast[Role.T1_LOW_DOSE]
    sidecar = {"dose": low.dose, "field_strength_t": low.field_strength_t, "agent": low.agent}
    (folder / "sidecar.json").write_text(json.dumps(sidecar), encoding="utf-8")
    return folder


class TestNiftiSource:
    def test_nifti_subject_matches_the_dicom_sample(self, workspace: dict[str, object], nifti_subject: Path) -> None:
        subjects = parse_data_spec(f"nifti:{nifti_subject.parent}").subjects()
        assert [s.path for s in subjects] == [nifti_subject]
        cache = SampleCache(Path(str(workspace["root"])) / "nifti-cache", workspace["manifest"], VARIATION)  # type: ignore[arg-type]
        sample = cache.get(subjects[0])
        reference = workspace["sample"]
        assert isinstance(reference, Sample) and sample.condition is not None and reference.condition is not None
        assert sample.shape == reference.shape
        np.testing.assert_allclose(sample.condition, reference.condition, rtol=1e-3)
        assert sample.meta["condition"]["dose"]["source"] == "sidecar"
        # same pixels, geometry through NIfTI's float32 header: the same sample up to registration round-off
        agreement = np.mean(sample.brain == reference.brain)
        assert agreement > 0.99
        brain = sample.brain & reference.brain
        difference = np.abs(sample.image - reference.image)[:, brain]
        assert float(np.median(difference)) < 1e-3
        assert np.corrcoef(sample.target[brain], reference.target[brain])[0, 1] > 0.98

    def test_brain_mask_file_is_used(self, workspace: dict[str, object], nifti_subject: Path, tmp_path: Path) -> None:
        folder = tmp_path / "subject-b"
        shutil.copytree(nifti_subject, folder)
        pre = sitk.ReadImage(str(folder / "t1_pre.nii.gz"))
        box = sitk.Image(pre.GetSize(), sitk.sitkUInt8)
        box.CopyInformation(pre)
        box[16:48, 16:48, 12:36] = 1
        sitk.WriteImage(box, str(folder / "brain_mask.nii.gz"))
        sample = sample_from_nifti(folder, workspace["manifest"])  # type: ignore[arg-type]
        assert int(sample.brain.sum()) == 32 * 32 * 24

    @pytest.mark.parametrize(
        ("edit", "message"),
        [
            ("drop-sidecar", "has no sidecar.json"),
            ("no-dose", "'dose' must be a positive number"),
            ("no-agent", "give 'agent'"),
            ("drop-standard-dose", "has no t1_standard_dose.nii.gz"),
        ],
    )
    def test_invalid_subject(self, nifti_subject: Path, tmp_path: Path, edit: str, message: str) -> None:
        folder = tmp_path / "subject"
        shutil.copytree(nifti_subject, folder)
        sidecar = json.loads((folder / "sidecar.json").read_text())
        if edit == "drop-sidecar":
            (folder / "sidecar.json").unlink()
        elif edit == "no-dose":
            sidecar.pop("dose")
        elif edit == "no-agent":
            sidecar.pop("agent")
        else:
            (folder / "t1_standard_dose.nii.gz").unlink()
        if (folder / "sidecar.json").exists():
            (folder / "sidecar.json").write_text(json.dumps(sidecar))
        manifest = preprocessing_manifest(_config(tmp_path))
        with pytest.raises(InputDicomError, match=message):
            sample_from_nifti(folder, manifest)


class TestDataSpec:
    @pytest.mark.parametrize(
        ("text", "start", "stop"),
        [("phantom:0-199", 0, 200), ("phantom:7", 7, 8), ("phantom:1000-", 1000, None)],
    )
    def test_phantom(self, text: str, start: int, stop: int | None) -> None:
        spec = parse_data_spec(text)
        assert (spec.kind, spec.start, spec.stop) == ("phantom", start, stop)
        assert spec.endless == (stop is None)

    def test_source_draws(self, workspace: dict[str, object]) -> None:
        """``phantom:A-B,field=...,dose=...`` draws those choices from its own ranges and every other one as the
        run's variation does; the subjects' cache files follow the drawn options."""
        spec = parse_data_spec("phantom:200-239,field=1.5,dose=0.1-0.15")
        assert spec.describe() == "phantom:200-239,dose=0.1-0.15,field=1.5"
        assert parse_data_spec(spec.describe()) == spec
        for subject in spec.subjects():
            own = phantom_options(subject.seed, VARIATION.with_overrides(subject.overrides))  # type: ignore[arg-type]
            plain = phantom_options(subject.seed, VARIATION)  # type: ignore[arg-type]
            assert own.field_strength == 1.5 and 0.1 <= own.dose <= 0.15
            assert (own.vendor, own.noise, own.lesion_count) == (plain.vendor, plain.noise, plain.lesion_count)
        assert parse_data_spec("phantom:5-,agent=gadovist").overrides == (("agents", ("gadobutrol",)),)
        four = parse_data_spec("phantom:64-79,grid=4/2")
        assert four.describe() == "phantom:64-79,grid=4/2"
        drawn = [phantom_options(s.seed, VARIATION.with_overrides(s.overrides)) for s in four.subjects()]  # type: ignore[arg-type]
        assert {o.resolution_mm for o in drawn} == {2.0, 4.0}
        endless = SubjectStream([parse_data_spec("phantom:5-,field=3")], seed=0)
        assert endless.at(2).seed == 7 and endless.at(2).overrides == (("field_strengths", (3.0,)),)
        manifest = workspace["manifest"]
        cache = SampleCache(Path(str(workspace["root"])), manifest, VARIATION)  # type: ignore[arg-type]
        plain_subject = parse_data_spec("phantom:200").subjects()[0]
        own_subject = parse_data_spec("phantom:200,field=1.5,dose=0.1-0.15").subjects()[0]
        assert cache.path(plain_subject) != cache.path(own_subject)
        assert cache.path(plain_subject).name.startswith("phantom-000200.")

    def test_source_draws_the_run_holds_out(self, tmp_path: Path) -> None:
        """A source that could only draw a held-out (agent, field) pair is refused when the run is configured."""
        held_out = PhantomVariation(exclude_pairs=(("gadobenate", 1.5),))
        with pytest.raises(ValueError, match=r"--data phantom:0-3,agent=gadobenate,field=1\.5: .*leaves no"):
            TrainConfig(
                model="differential",
                out=tmp_path / "m",
                data=("phantom:0-3,field=1.5,agent=gadobenate",),
                variation=held_out,
            )

    def test_card_counts_each_subject_once(self, tmp_path: Path) -> None:
        """The grid mix a model card reports weights every subject once, whichever source drew its grid."""
        from training.train_export import _drawn_grids

        mix = PhantomVariation(size="full", resolutions_mm=(1.0, 1.0, 4.0))
        config = TrainConfig(out=tmp_path / "m", data=("phantom:0-29", "phantom:100-109,grid=4"), variation=mix)
        assert _drawn_grids(config) == pytest.approx({1.0: 0.5, 4.0: 0.5})
        assert _drawn_grids(TrainConfig(out=tmp_path / "m", data=("phantom:0-29",))) == {}

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("phantom:0-3,field=7", "field_strength must be 1.5 or 3.0"),
            ("phantom:0-3,dose=0.3-0.1", "dose_range must satisfy"),
            ("phantom:0-3,dose=abc", "expected numbers"),
            ("phantom:0-3,agent=water", "known agent names"),
            ("phantom:0-3,grid=12", "resolutions_mm must be within"),
            ("phantom:0-3,noise=0.1", "draws are field="),
            ("phantom:0-3,", "draws are field="),
            ("phantoms:0-3", "must be phantom:A-B"),
            ("phantom:9-3", "is empty"),
            ("phantom:a-b", "must be A-B"),
            ("dicom:/nonexistent/gadsynth", "does not exist"),
            ("phantom", "must be phantom:A-B"),
        ],
    )
    def test_invalid(self, text: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            parse_data_spec(text)

    def test_endless_cannot_mix(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="cannot be mixed"):
            SubjectStream([parse_data_spec("phantom:0-"), parse_data_spec(f"nifti:{tmp_path}")], seed=0)


def _lesion_labels(workspace: dict[str, object], *, enhancing: bool) -> np.ndarray:
    """The phantom's truth mask of its enhancing (or non-enhancing) lesions, on the sample's (t1_pre) grid."""
    truth = Path(str(workspace["studies"])) / f"subject-{SEED}" / "truth"
    params = json.loads((truth / "params.json").read_text())
    ids = [lesion["id"] for lesion in params["lesions"] if lesion["enhancing"] == enhancing]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(truth / "lesions.nii.gz")))
    assert ids and labels.shape == workspace["sample"].shape  # type: ignore[attr-defined]
    return np.isin(labels, ids)


def _enhancing_lesion(workspace: dict[str, object]) -> np.ndarray:
    return ndimage.binary_dilation(_lesion_labels(workspace, enhancing=True), iterations=1)


class TestPatches:
    def _sampler(self, workspace: dict[str, object], **settings: object) -> PatchSampler:
        stream = SubjectStream([parse_data_spec(f"phantom:{SEED}")], seed=0)
        cache = workspace["cache"]
        assert isinstance(cache, SampleCache)
        return PatchSampler(stream, cache, PatchSettings(**settings), seed=1)  # type: ignore[arg-type]

    def test_batches_are_a_function_of_the_step(self, workspace: dict[str, object]) -> None:
        a = self._sampler(workspace, size=(32, 32, 32)).batch(5, 2)
        b = self._sampler(workspace, size=(32, 32, 32)).batch(5, 2)
        c = self._sampler(workspace, size=(32, 32, 32)).batch(6, 2)
        assert set(a) == {"image", "condition", "target", "p", "brain", "origin"}
        assert a["image"].shape == (2, 3, 32, 32, 32) and a["condition"].shape == (2, 4)
        assert a["target"].shape == a["p"].shape == a["brain"].shape == (2, 1, 32, 32, 32)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        assert not np.array_equal(a["image"], c["image"])

    def test_bias_toward_enhancement(self, workspace: dict[str, object]) -> None:
        lesion = _enhancing_lesion(workspace)

        def lesion_share(fraction: float) -> float:
            sampler = self._sampler(workspace, size=(16, 16, 16), lesion_fraction=fraction)
            hits = []
            for step in range(30):
                for d, h, w in sampler.batch(step, 2)["origin"].astype(int):
                    hits.append(lesion[d : d + 16, h : h + 16, w : w + 16].any())
            return float(np.mean(hits))

        biased, plain = lesion_share(1.0), lesion_share(0.0)
        assert biased > 0.5 and biased > 2 * plain

    def test_focus_marks_the_lesions(self, workspace: dict[str, object]) -> None:
        sample = workspace["sample"]
        assert isinstance(sample, Sample)
        lesion = _enhancing_lesion(workspace)
        assert lesion.sum() < 0.02 * sample.brain.sum()
        candidates = sample.focus > PatchSettings().focus_threshold
        weights = sample.focus[candidates]
        # most of the drawing weight sits on the lesion, which is under 2% of the brain
        assert float(weights[lesion[candidates]].sum() / weights.sum()) > 0.3
        assert not (candidates & _lesion_labels(workspace, enhancing=False)).any()  # the non-enhancing lesion

    def test_small_volumes_are_padded(self, workspace: dict[str, object]) -> None:
        sample = workspace["sample"]
        assert isinstance(sample, Sample) and min(sample.shape) < 64
        batch = self._sampler(workspace, size=(64, 64, 64)).batch(0, 1)
        assert batch["image"].shape == (1, 3, 64, 64, 64)
        assert batch["brain"].sum() == sample.brain.sum()  # the whole (padded) volume fits in one patch

    def test_flips(self, workspace: dict[str, object]) -> None:
        plain = self._sampler(workspace, size=(16, 16, 16)).batch(3, 4)
        flipped = self._sampler(workspace, size=(16, 16, 16), flip=True).batch(3, 4)
        np.testing.assert_array_equal(plain["origin"], flipped["origin"])  # same patches, some mirrored
        same = [np.array_equal(plain["image"][i], flipped["image"][i]) for i in range(4)]
        assert not all(same)
        for i in range(4):
            assert np.isclose(plain["target"][i].sum(), flipped["target"][i].sum(), rtol=1e-5)

    def test_invalid_settings(self) -> None:
        with pytest.raises(ValueError, match="lesion_fraction must be within 0 to 1"):
            PatchSettings(lesion_fraction=1.5)
        with pytest.raises(ValueError, match="patch size must be three integers >= 4"):
            PatchSettings(size=(2, 2, 2))
