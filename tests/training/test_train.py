"""Tests of `gadsynth train`: a tiny model trained a few steps on phantoms, checkpointed, resumed, exported."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.cli import cli
from operators.inference import get_session, predict_volume
from operators.model_manifest import ModelMode, OutputScale, load_manifest
from training.datasets import load_sample
from training.networks import DifferentialUNet, DifferentialUNetConfig
from training.train import TrainConfig, load_checkpoint
from training.train_config import DIRECT_TARGET_MAX

STEPS = 24
HALF = STEPS // 2


def _args(root: Path, name: str, *extra: str) -> list[str]:
    """A tiny differential run: 4 channels, patch 32, two phantom subjects, one held-out validation subject."""
    return [
        "train",
        "--out",
        str(root / "models" / name),
        "--steps",
        str(STEPS),
        "--patch",
        "32",
        "--batch",
        "2",
        "--data",
        "phantom:0-1",
        "--val",
        "phantom:900",
        "--width",
        "4",
        "--embedding-dim",
        "16",
        "--lr",
        "2e-3",
        "--lr-min",
        "2e-4",
        "--margin",
        "4",
        "--checkpoint-every",
        str(HALF),
        "--val-every",
        str(HALF),
        "--working-set",
        "2",
        "--threads",
        "1",
        "--work",
        str(root / "work" / name),
        "--cache",
        str(root / "cache"),
        "--no-progress",
        *extra,
    ]


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`gadsynth train` once through, then resumed from its half-way checkpoint into another work folder."""
    root = tmp_path_factory.mktemp("train")
    code, output = _invoke(_args(root, "ce-tiny"))
    assert code == 0, output
    history = json.loads((root / "work" / "ce-tiny" / "history.json").read_text())
    halfway = root / "work" / "ce-tiny" / "checkpoints" / f"step_{HALF:07d}.pt"
    code, resumed_output = _invoke(_args(root, "ce-tiny-resumed", "--resume", str(halfway)))
    assert code == 0, resumed_output
    resumed = json.loads((root / "work" / "ce-tiny-resumed" / "history.json").read_text())
    return {"root": root, "output": output, "history": history, "resumed": resumed, "halfway": halfway}


