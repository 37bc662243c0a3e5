"""PhantomOptions and lesion specs: valid input accepted, every bad value rejected with a clear message."""

from __future__ import annotations

import pytest

from training.phantom import LesionSpec, PhantomOptions, parse_lesion_spec


class TestValid:
    def test_defaults(self) -> None:
        options = PhantomOptions()
        assert options.size == "full" and options.field_strength == 3.0 and len(options.roles) == 6
        assert options.canonical_agent == "gadobutrol"

    def test_brand_name_agent(self) -> None:
        assert PhantomOptions(agent="Dotarem").canonical_agent == "gadoterate"

    def test_to_dict_is_json_ready(self) -> None:
        data = PhantomOptions(seed=2, lesions=(LesionSpec("glioblastoma", 30.0),)).to_dict()
        assert data["lesions"] == [{"kind": "glioblastoma", "diameter_mm": 30.0}]
        assert data["roles"][0] == "t1_pre"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("metastasis", LesionSpec("metastasis")), (" glioblastoma:35 ", LesionSpec("glioblastoma", 35.0))],
    )
    def test_parse_lesion(self, text: str, expected: LesionSpec) -> None:
        assert parse_lesion_spec(text) == expected


class TestInvalid:
    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"size": "medium"}, r"size must be one of \['small', 'full'\]. Found 'medium'"),
            ({"vendor": "canon"}, r"vendor must be one of \['siemens', 'ge', 'philips'\]"),
            ({"field_strength": 7.0}, "field_strength must be 1.5 or 3.0 tesla. Found 7.0"),
            ({"dose": 1.2}, r"dose \(low dose relative to standard\) must be in \(0, 1\). Found 1.2"),
            ({"roles": ("t1_pre", "dwi")}, r"roles must be a non-empty subset of .* Found \['t1_pre', 'dwi'\]"),
            ({"roles": ("t2", "t2")}, "roles must not repeat"),
            ({"resolution_mm": 0.1}, "resolution_mm must be within 0.5 to 8 mm. Found 0.1"),
            ({"noise": -0.1}, "noise must be within 0 to 0.5"),
            ({"lesion_count": 11}, "lesion_count must be within 0 to 10. Found 11"),
            ({"lesion_kinds": ("cyst",)}, r"lesion_kinds must be a non-empty subset .* Found \['cyst'\]"),
            ({"t1_orientation": "coronal"}, "t1_orientation must be one of"),
            ({"transfer_syntax": "jpeg-lossy"}, "transfer_syntax must be one of"),
            ({"seed": -1}, "seed must be >= 0"),
        ],
    )
    def test_rejected(self, changes: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            PhantomOptions(**changes)  # type: ignore[arg-type]

    def test_unknown_agent(self) -> None:
        with pytest.raises(KeyError, match="Unknown contrast agent 'gadolinium'"):
            PhantomOptions(agent="gadolinium")

    def test_bad_lesion_kind(self) -> None:
        with pytest.raises(ValueError, match="Unknown lesion kind 'cyst'"):
            parse_lesion_spec("cyst:10")

    def test_bad_lesion_diameter(self) -> None:
        with pytest.raises(ValueError, match=r"the diameter after ':' must be a number of mm\. Found 'big'"):
            parse_lesion_spec("metastasis:big")
        with pytest.raises(ValueError, match=r"Lesion diameter must be within 1 to 80 mm\. Found 0\.5 mm"):
            LesionSpec("metastasis", 0.5)
