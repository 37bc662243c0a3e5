"""Model manifests: every shipped model loads and verifies; broken folders fail with clear messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from operators.model_manifest import (
    ModelIntegrityError,
    ModelManifest,
    ModelManifestError,
    NormalizationKind,
    load_manifest,
)
from operators.roles import Role
from tests.conftest import REPO

MODELS = REPO / "models"
BASELINE = MODELS / "ce-baseline-linear"


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """A writable copy of the baseline model folder."""
    folder = tmp_path / "ce-baseline-linear"
    shutil.copytree(BASELINE, folder)
    return folder


def edit(folder: Path, **changes: Any) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        target = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            target = target[key]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    path.write_text(json.dumps(data))


class TestShippedModels:
    @pytest.mark.parametrize("folder", sorted(p.parent for p in MODELS.glob("*/manifest.json")), ids=lambda p: p.name)
    def test_every_model_folder_loads_and_verifies(self, folder: Path) -> None:
        manifest = ModelManifest.load(folder)
        assert manifest.name == folder.name
        assert manifest.model_path.is_file()
        assert (folder / manifest.model_card).is_file()
        assert "not for diagnosis" in (folder / manifest.model_card).read_text().lower()

    def test_baseline_contract(self) -> None:
        manifest = load_manifest(MODELS, "ce-baseline-linear")
        assert manifest.required_roles == [Role.T1_PRE, Role.T1_LOW_DOSE]
        assert manifest.channel_names == ["x_pc", "x_ld", "brain_mask"]
        assert manifest.normalization.kind == NormalizationKind.DIFFERENTIAL
        assert manifest.condition is not None and manifest.condition.features == ["dose"]

    def test_round_trip(self, tmp_path: Path) -> None:
        manifest = ModelManifest.load(BASELINE)
        (tmp_path / "manifest.json").write_text(manifest.to_json())
        again = ModelManifest.load(tmp_path / "manifest.json", verify=False)
        assert again.model_dump() == manifest.model_dump()
        assert again.folder == tmp_path


class TestErrors:
    def test_no_such_model(self) -> None:
        with pytest.raises(ModelManifestError, match=r"No model 'ce-nothing' in .*models\. Available: \[.*baseline"):
            load_manifest(MODELS, "ce-nothing")

    def test_missing_manifest(self, tmp_path: Path) -> None:
        with pytest.raises(ModelManifestError, match=r"No model manifest at .*manifest\.json"):
            ModelManifest.load(tmp_path)

    def test_not_json(self, model_copy: Path) -> None:
        (model_copy / "manifest.json").write_text("{name: ")
        with pytest.raises(ModelManifestError, match=r"manifest\.json is not valid JSON"):
            ModelManifest.load(model_copy)

    def test_missing_model_file(self, model_copy: Path) -> None:
        (model_copy / "model.onnx").unlink()
        with pytest.raises(ModelManifestError, match=r"model file .*model\.onnx named in .*manifest\.json does not"):
            ModelManifest.load(model_copy)

    def test_sha_mismatch(self, model_copy: Path) -> None:
        with (model_copy / "model.onnx").open("ab") as handle:
            handle.write(b"\0")
        with pytest.raises(ModelIntegrityError, match=r"sha256 of .*model\.onnx is [0-9a-f]{64}, expected a7"):
            ModelManifest.load(model_copy)
        ModelManifest.load(model_copy, verify=False)  # still readable when asked not to verify

    def test_unknown_normalization(self, model_copy: Path) -> None:
        edit(model_copy, normalization__kind="histogram")
        with pytest.raises(
            ModelManifestError,
            match=r"normalization\.kind: Input should be 'differential', 'zscore', 'minmax' or 'none'",
        ):
            ModelManifest.load(model_copy)

    def test_unknown_field(self, model_copy: Path) -> None:
        edit(model_copy, normalisation={"kind": "zscore"})
        with pytest.raises(ModelManifestError, match=r"normalisation: Extra inputs are not permitted"):
            ModelManifest.load(model_copy)

    def test_bad_sha_format(self, model_copy: Path) -> None:
        edit(model_copy, sha256="ABC")
        with pytest.raises(ModelManifestError, match=r"sha256: String should match pattern"):
            ModelManifest.load(model_copy)

    def test_channel_not_produced_by_the_normalization(self, model_copy: Path) -> None:
        edit(model_copy, inputs=[{"name": "x_pc"}, {"name": "flair"}])
        with pytest.raises(ModelManifestError, match=r"input channels \['flair'\] are not produced by normalization"):
            ModelManifest.load(model_copy)

    def test_direct_channel_needs_its_role(self, model_copy: Path) -> None:
        edit(
            model_copy,
            normalization={"kind": "zscore"},
            inputs=[{"name": "t1_pre"}, {"name": "flair"}],
            output={"tensor": "y_hat", "meaning": "image"},
            mode="zero_dose_direct",
            required_roles=["t1_pre"],
        )
        with pytest.raises(ModelManifestError, match=r"input channels \['flair'\] are roles missing from required"):
            ModelManifest.load(model_copy)

    def test_condition_and_tensor_together(self, model_copy: Path) -> None:
        edit(model_copy, condition_tensor=None)
        with pytest.raises(ModelManifestError, match=r"condition and condition_tensor must be given together"):
            ModelManifest.load(model_copy)

    def test_differential_needs_low_dose(self, model_copy: Path) -> None:
        edit(model_copy, required_roles=["t1_pre"])
        with pytest.raises(ModelManifestError, match=r"a differential model requires the t1_low_dose role"):
            ModelManifest.load(model_copy)

    def test_t1_pre_is_always_required(self, model_copy: Path) -> None:
        edit(model_copy, required_roles=["t1_low_dose"])
        with pytest.raises(ModelManifestError, match=r"required_roles: Value error, required_roles must include t1"):
            ModelManifest.load(model_copy)

    def test_patch_size_and_divisor(self, model_copy: Path) -> None:
        edit(model_copy, patch_size=[96, 96, 90], spatial_divisor=16)
        with pytest.raises(ModelManifestError, match=r"patch_size \(96, 96, 90\) must be a multiple of spatial_div"):
            ModelManifest.load(model_copy)

    def test_in_memory_manifest_has_no_folder(self) -> None:
        manifest = ModelManifest.model_validate(json.loads((BASELINE / "manifest.json").read_text()))
        with pytest.raises(ModelManifestError, match=r"manifest of 'ce-baseline-linear' was not loaded from a folder"):
            _ = manifest.model_path