class TestTrainCommand:
    def test_loss_decreases(self, run: dict[str, object]) -> None:
        history = run["history"]
        assert isinstance(history, dict)
        losses = [entry["loss"] for entry in history["train"]]
        assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
        validation = history["val"]
        assert [entry["step"] for entry in validation] == [0, HALF, STEPS]
        # the held-out validation patches are fixed: their loss falls, and below the loss of predicting no
        # enhancement at all (which a network whose ReLU output died would score exactly)
        assert validation[-1]["loss"] < validation[1]["loss"] < validation[0]["loss"]
        assert validation[-1]["loss"] < history["val_baseline"]
        lrs = [entry["lr"] for entry in history["train"]]
        assert lrs[0] == pytest.approx(2e-3) and all(a > b for a, b in itertools.pairwise(lrs))
        assert "validation loss" in str(run["output"]) and "s/step" in str(run["output"])

    def test_checkpoints(self, run: dict[str, object]) -> None:
        root = Path(str(run["root"]))
        folder = root / "work" / "ce-tiny" / "checkpoints"
        assert sorted(p.name for p in folder.glob("*.pt")) == ["last.pt", f"step_{HALF:07d}.pt", f"step_{STEPS:07d}.pt"]
        state = load_checkpoint(folder / "last.pt")
        assert state["step"] == STEPS
        assert set(state) >= {"network", "optimizer", "scheduler", "torch_rng", "identity", "history", "gamma_ratios"}
        assert state["scheduler"]["last_epoch"] == STEPS
        assert DifferentialUNetConfig.from_dict(state["network_config"]).base_width == 4
        assert len(state["gamma_ratios"]) == 2  # both training subjects
        network = DifferentialUNet(DifferentialUNetConfig.from_dict(state["network_config"]))
        network.load_state_dict(state["network"])

    def test_resume_is_bit_identical(self, run: dict[str, object]) -> None:
        history, resumed = run["history"], run["resumed"]
        assert isinstance(history, dict) and isinstance(resumed, dict)
        assert [e["step"] for e in resumed["train"]] == list(range(1, STEPS + 1))
        assert resumed["train"] == history["train"]  # the resumed steps give exactly the same losses
        assert resumed["val"] == history["val"]
        assert resumed["timing"]["steps_timed"] == STEPS  # timing carries over the resume: the whole run's s/step
        root = Path(str(run["root"]))
        a = load_checkpoint(root / "work" / "ce-tiny" / "checkpoints" / "last.pt")["network"]
        b = load_checkpoint(root / "work" / "ce-tiny-resumed" / "checkpoints" / "last.pt")["network"]
        assert all(torch.equal(a[k], b[k]) for k in a)

    def test_exported_model_folder(self, run: dict[str, object]) -> None:
        root = Path(str(run["root"]))
        manifest = load_manifest(root / "models", "ce-tiny")
        assert manifest.mode == ModelMode.LOW_DOSE_DIFFERENTIAL
        assert manifest.output.scale == OutputScale.LOCAL_STD
        state = load_checkpoint(root / "work" / "ce-tiny" / "checkpoints" / "last.pt")
        ratios = list(state["gamma_ratios"].values())
        assert manifest.output.gamma == pytest.approx(sum(ratios) / len(ratios))
        record = json.loads((manifest.folder / "training.json").read_text())
        assert record["training"]["steps"] == STEPS and record["training"]["data_specs"] == "phantom:0-1"
        assert record["onnx_check"]["max_abs_difference"] <= 1e-4
        card = (manifest.folder / "MODEL_CARD.md").read_text()
        assert "Synthetic phantoms only" in card and "not for diagnosis" in card.lower()
        # the exported model runs in the pipeline's inference code on a whole training sample
        sample = load_sample(next((root / "cache").glob("phantom-000000.*.npz")))
        assert sample.condition is not None
        output, _ = predict_volume(get_session(manifest), manifest, sample.image, sample.condition)
        network = DifferentialUNet(DifferentialUNetConfig.from_dict(record["network"]))
        network.load_state_dict(state["network"])
        with torch.no_grad():
            expected = network.eval()(torch.from_numpy(sample.image[None]), torch.from_numpy(sample.condition[None]))
        assert output.shape == (1, *sample.shape)
        assert float(np.abs(output - expected[0].numpy()).max()) <= 1e-4

    def test_zero_dose_model(self, tmp_path: Path) -> None:
        args = [
            "train",
            "--model",
            "zerodose",
            "--out",
            str(tmp_path / "models" / "ce-zd-tiny"),
            "--steps",
            "2",
            "--patch",
            "16",
            "--batch",
            "1",
            "--data",
            "phantom:0",
            "--val",
            "none",
            "--width",
            "2",
            "--depth",
            "2",
            "--margin",
            "2",
            "--work",
            str(tmp_path / "work"),
            "--cache",
            str(tmp_path / "cache"),
            "--no-progress",
        ]
        code, output = _invoke(args)
        assert code == 0, output
        manifest = load_manifest(tmp_path / "models", "ce-zd-tiny")
        assert manifest.mode == ModelMode.ZERO_DOSE_DIRECT
        assert manifest.channel_names == ["t1_pre", "t2", "flair"]
        sample = load_sample(next((tmp_path / "cache").glob("phantom-000000.*.npz")))
        assert sample.image.shape[0] == 3 and sample.condition is None
        assert float(sample.image.max()) <= 1.0  # inputs in t1_pre's [0, 1]
        # the target is x_SD in t1_pre's scale, not clipped at 1: enhancement is brighter than the pre-contrast
        assert manifest.normalization.target_max == DIRECT_TARGET_MAX
        assert 1.2 < float(sample.target.max()) <= DIRECT_TARGET_MAX
        record = json.loads((manifest.folder / "training.json").read_text())
        assert record["network"]["output_max"] == DIRECT_TARGET_MAX

    def test_prepare_only(self, run: dict[str, object], tmp_path: Path) -> None:
        root = Path(str(run["root"]))
        args = _args(root, "ce-prepared", "--prepare-only")
        args[args.index("--cache") + 1] = str(tmp_path / "cache")
        args[args.index("--data") + 1] = "phantom:1"
        args[args.index("--val") + 1] = "phantom:900"
        code, output = _invoke(args)
        assert code == 0 and "Prepared 2 samples" in output  # one training subject, one validation subject
        names = sorted(p.name.split(".")[0] for p in (tmp_path / "cache").glob("*.npz"))
        assert names == ["phantom-000001", "phantom-000900"]
        assert not (root / "models" / "ce-prepared").exists()
        for path in (tmp_path / "cache").glob("*.npz"):  # the same samples the training run cached
            np.testing.assert_array_equal(load_sample(path).image, load_sample(root / "cache" / path.name).image)

    def test_pack_for_another_machine(self, run: dict[str, object], tmp_path: Path) -> None:
        """--pack-to copies the run's samples as float16, compressed, under the same names."""
        root = Path(str(run["root"]))
        args = _args(root, "ce-packed", "--prepare-only", "--pack-to", str(tmp_path / "pack"))
        code, output = _invoke(args)
        assert code == 0 and "packed into" in output
        packed = sorted((tmp_path / "pack").glob("*.npz"))
        assert [p.name for p in packed] == sorted(p.name for p in (root / "cache").glob("*.npz"))
        for path in packed:
            original = load_sample(root / "cache" / path.name)
            compact = load_sample(path)
            with np.load(path) as raw:
                assert raw["image"].dtype == np.float16
            assert compact.image.dtype == np.float32  # read back as float32
            assert path.stat().st_size < 0.5 * (root / "cache" / path.name).stat().st_size
            for name in ("image", "target", "p", "focus"):
                a, b = getattr(original, name), getattr(compact, name)
                np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(a).max())))
            np.testing.assert_array_equal(compact.brain, original.brain)
            assert compact.meta == original.meta

    def test_trains_from_a_pack_without_the_preprocessing_stack(self, run: dict[str, object], tmp_path: Path) -> None:
        """`python -m training.train_cli` on a packed cache needs neither SimpleITK, pydicom, nilearn nor scipy."""
        root = Path(str(run["root"]))
        code, output = _invoke(_args(root, "ce-packed", "--prepare-only", "--pack-to", str(tmp_path / "pack")))
        assert code == 0, output
        args = _args(tmp_path, "ce-from-pack", "--device", "auto")
        args[args.index("--steps") + 1] = "2"
        args[args.index("--cache") + 1] = str(tmp_path / "pack")
        blocked = ["SimpleITK", "pydicom", "nilearn", "nibabel", "highdicom", "scipy", "holoscan", "monai"]
        program = (
            "import runpy, sys\n"
            f"for name in {blocked!r}:\n"
            "    sys.modules[name] = None  # importing it now raises ImportError\n"
            f"sys.argv = ['train_cli', *{args[1:]!r}]\n"
            "runpy.run_module('training.train_cli', run_name='__main__')\n"
        )
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Trained ce-from-pack: 2 steps" in result.stdout
        record = json.loads((tmp_path / "models" / "ce-from-pack" / "training.json").read_text())
        assert record["training"]["trained_on"].startswith("CPU")

    def test_export_from_the_final_checkpoint(self, run: dict[str, object]) -> None:
        """Resuming a finished run only exports (how a run trained elsewhere becomes a model folder here)."""
        root = Path(str(run["root"]))
        final = root / "work" / "ce-tiny" / "checkpoints" / "last.pt"
        args = _args(root, "ce-reexported", "--resume", str(final))
        code, output = _invoke(args)
        assert code == 0, output
        original = json.loads((root / "models" / "ce-tiny" / "training.json").read_text())["training"]
        again = json.loads((root / "models" / "ce-reexported" / "training.json").read_text())["training"]
        for key in ("seconds_per_step", "final_train_loss", "final_validation_loss", "gamma", "trained_on"):
            assert again[key] == original[key], key
        a = load_manifest(root / "models", "ce-tiny")
        b = load_manifest(root / "models", "ce-reexported")
        assert a.output.gamma == b.output.gamma
        session_a, session_b = get_session(a), get_session(b)
        image = np.random.default_rng(0).standard_normal((1, 3, 32, 32, 32)).astype(np.float32)
        condition = np.asarray([[0.2, 3.0, 4.5, 0.03]], dtype=np.float32)
        feeds = {a.input_tensor: image, a.condition_tensor: condition}
        np.testing.assert_allclose(session_a.run(None, feeds)[0], session_b.run(None, feeds)[0], atol=1e-6)

    @pytest.mark.parametrize("source", ["model folder", "checkpoint"])
    def test_init_from_starts_at_the_given_weights(self, run: dict[str, object], source: str) -> None:
        """--init-from with a vanishing learning rate exports the weights it started from."""
        root = Path(str(run["root"]))
        start = root / "models" / "ce-tiny" if source == "model folder" else root / "work" / "ce-tiny" / "checkpoints"
        if source == "checkpoint":
            start = start / "last.pt"
        name = f"ce-init-{source.split()[0]}"
        args = _args(root, name, "--init-from", str(start), "--val", "none", "--overwrite")
        args[args.index("--steps") + 1] = "1"
        args[args.index("--lr") + 1] = "1e-12"
        args[args.index("--lr-min") + 1] = "1e-12"
        code, output = _invoke(args)
        assert code == 0, output
        record = json.loads((root / "models" / name / "training.json").read_text())
        assert record["run"]["init_from"] == str(start)
        if source == "checkpoint":
            assert record["training"]["initialized_from"] == str(start)
        else:  # the model it started from, by name, version and sha256, and how that one was trained
            described = record["training"]["initialized_from"]
            assert described.startswith("ce-tiny 0.1.0 (sha256 ") and f"{STEPS} steps on phantom:0-1" in described
        a, b = load_manifest(root / "models", "ce-tiny"), load_manifest(root / "models", name)
        image = np.random.default_rng(1).standard_normal((1, 3, 32, 32, 32)).astype(np.float32)
        feeds = {a.input_tensor: image, str(a.condition_tensor): np.asarray([[0.2, 3.0, 4.5, 0.03]], dtype=np.float32)}
        np.testing.assert_allclose(get_session(b).run(None, feeds)[0], get_session(a).run(None, feeds)[0], atol=1e-5)

    def test_init_from_another_network_is_refused(self, run: dict[str, object]) -> None:
        root = Path(str(run["root"]))
        # a narrower network (a wider differential one starts from it: training.networks.widen)
        args = _args(root, "ce-init-narrow", "--init-from", str(root / "models" / "ce-tiny"), "--val", "none")
        args[args.index("--width") + 1] = "3"
        code, output = _invoke(args)
        assert code == 2 and "its network is" in output and "base_width" in output


