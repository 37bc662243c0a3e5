"""Header values the model is conditioned on: plausible ones are used, nonsense is refused or replaced, loudly."""

from __future__ import annotations

from typing import Any

import pytest

from operators.contrast import ContrastValueError, contrast_info, field_strength, header_dose, header_dose_problem
from operators.roles import Role

#: A plausible low-dose header: 2 ml of gadobutrol (1 mmol/ml) for 80 kg, 3 T: 0.25 x the standard dose.
GOOD: dict[str, Any] = {
    "ContrastBolusAgent": "Gadovist (gadobutrol)",
    "ContrastBolusVolume": 2.0,
    "PatientWeight": 80.0,
    "MagneticFieldStrength": 3.0,
}

NONSENSE = [
    ("volume NaN", {"ContrastBolusVolume": "nan"}, r"ContrastBolusVolume 'nan' is not a volume in ml"),
    ("volume inf", {"ContrastBolusVolume": "inf"}, r"ContrastBolusVolume 'inf'"),
    ("volume negative", {"ContrastBolusVolume": -5.0}, r"ContrastBolusVolume '-5.0'"),
    ("volume 1e6", {"ContrastBolusVolume": 1e6}, r"ContrastBolusVolume '1000000.0'"),
    ("weight 0.001", {"PatientWeight": 0.001}, r"PatientWeight '0.001' is not a weight in kg"),
    ("weight NaN", {"PatientWeight": "nan"}, r"PatientWeight 'nan'"),
    ("dose 3.5x", {"ContrastBolusVolume": 28.0}, r"the dose they give \(3\.5 x standard"),
]


class TestDose:
    def test_plausible_header_dose(self) -> None:
        dose, agent = header_dose(GOOD)
        assert agent == "gadobutrol" and dose == pytest.approx(0.25)
        assert header_dose_problem(GOOD) is None

    def test_zero_weight_means_unknown(self) -> None:
        assert header_dose_problem({**GOOD, "PatientWeight": 0.0}) is None
        assert header_dose({**GOOD, "PatientWeight": 0.0})[0] is None

    @pytest.mark.parametrize(("name", "change", "problem"), NONSENSE, ids=[n[0] for n in NONSENSE])
    def test_nonsense_low_dose_is_refused(self, name: str, change: dict[str, Any], problem: str) -> None:
        features = {**GOOD, **change}
        assert header_dose(features)[0] is None
        with pytest.raises(ContrastValueError, match=problem) as info:
            contrast_info(features, Role.T1_LOW_DOSE)
        assert info.value.attribute == "ContrastBolusVolume/PatientWeight"
        assert info.value.expected and info.value.found

    @pytest.mark.parametrize(("name", "change", "problem"), NONSENSE[:2], ids=[n[0] for n in NONSENSE[:2]])
    def test_the_request_replaces_nonsense_with_a_warning(
        self, name: str, change: dict[str, Any], problem: str
    ) -> None:
        warnings: list[str] = []
        info, _ = contrast_info({**GOOD, **change}, Role.T1_LOW_DOSE, requested_dose=0.1, warnings=warnings)
        assert (info.dose, info.source) == (0.1, "request")
        assert len(warnings) == 1 and "not used" in warnings[0]

    def test_nonsense_on_the_standard_dose_is_a_warning(self) -> None:
        warnings: list[str] = []
        info, _ = contrast_info({**GOOD, "ContrastBolusVolume": "nan"}, Role.T1_STANDARD_DOSE, warnings=warnings)
        assert info.dose is None or info.source == "rules"
        assert warnings

    def test_default_dose_from_the_rules_is_a_warning(self) -> None:
        warnings: list[str] = []
        rules = {"default_dose": {"t1_low_dose": 0.25}}
        info, _ = contrast_info({"MagneticFieldStrength": 3.0}, Role.T1_LOW_DOSE, rules=rules, warnings=warnings)
        assert (info.dose, info.source) == (0.25, "rules")
        assert "default of 0.25" in warnings[0]


class TestFieldStrength:
    @pytest.mark.parametrize(("value", "tesla"), [(3.0, 3.0), (1.5, 1.5), (15000, 1.5), ("7", 7.0)])
    def test_plausible(self, value: Any, tesla: float) -> None:
        assert field_strength({"MagneticFieldStrength": value}) == (pytest.approx(tesla), None)

    @pytest.mark.parametrize("value", [-3.0, 1e9, "nan", "strong", 0.01])
    def test_nonsense_is_refused_for_the_low_dose(self, value: Any) -> None:
        assert field_strength({"MagneticFieldStrength": value})[0] is None
        with pytest.raises(ContrastValueError, match=r"MagneticFieldStrength .* is not a field strength") as info:
            contrast_info({**GOOD, "MagneticFieldStrength": value}, Role.T1_LOW_DOSE)
        assert info.value.attribute == "MagneticFieldStrength"

    def test_request_replaces_nonsense(self) -> None:
        warnings: list[str] = []
        info, _ = contrast_info(
            {**GOOD, "MagneticFieldStrength": -3.0}, Role.T1_LOW_DOSE, requested_field_strength_t=1.5, warnings=warnings
        )
        assert info.field_strength_t == 1.5 and warnings
