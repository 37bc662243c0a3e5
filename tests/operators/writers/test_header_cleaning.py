"""Source headers with invalid values: nothing invalid is copied, and the outputs say what was left out."""

from __future__ import annotations

import pytest
from pydicom import Dataset, config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement

from operators.writers.header_cleaning import clean_header, output_character_set


def _raw(**values: str) -> Dataset:
    """A header holding values as a broken scanner writes them (no validation on the way in)."""
    ds = Dataset()
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)
    return ds


class TestCharacterSet:
    @pytest.mark.parametrize(
        ("value", "written"),
        [
            ("ISO_IR 192", "ISO_IR 192"),
            ("GB18030", "GB18030"),
            (["ISO 2022 IR 13", "ISO 2022 IR 87"], ["ISO 2022 IR 13", "ISO 2022 IR 87"]),
            (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
            (["", "ISO 2022 IR 149"], "ISO_IR 192"),  # valid, but highdicom cannot write Korean ISO 2022
        ],
    )
    def test_valid_sets_are_kept_or_spelled_out(self, value: object, written: object) -> None:
        assert output_character_set(value) == (written, None)  # type: ignore[arg-type]

    def test_unknown_set_becomes_utf8_with_a_warning(self) -> None:
        charset, note = output_character_set("ISO_IR 999")
        assert charset == "ISO_IR 192" and note is not None and "not a known character set" in note


class TestInvalidValues:
    def test_invalid_values_are_blanked_in_a_copy_only(self) -> None:
        source = _raw(PatientSex="0000", StudyDescription="x" * 500, SeriesDescription="fine")
        cleaned, notes = clean_header(source)
        assert cleaned.PatientSex is None and cleaned.StudyDescription is None
        assert cleaned.SeriesDescription == "fine"
        assert source.PatientSex == "0000"  # the source header stays as it was read
        assert notes == [
            "invalid values in the source header were left empty in the outputs: PatientSex, StudyDescription"
        ]

    def test_notes_never_carry_values(self) -> None:
        _, notes = clean_header(_raw(PatientSex="SECRET"))
        assert "SECRET" not in " ".join(notes)