@pytest.fixture(scope="module")
def contiguous(run: dict[str, object]) -> dict[str, object]:
    """The tiny run again in the contiguous layout (the layout of every run before the option)."""
    root = Path(str(run["root"]))
    code, output = _invoke(_args(root, "ce-contiguous", "--memory-format", "contiguous"))
    assert code == 0, output
    history = json.loads((root / "work" / "ce-contiguous" / "history.json").read_text())
    return {"root": root, "history": history}


class TestMemoryFormat:
    """The layout of the activations (channels_last: oneDNN's fast 3-D kernels on a CPU) changes rounding, not the
    run; a resumed run keeps the layout its checkpoint was made in, so it stays bit-identical."""

    def test_cpu_runs_train_channels_last_by_default(self, run: dict[str, object]) -> None:
        root = Path(str(run["root"]))
        assert load_checkpoint(root / "work" / "ce-tiny" / "checkpoints" / "last.pt")["memory_format"] == (
            "channels_last"
        )
        record = json.loads((root / "models" / "ce-tiny" / "training.json").read_text())
        assert record["training"]["trained_on"].endswith(", channels_last")
        assert record["run"]["memory_format"] == "auto"

    def test_layouts_agree(self, run: dict[str, object], contiguous: dict[str, object]) -> None:
        a, b = run["history"], contiguous["history"]
        assert isinstance(a, dict) and isinstance(b, dict)
        first = [e["loss"] for e in a["train"][:4]], [e["loss"] for e in b["train"][:4]]
        assert first[0] == pytest.approx(first[1], rel=1e-4)  # same batches, same weights: rounding apart
        assert a["train"] != b["train"]  # ... but not bit for bit: another kernel
        assert a["val"][-1]["loss"] == pytest.approx(b["val"][-1]["loss"], rel=0.05)
        root = Path(str(contiguous["root"]))
        state = load_checkpoint(root / "work" / "ce-contiguous" / "checkpoints" / "last.pt")
        assert state["memory_format"] == "contiguous"
        record = json.loads((root / "models" / "ce-contiguous" / "training.json").read_text())
        assert not record["training"]["trained_on"].endswith("channels_last")

    def test_checkpoint_from_before_the_option_resumes_contiguous(
        self, contiguous: dict[str, object], tmp_path: Path
    ) -> None:
        root = Path(str(contiguous["root"]))
        halfway = load_checkpoint(root / "work" / "ce-contiguous" / "checkpoints" / f"step_{HALF:07d}.pt")
        del halfway["memory_format"]  # as every checkpoint written before the option
        old = tmp_path / "old.pt"
        torch.save(halfway, old)
        code, output = _invoke(_args(root, "ce-old-resumed", "--resume", str(old)))  # --memory-format auto
        assert code == 0, output
        resumed = json.loads((root / "work" / "ce-old-resumed" / "history.json").read_text())
        history = contiguous["history"]
        assert isinstance(history, dict)
        assert resumed["train"] == history["train"] and resumed["val"] == history["val"]

    def test_unknown_layout_is_refused(self, tmp_path: Path) -> None:
        code, output = _invoke(_args(tmp_path, "ce-bad", "--memory-format", "nchw"))
        assert code == 2 and "--memory-format must be one of" in output


