"""`gadsynth bench --only train`: one training step of each shipped network in both memory layouts (tiny patches)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from tests.conftest import REPO
from training.bench.train import LAYOUTS, NETWORKS, bench_train
from training.networks import DifferentialUNetConfig


def test_times_every_shipped_network_in_both_layouts() -> None:
    results = bench_train(REPO / "models", patch=16, batch=1, repeats=1, threads=1)
    assert results["patch"] == 16 and results["threads"] == 1
    for name in NETWORKS:
        row = results[name]
        assert all(row[f"{layout}_s"] > 0 for layout in LAYOUTS)
        assert row["speedup"] > 0
        # the layouts compute the same thing: the first loss agrees to rounding
        assert row["first_loss_rel_difference"] < 1e-4


def test_networks_missing_from_the_models_folder_are_skipped(tmp_path: Path) -> None:
    assert set(bench_train(tmp_path, patch=16, batch=1, repeats=1, threads=1)) == {
        "patch",
        "batch",
        "repeats",
        "threads",
        "torch",
    }


def test_cli_section(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "ce-lowdose-v1").mkdir(parents=True)
    tiny = DifferentialUNetConfig(base_width=4, embedding_dim=16)
    (models / "ce-lowdose-v1" / "training.json").write_text(json.dumps({"network": tiny.to_dict()}))
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--only",
            "train",
            "--train-patch",
            "16",
            "--out",
            str(tmp_path / "out"),
            "--models-dir",
            str(models),
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "out" / "bench.json").read_text())["train"]
    assert set(written["ce-lowdose-v1"]) == {"contiguous_s", "channels_last_s", "speedup", "first_loss_rel_difference"}
