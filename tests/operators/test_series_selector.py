"""Series role selection: rules as data, preferences, normalized copies, doses and explanations."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pydicom.uid import generate_uid

from operators.contrast import agent_from_text
from operators.errors import NoMatchingSeriesError
from operators.roles import Role, relaxivity
from operators.series_rules import load_rules, match_condition
from operators.series_selector import select_roles
from operators.study import Selection
from operators.study_loader import load_study
from tests.operators.dicom_factory import SeriesSpec, write_series

XA30 = "dcm_qa_xa30"
T0 = dt.datetime(2024, 3, 1, 9, 0, 0)


def _exam_specs(**changes: dict[str, Any]) -> dict[str, SeriesSpec]:
    """A six-role brain exam plus distractors (one study, one frame of reference), by name."""
    shared = {"study_uid": generate_uid(), "frame_uid": generate_uid()}
    minutes = iter(range(0, 200, 4))

    def spec(**kw: Any) -> SeriesSpec:
        return SeriesSpec(**shared, time=T0 + dt.timedelta(minutes=next(minutes)), **kw)

    specs = {
        "localizer": spec(
            description="localizer", series_number=1, slices=3, image_type=("ORIGINAL", "PRIMARY", "M", "LOCALIZER")
        ),
        "t1_pre": spec(description="t1_mprage_sag", series_number=2),
        "t2": spec(description="t2_tse_tra", protocol="t2", series_number=3),
        "flair": spec(description="t2_tirm_tra_dark-fluid", protocol="flair", series_number=4),
        "bold": spec(description="ep2d_bold_rest", protocol="bold", series_number=5),
        "adc": spec(
            description="ep2d_diff_ADC",
            protocol="dwi",
            series_number=6,
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
        ),
        "trace": spec(
            description="ep2d_diff_TRACEW",
            protocol="dwi",
            series_number=7,
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "TRACEW", "ND"),
        ),
        "t1_low_dose": spec(description="t1_mprage_sag_post", series_number=8, contrast_ml=2.0),
        "t1_standard_dose": spec(description="t1_mprage_sag_post", series_number=9, contrast_ml=8.0),
        "mpr": spec(
            description="t1_mprage_sag_post_MPR_tra",
            series_number=10,
            contrast_ml=8.0,
            image_type=("DERIVED", "SECONDARY", "MPR", "ND"),
        ),
    }
    for name, values in changes.items():
        specs[name] = SeriesSpec(**{**specs[name].__dict__, **values})
    return specs


def _write(tmp_path: Path, specs: dict[str, SeriesSpec], names: list[str] | None = None) -> dict[str, str]:
    """Write the named series (all by default); returns name -> SeriesInstanceUID."""
    for name in names or list(specs):
        write_series(tmp_path / name, specs[name])
    return {name: specs[name].series_uid for name in names or list(specs)}


def _roles(selection: Selection) -> dict[str, str]:
    return {role.value: series.series_instance_uid for role, series in selection.roles.items()}


def _reasons(selection: Selection, uid: str) -> list[str]:
    return next(d.reasons for d in selection.decisions if d.series_instance_uid == uid)


@pytest.fixture(scope="module")
def xa30_study(real_dicom: Path):  # type: ignore[no-untyped-def]
    return load_study(real_dicom / XA30 / "In")


class TestRealXA30:
    """Siemens XA30: series 5 vs its prescan-normalized copy 6, and a mess of fMRI, field maps, DWI and ASL."""

    def test_t1_and_rejections(self, xa30_study) -> None:  # type: ignore[no-untyped-def]
        selection = select_roles(xa30_study)
        by_number = {s.series_number: s for s in xa30_study.series}
        assert selection.roles[Role.T1_PRE] is by_number[5]
        assert set(selection.roles) <= {Role.T1_PRE, Role.ADC}  # the ADC map may serve as ADC
        assert all(s.series_number in (5, 11, 19) for s in selection.roles.values())
        decisions = {d.series_number: d for d in selection.decisions}
        assert len(decisions) == 20 and all(d.reasons for d in decisions.values())
        expected = {
            7: "excluded: functional MRI (BOLD)",
            8: "excluded: field map",
            9: "excluded: field map",
            14: "excluded: colour image",
            22: "excluded: colour image",
            25: "excluded: arterial spin labelling",
            27: "excluded: arterial spin labelling",
            28: "excluded: arterial spin labelling",
        }
        expected |= dict.fromkeys((10, 12, 13, 16, 17, 20, 21, 24), "excluded: diffusion-weighted or tensor image")
        for number, start in expected.items():
            assert decisions[number].role is None
            assert decisions[number].reasons[0].startswith(start), (number, decisions[number].reasons)
        assert decisions[5].reasons[0].startswith("t1_pre: pre-contrast T1-weighted")

    def test_normalized_copy_recognised(self, xa30_study) -> None:  # type: ignore[no-untyped-def]
        selection = select_roles(xa30_study)
        decision = next(d for d in selection.decisions if d.series_number == 6)
        assert decision.role is None
        assert decision.reasons[0].startswith("not pre-contrast T1-weighted: normalized copy of #5 'anat-T1w_acq-tfl'")
        assert "normalized_copies='original'" in decision.reasons[0]

    def test_preference_for_normalized(self, xa30_study) -> None:  # type: ignore[no-untyped-def]
        rules = load_rules()
        rules["preferences"]["normalized_copies"] = "normalized"
        selection = select_roles(xa30_study, rules)
        assert selection.roles[Role.T1_PRE].series_number == 6
        decision = next(d for d in selection.decisions if d.series_number == 5)
        assert decision.reasons[0].startswith("not pre-contrast T1-weighted: unnormalized copy of #6")

    def test_pre_and_post_stay_consistent(self, real_dicom: Path, tmp_path: Path) -> None:
        """Only a normalized post-contrast exists: the normalized pre-contrast copy is taken too."""
        for number in (5, 6):
            source = next((real_dicom / XA30 / "In" / f"{number}_anat-T1w_acq-tfl").iterdir())
            (tmp_path / source.name).symlink_to(source)
        post = dcmread(next((real_dicom / XA30 / "In" / "6_anat-T1w_acq-tfl").iterdir()))
        post.SeriesInstanceUID, post.SOPInstanceUID = generate_uid(), generate_uid()
        post.file_meta.MediaStorageSOPInstanceUID = post.SOPInstanceUID
        post.SeriesNumber, post.SeriesDescription = 16, "anat-T1w_acq-tfl_post"
        post.AcquisitionDateTime = "20220711123000.000000"
        post.ContrastBolusAgent, post.ContrastBolusVolume = "Gadovist", 7.2
        post.save_as(tmp_path / "post.dcm")
        selection = select_roles(load_study(tmp_path))
        assert selection.roles[Role.T1_PRE].series_number == 6
        assert selection.roles[Role.T1_STANDARD_DOSE].series_number == 16
        info = selection.contrast[Role.T1_STANDARD_DOSE]
        assert info.dose == pytest.approx(7.2 / (0.1 * 72.5747), rel=1e-4) and info.agent == "gadobutrol"
        decision = next(d for d in selection.decisions if d.series_number == 5)
        assert "switched to keep pre- and post-contrast series consistent" in decision.reasons[0]


class TestSixRoles:
    """A synthetic six-role exam with distractors."""

    def test_all_roles_and_contrast(self, tmp_path: Path) -> None:
        specs = _exam_specs()
        uids = _write(tmp_path, specs)
        selection = select_roles(load_study(tmp_path))
        assert _roles(selection) == {role.value: uids[role.value] for role in Role if role != Role.T1_MAP}
        low, std = selection.contrast[Role.T1_LOW_DOSE], selection.contrast[Role.T1_STANDARD_DOSE]
        assert (low.dose, std.dose) == (pytest.approx(0.25), pytest.approx(1.0))
        assert low.agent == std.agent == "gadobutrol" and low.source == "header"
        assert low.field_strength_t == 3.0 and low.r1 == relaxivity("gadobutrol", 3.0)
        assert _reasons(selection, uids["localizer"])[0].startswith("excluded: localizer")
        assert _reasons(selection, uids["bold"])[0].startswith("excluded: functional MRI")
        assert _reasons(selection, uids["trace"])[0].startswith("excluded: diffusion-weighted")
        assert _reasons(selection, uids["mpr"])[0].startswith("excluded: reformat")
        assert "dose 0.25 x standard from the header" in _reasons(selection, uids["t1_low_dose"])[0]

    def test_single_post_contrast_by_dose(self, tmp_path: Path) -> None:
        specs = _exam_specs()
        uids = _write(tmp_path, specs, ["t1_pre", "t1_standard_dose"])
        selection = select_roles(load_study(tmp_path))
        assert _roles(selection) == {"t1_pre": uids["t1_pre"], "t1_standard_dose": uids["t1_standard_dose"]}

    def test_unknown_dose_uses_acquisition_order_then_request(self, tmp_path: Path) -> None:
        specs = _exam_specs(t1_low_dose={"weight_kg": 0.0}, t1_standard_dose={"weight_kg": 0.0})
        uids = _write(tmp_path, specs, ["t1_pre", "t1_low_dose", "t1_standard_dose"])
        selection = select_roles(load_study(tmp_path), doses={Role.T1_LOW_DOSE: 0.3})
        assert selection.roles[Role.T1_LOW_DOSE].series_instance_uid == uids["t1_low_dose"]
        assert selection.roles[Role.T1_STANDARD_DOSE].series_instance_uid == uids["t1_standard_dose"]
        assert (selection.contrast[Role.T1_LOW_DOSE].dose, selection.contrast[Role.T1_LOW_DOSE].source) == (
            0.3,
            "request",
        )
        assert selection.contrast[Role.T1_STANDARD_DOSE].source == "rules"
        assert "acquisition order" in _reasons(selection, uids["t1_low_dose"])[0]

    def test_single_post_contrast_without_dose(self, tmp_path: Path) -> None:
        specs = _exam_specs(t1_low_dose={"weight_kg": 0.0})
        _write(tmp_path, specs, ["t1_pre", "t1_low_dose"])
        selection = select_roles(load_study(tmp_path))
        assert Role.T1_LOW_DOSE in selection.roles  # rules: single_post_contrast_role
        assert selection.contrast[Role.T1_LOW_DOSE].dose is None
        assert selection.contrast[Role.T1_LOW_DOSE].source == "default"

    def test_post_contrast_must_follow_pre(self, tmp_path: Path) -> None:
        # Described as post-contrast (no ContrastBolusAgent) but acquired before the pre-contrast T1.
        specs = _exam_specs(t1_low_dose={"time": T0 - dt.timedelta(minutes=30), "contrast_ml": None})
        uids = _write(tmp_path, specs, ["t1_pre", "t1_low_dose"])
        selection = select_roles(load_study(tmp_path))
        assert Role.T1_LOW_DOSE not in selection.roles
        assert _reasons(selection, uids["t1_low_dose"])[0].startswith(
            "not post-contrast T1-weighted: acquired before t1_pre #2"
        )

    def test_unlabelled_series_after_contrast_is_not_pre(self, tmp_path: Path) -> None:
        """A T1 acquired after a series with ContrastBolusAgent counts as post-contrast even without the tag."""
        specs = _exam_specs(t1_standard_dose={"contrast_ml": None, "description": "t1_mprage_sag_2"})
        uids = _write(tmp_path, specs, ["t1_pre", "t1_low_dose", "t1_standard_dose"])
        selection = select_roles(load_study(tmp_path))
        assert selection.roles[Role.T1_PRE].series_instance_uid == uids["t1_pre"]
        assert selection.roles[Role.T1_STANDARD_DOSE].series_instance_uid == uids["t1_standard_dose"]


class TestPreferencesAndTies:
    """Several candidates for one role: documented preference, then a deterministic, logged tie-break."""

    def test_3d_preferred_over_2d(self, tmp_path: Path) -> None:
        specs = _exam_specs(t2={"protocol": "t1_se", "description": "t1_se_tra"})
        uids = _write(tmp_path, specs, ["t1_pre", "t2"])
        selection = select_roles(load_study(tmp_path))
        assert selection.roles[Role.T1_PRE].series_instance_uid == uids["t1_pre"]
        assert _reasons(selection, uids["t2"])[0].startswith("pre-contrast T1-weighted candidate, not chosen: #2")

    def test_two_equally_good_t1(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        specs = _exam_specs(t2={"protocol": "t1_mprage", "description": "t1_mprage_sag", "series_number": 12})
        uids = _write(tmp_path, specs, ["t1_pre", "t2"])
        with caplog.at_level(logging.WARNING, logger="operators.series_selector"):
            selection = select_roles(load_study(tmp_path))
        assert selection.roles[Role.T1_PRE].series_instance_uid == uids["t1_pre"]  # SeriesNumber 2 < 12
        assert "2 equally good candidates for t1_pre" in caplog.text
        assert "took #2 't1_mprage_sag'" in caplog.text
        assert "chosen among equally good candidates (#12" in " ".join(_reasons(selection, uids["t1_pre"]))

    def test_normalized_copies_in_classic_image_type(self, tmp_path: Path) -> None:
        specs = _exam_specs(
            t2={
                "protocol": "t1_mprage",
                "description": "t1_mprage_sag",
                "image_type": ("ORIGINAL", "PRIMARY", "M", "ND", "NORM"),
                "time": T0,
            }
        )
        specs["t1_pre"] = SeriesSpec(**{**specs["t1_pre"].__dict__, "time": T0})
        uids = _write(tmp_path, specs, ["t1_pre", "t2", "t1_low_dose"])
        selection = select_roles(load_study(tmp_path))
        # Post-contrast exists only without NORM: the original pre-contrast is kept (preferred and consistent).
        assert selection.roles[Role.T1_PRE].series_instance_uid == uids["t1_pre"]
        assert _reasons(selection, uids["t2"])[0].startswith("not pre-contrast T1-weighted: normalized copy of #2")


class TestErrors:
    """Studies without the roles the pipeline needs."""

    def test_no_t1_at_all(self, tmp_path: Path) -> None:
        _write(tmp_path, _exam_specs(), ["t2", "flair", "adc"])
        with pytest.raises(
            NoMatchingSeriesError,
            match=r"No series fits role t1_pre in study .* \(3 image series\)\. "
            r"#3 't2_tse_tra': not pre-contrast T1-weighted",
        ) as info:
            select_roles(load_study(tmp_path))
        assert info.value.expected == "a series for role t1_pre"

    def test_required_low_dose(self, tmp_path: Path) -> None:
        _write(tmp_path, _exam_specs(), ["t1_pre"])
        assert Role.T1_PRE in select_roles(load_study(tmp_path)).roles
        with pytest.raises(NoMatchingSeriesError, match="No series fits role t1_low_dose"):
            select_roles(load_study(tmp_path), required=(Role.T1_PRE, Role.T1_LOW_DOSE))


class TestRules:
    """Rules come from JSON or YAML files or mappings; MONAI Deploy's format works; bad rules are refused."""

    def test_rules_files(self, tmp_path: Path) -> None:
        _write(tmp_path / "study", _exam_specs(), ["t1_pre", "t2"])
        study = load_study(tmp_path / "study")
        rules = load_rules()
        rules["selections"] = [s for s in rules["selections"] if s["name"] == "t2"]
        (tmp_path / "rules.json").write_text(json.dumps(rules))
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
        for path in (tmp_path / "rules.json", tmp_path / "rules.yaml"):
            assert set(select_roles(study, path, required=()).roles) == {Role.T2}

    def test_monai_deploy_style_rules(self, tmp_path: Path) -> None:
        _write(tmp_path, _exam_specs(), ["t1_pre", "t2"])
        rules = {
            "selections": [
                {
                    "name": "t2",
                    "conditions": {
                        "Modality": "(?i)MR",
                        "SeriesDescription": "(?i)t2",
                        "ImageType": ["PRIMARY", "!DERIVED"],
                        "RepetitionTime": [4000, ">="],
                        "SliceThickness": [1, 3],
                        "ImageOrientationPatient": "Axial",
                        "PhotometricInterpretation": "MONOCHROME2",  # any DICOM keyword, looked up on demand
                    },
                }
            ]
        }
        selection = select_roles(load_study(tmp_path), rules, required=(Role.T2,))
        assert selection.roles[Role.T2].series_number == 3
        rules["selections"][0]["conditions"]["ImageOrientationPatient"] = "Sagittal"
        with pytest.raises(NoMatchingSeriesError, match="Orientation 'AXIAL' does not match"):
            select_roles(load_study(tmp_path), rules, required=(Role.T2,))

    @pytest.mark.parametrize(
        ("rules", "message"),
        [
            ({}, 'non-empty "selections" list'),
            ({"selections": [{"conditions": {}}]}, 'has no "name"'),
            ({"selections": [{"name": "t2", "when": {}}]}, r"unknown keys \['when'\]"),
            ({"selections": [{"name": "t2", "use": "nothing"}]}, "uses 'nothing', not in definitions"),
        ],
    )
    def test_bad_rules(self, rules: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            load_rules(rules)

    def test_unknown_preference(self, tmp_path: Path) -> None:
        _write(tmp_path, _exam_specs(), ["t1_pre"])
        rules = load_rules()
        rules["preferences"]["order"] = ["newest"]
        with pytest.raises(ValueError, match="Unknown preference 'newest'"):
            select_roles(load_study(tmp_path), rules)


class TestConditions:
    """The condition language, one form at a time."""

    @pytest.mark.parametrize(
        ("expected", "actual", "ok"),
        [
            ([300, 1300], 900.0, True),
            ([300, 1300], 2000.0, False),
            ([None, 10], 2.4, True),
            ([1, ">"], 3, True),
            ([1, "<="], 3, False),
            (9, 9.0, True),
            ("9.*", 9.5, True),
            ("(?i)^mr$", "MR", True),
            ("!(?i)flair", "t2_tse", True),
            ("!(?i)flair", "t2_flair", False),
            (["(?i)t2", "(?i)pd"], "PD_TSE", True),
            (["ORIGINAL", "!DERIVED"], ["ORIGINAL", "PRIMARY", "M"], True),
            (["ORIGINAL", "!M"], ["ORIGINAL", "PRIMARY", "M"], False),
            ("NORM", ["ORIGINAL", "NORMAL"], False),  # whole values, not substrings
            ([0.5, 1.5], [1.0, 1.0], True),
            (True, "Gadovist", True),
            (False, None, True),
            (True, None, False),
            (True, True, True),
            ([0, 10], None, False),
        ],
    )
    def test_match(self, expected: Any, actual: Any, ok: bool) -> None:
        assert match_condition("Key", expected, actual)[0] is ok

    def test_bad_operator(self) -> None:
        with pytest.raises(ValueError, match="Unknown operator '~'"):
            match_condition("RepetitionTime", [1, "~"], 3.0)

    @pytest.mark.parametrize(
        ("text", "agent"),
        [
            ("Gadovist (gadobutrol)", "gadobutrol"),
            ("DOTAREM 0.5 mmol/ml", "gadoterate"),
            ("saline", None),
            (None, None),
        ],
    )
    def test_agent_from_text(self, text: str | None, agent: str | None) -> None:
        assert agent_from_text(text) == agent
