"""`gadsynth bench --only inference`: a tiny exported model on a small volume, ONNX Runtime beside PyTorch eager."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from operators.model_manifest import ModelManifestError, load_manifest
from tests.conftest import REPO
from training.bench.cli import bench
from training.bench.inference import (
    TARGET_S,
    bench_inference,
    network_from_folder,
    pick_model,
    recorded_network_config,
    synthetic_inputs,
)

torch = pytest.importorskip("torch")

from training.export import differential_manifest_fields, write_model_folder  # noqa: E402
from training.networks import DifferentialUNet, DifferentialUNetConfig  # noqa: E402

TINY = DifferentialUNetConfig(base_width=4, embedding_dim=16)
SHAPE = (16, 24, 20)  # not a multiple of the divisor 8: the pipeline pads, the eager row must too
BASELINE = "ce-baseline-linear"
DEFAULT = "ce-lowdose-v1"  # the tiny network takes the default model's name, so the default choice picks it


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with the shipped linear baseline and a tiny untrained differential U-Net as ``ce-lowdose-v1``."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(REPO / "models" / BASELINE, root / BASELINE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        network = DifferentialUNet(TINY).eval()
        write_model_folder(
            network, root / DEFAULT, differential_manifest_fields(name=DEFAULT, version="0.0.1", gamma=1.0)
        )
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="module")
def differential(models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the bench on the default model (both rows, each in its own process)."""
    return bench_inference(
        tmp_path_factory.mktemp("work"), models_dir=models, shape=SHAPE, repeats=2, reference=models / DEFAULT
    )


def _check_row(row: Any, repeats: int) -> None:
    assert isinstance(row, dict)
    runs = row["runs_s"]
    assert len(runs) == len(row["cpu_s"]) == repeats
    assert all(isinstance(r, float) and r >= 0 for r in runs)
    assert row["best_s"] == min(runs)
    assert min(runs) <= row["median_s"] <= max(runs)
    assert row["warmup_s"] >= 0
    assert row["peak_rss_mib"] >= row["peak_rss_after_warmup_mib"] > 0
    assert row["output_finite"] is True


class TestDifferentialModel:
    """The default model is a network: an ONNX Runtime row through the pipeline's infer, and an eager row."""

    def test_default_model_is_picked(self, differential: dict[str, Any]) -> None:
        assert differential["model"] == DEFAULT
        assert differential["chosen"].startswith("default")
        assert differential["network"].startswith("differential_unet base_width=4")
        assert differential["shape"] == list(SHAPE)
        assert differential["channels"] == 3

    def test_onnxruntime_row(self, differential: dict[str, Any]) -> None:
        row = differential["onnxruntime"]
        _check_row(row, 2)
        assert row["providers"] == ["CPUExecutionProvider"]
        assert row["patches"] == 1  # no patch size in the manifest: the whole volume in one call
        assert row["tta"] is False and differential["tta"] is False
        assert row["session_s"] >= 0

    def test_eager_row_uses_the_exported_weights(self, differential: dict[str, Any]) -> None:
        row = differential["pytorch_eager"]
        _check_row(row, 2)
        assert row["weights"] == "model.onnx"
        assert row["parameters"] == sum(p.numel() for p in DifferentialUNet(TINY).parameters())
        # the same weights on the same input: the mean outputs agree to float32 precision
        assert row["output_mean"] == pytest.approx(differential["onnxruntime"]["output_mean"], rel=1e-4, abs=1e-6)

    def test_ratio_and_target(self, differential: dict[str, Any]) -> None:
        ort_best, eager_best = differential["onnxruntime"]["best_s"], differential["pytorch_eager"]["best_s"]
        assert differential["ort_over_eager"] == pytest.approx(ort_best / eager_best, rel=1e-2, abs=1e-3)
        assert differential["target_s"] == TARGET_S
        assert differential["pass"] == (ort_best <= TARGET_S)
        assert differential["pass_median"] == (differential["onnxruntime"]["median_s"] <= TARGET_S)

    def test_brain_box_and_reference_row(self, differential: dict[str, Any]) -> None:
        """The model runs on the brain's box as the pipeline does; the reference on the whole volume as released."""
        assert differential["brain_crop"] is True
        region = differential["onnxruntime"]["region"]
        assert region["volume_shape_zyx"] == list(SHAPE)
        reference = differential["reference"]
        _check_row(reference, 2)
        assert (reference["model"], reference["brain_crop"], reference["region"]) == (DEFAULT, False, None)
        ratio = differential["onnxruntime"]["median_s"] / reference["median_s"]
        assert differential["median_over_reference"] == pytest.approx(ratio, rel=1e-2, abs=1e-3)

    def test_json_ready(self, differential: dict[str, Any]) -> None:
        assert json.loads(json.dumps(differential)) == differential


