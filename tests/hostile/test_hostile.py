"""The hostile-input suite in `make test`: one variant of each class, through the real command line.

The whole suite (300+ variants) runs with `make hostile`; this keeps every class covered on every commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.hostile.run import run_variant
from tests.hostile.variants import Variant, all_variants

#: One variant per class: the first refusal of the class when it has one (the harder promise), else the first.
_BY_CLASS: dict[str, Variant] = {}
for _variant in all_variants():
    chosen = _BY_CLASS.get(_variant.klass)
    if chosen is None or (chosen.expect != "refuse" and _variant.expect == "refuse"):
        _BY_CLASS[_variant.klass] = _variant
SAMPLE = sorted(_BY_CLASS.values(), key=lambda v: v.klass)


@pytest.fixture(scope="session")
def bases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile-bases")


@pytest.mark.parametrize("variant", SAMPLE, ids=[v.name for v in SAMPLE])
def test_one_variant_per_class(variant: Variant, bases: Path, tmp_path: Path) -> None:
    require_tool("dciodvfy")
    outcome = run_variant(variant, bases, tmp_path / "work")
    assert outcome.passed, f"{variant.name} (expect {variant.expect}): exit {outcome.exit_code}: {outcome.reasons}"