class TestTrainErrors:
    def test_resume_from_another_run(self, run: dict[str, object]) -> None:
        root = Path(str(run["root"]))
        code, output = _invoke(_args(root, "ce-other", "--seed", "7", "--resume", str(run["halfway"])))
        assert code == 2
        assert "cannot resume from" in output and "seed: checkpoint 0, now 7" in output

    def test_model_folder_not_empty(self, run: dict[str, object]) -> None:
        code, output = _invoke(_args(Path(str(run["root"])), "ce-tiny"))
        assert code == 2 and "exists and is not empty; pass --overwrite" in output

    @pytest.mark.parametrize(
        ("extra", "message"),
        [
            (["--data", "phantoms:0-3"], "must be phantom:A-B"),
            (["--model", "unet"], "--model must be one of"),
            (["--loss", "hinge"], "loss kind must be one of"),
            (["--margin", "16"], "leaves nothing of a 32-voxel patch"),
            (["--val", "phantom:1"], "validation subjects are also training subjects"),
            (["--exclude-pair", "gadoterate"], "must be AGENT@FIELD"),
            (["--huber-eps", "0"], "eps > 0"),
            (["--loss-reduction", "max"], "loss reduction must be one of"),
            (["--voxel-scale", "0.02"], "--voxel-scale needs --voxel-condition"),
            (["--voxel-condition", "--voxel-scale", "-1"], "--voxel-scale needs --voxel-condition and a positive"),
            (["--model", "direct", "--condition-gain"], "--condition-gain applies to differential models"),
            (["--gain-lr-factor", "10"], "--gain-lr-factor needs --condition-gain"),
        ],
    )
    def test_bad_options(self, tmp_path: Path, extra: list[str], message: str) -> None:
        args = _args(tmp_path, "ce-bad")
        if "--data" in extra or "--val" in extra or "--margin" in extra:
            flag = extra[0]
            index = args.index(flag)
            args[index + 1] = extra[1]
        else:
            args += extra
        code, output = _invoke(args)
        assert code == 2 and message in output

    def test_huber_threshold_is_part_of_the_run(self, tmp_path: Path) -> None:
        """--huber-eps changes the loss, so the run identity (a checkpoint of another threshold does not resume)."""
        default = TrainConfig(out=tmp_path / "m")
        wider = TrainConfig(out=tmp_path / "m", huber_eps=1.0)
        assert default.loss_config.eps == 0.1 and wider.loss_config.eps == 1.0
        assert default.identity()["loss"]["eps"] == 0.1 and wider.identity()["loss"]["eps"] == 1.0

    def test_loss_reduction_is_part_of_the_run(self, tmp_path: Path) -> None:
        """--loss-reduction patch reaches the loss and the run identity; the default stays the voxel mean, so
        checkpoints of runs from before the option still resume."""
        default = TrainConfig(out=tmp_path / "m")
        balanced = TrainConfig(out=tmp_path / "m", loss_reduction="patch")
        assert default.loss_config.reduction == "mean" and balanced.loss_config.reduction == "patch"
        assert default.identity()["loss"]["reduction"] == "mean"
        assert balanced.identity()["loss"]["reduction"] == "patch"

    def test_target_max_is_for_direct_models(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="--target-max applies to direct and zero-dose models"):
            TrainConfig(model="differential", out=tmp_path / "m", target_max=2.0)
        with pytest.raises(ValueError, match="within 1 to 10"):
            TrainConfig(model="direct", out=tmp_path / "m", patch=32, target_max=0.5)
        clipped = TrainConfig(model="direct", out=tmp_path / "m", patch=32, target_max=1.0)
        assert "output_max" not in clipped.identity()["network"]  # the models before issue 12, as they were

    def test_direct_patch_must_fit_the_divisor(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="must be a multiple of 16"):
            TrainConfig(model="direct", out=tmp_path / "m", patch=40)

    def test_not_a_checkpoint(self, tmp_path: Path) -> None:
        path = tmp_path / "x.pt"
        torch.save({"hello": 1}, path)
        with pytest.raises(ValueError, match="is not a GadSynth training checkpoint"):
            load_checkpoint(path)