class TestNetworkFromFolder:
    """The eager row's network: the recorded config, the weights read back from model.onnx."""

    def test_weights_match_the_exported_network(self, models: Path) -> None:
        network, weights = network_from_folder(models / DEFAULT)
        torch.manual_seed(0)
        original = DifferentialUNet(TINY)
        assert weights == "model.onnx"
        for key, value in original.state_dict().items():
            assert torch.equal(network.state_dict()[key], value), key

    def test_random_init_when_weights_are_not_recoverable(self, models: Path, tmp_path: Path) -> None:
        folder = tmp_path / "no-weights"
        folder.mkdir()
        shutil.copy(models / DEFAULT / "training.json", folder / "training.json")
        network, weights = network_from_folder(folder)
        assert isinstance(network, DifferentialUNet)
        assert weights.startswith("random init")

    def test_linear_baseline_records_no_network(self, models: Path) -> None:
        assert recorded_network_config(models / BASELINE) is None
        with pytest.raises(ValueError, match="records no network config"):
            network_from_folder(models / BASELINE)


class TestInputs:
    def test_channels_and_condition_follow_the_manifest(self, models: Path) -> None:
        manifest = load_manifest(models, BASELINE)
        inputs, condition, brain = synthetic_inputs(manifest, SHAPE)
        assert inputs.shape == (3, *SHAPE) and inputs.dtype == np.float32
        assert np.array_equal(inputs[manifest.channel_names.index("brain_mask")], brain)
        assert 0 < brain.mean() < 1
        assert condition is not None and condition.tolist() == pytest.approx([0.25])  # features: dose only

    def test_bad_shape(self, models: Path) -> None:
        with pytest.raises(ValueError, match="three positive sizes"):
            synthetic_inputs(load_manifest(models, BASELINE), (16, 0, 16))


class TestFailures:
    def test_repeats(self, models: Path, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="repeats must be >= 1"):
            bench_inference(tmp_path, models_dir=models, repeats=0)

    def test_threads(self, models: Path, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="threads must be >= 0"):
            bench_inference(tmp_path, models_dir=models, threads=-1)

    def test_unknown_model(self, models: Path) -> None:
        with pytest.raises(ModelManifestError, match="No model 'nope'"):
            pick_model(models, "nope")

    def test_no_default_model(self, tmp_path: Path) -> None:
        with pytest.raises(ModelManifestError, match="No default model"):
            pick_model(tmp_path)


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    """`bench` on a Typer app of its own (as `app.cli._register` adds it to `gadsynth`)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """GadSynth (test)."""

    app.command("bench")(bench)
    return app


class TestCli:
    """`gadsynth bench --only inference` writes inference.json and the summary table."""

    def test_linear_baseline(self, cli: typer.Typer, models: Path, tmp_path: Path) -> None:
        out = tmp_path / "results"
        arguments = ["bench", "--only", "inference", "--out", str(out), "--models-dir", str(models)]
        arguments += ["--model", BASELINE, "--inference-shape", ",".join(map(str, SHAPE)), "--inference-repeats", "1"]
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 0, result.output
        data = json.loads((out / "inference.json").read_text())
        assert data["model"] == BASELINE and data["chosen"] == "named (--model)"
        assert data["network"] == "none (ONNX graph)"
        assert data["pytorch_eager"].startswith("n/a") and data["ort_over_eager"] == "n/a"
        _check_row(data["onnxruntime"], 1)
        assert json.loads((out / "bench.json").read_text())["inference"] == data
        table = (out / "bench.md").read_text()
        assert "| inference | onnxruntime.best_s |" in table and "| inference | pytorch_eager | n/a" in table

    def test_bad_shape(self, cli: typer.Typer, tmp_path: Path) -> None:
        result = CliRunner().invoke(cli, ["bench", "--only", "inference", "--inference-shape", "16,16"])
        assert result.exit_code == 2
        assert "three positive sizes" in result.output
