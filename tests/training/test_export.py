"""Tests of ONNX export and model folders, with the CI smoke test: train a tiny model a few steps, export, load, run."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from operators.inference import get_session, predict_volume
from operators.model_manifest import ModelIntegrityError, ModelManifest, ModelMode, OutputScale, load_manifest
from tests.conftest import require_tool
from training.export import (
    OPSET,
    ExportMismatchError,
    check_onnx,
    differential_manifest_fields,
    direct_manifest_fields,
    export_onnx,
    random_check_inputs,
    write_model_folder,
)
from training.losses import LossConfig, compute_loss, contrast_target
from training.manifests import noise_scale_gamma
from training.networks import DifferentialUNet, DifferentialUNetConfig, DirectUNet, DirectUNetConfig

TINY = DifferentialUNetConfig(base_width=4, embedding_dim=16)
SIGMA = 0.03


def _phantom_like(seed: int, *, n: int = 2, size: tuple[int, int, int] = (32, 32, 32)) -> dict[str, torch.Tensor]:
    """Phantom-like differential inputs in the normalized units of METHODS.md section 2.

    A spherical brain, 2 to 3 enhancing spheres per sample (8 to 15 sigma at standard dose), Gaussian noise of
    std sigma on both subtractions, dose in [0.1, 0.33]: z_LD = d * signal + noise, z_SD = signal + noise.
    """
    g = torch.Generator().manual_seed(seed)
    grids = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in size), indexing="ij")
    centre = [(s - 1) / 2 for s in size]
    radius = 0.42 * min(size)
    brain = (sum((x - c) ** 2 for x, c in zip(grids, centre, strict=True)) <= radius**2).float()
    signal = torch.zeros(n, 1, *size)
    for i in range(n):
        for _ in range(2 + int(torch.randint(0, 2, (1,), generator=g))):
            offset = (torch.rand(3, generator=g) - 0.5) * radius
            r = 2.0 + 2.0 * float(torch.rand(1, generator=g))
            amplitude = SIGMA * (8.0 + 7.0 * float(torch.rand(1, generator=g)))
            d2 = sum((x - c - float(o)) ** 2 for x, c, o in zip(grids, centre, offset, strict=True))
            signal[i, 0] += amplitude * (d2 <= r * r).float()
    dose = 0.1 + 0.23 * torch.rand(n, generator=g)
    z_ld = dose.reshape(n, 1, 1, 1, 1) * signal + SIGMA * torch.randn(n, 1, *size, generator=g)
    z_sd = signal + SIGMA * torch.randn(n, 1, *size, generator=g)
    x_pc = brain * (0.8 + 0.05 * torch.randn(n, 1, *size, generator=g))
    s_ld = torch.full((n, 1, *size), SIGMA)
    y, p = contrast_target(z_sd, SIGMA)
    field = torch.where(torch.rand(n, generator=g) < 0.5, 1.5, 3.0)
    r1 = 3.4 + 1.2 * torch.rand(n, generator=g)
    return {
        "image": torch.cat([z_ld, x_pc + z_ld, s_ld], dim=1),
        "condition": torch.stack([dose, field, r1, torch.full((n,), SIGMA)], dim=1),
        "y": y,
        "p": p,
        "brain": brain.expand(n, 1, *size).contiguous(),
    }


def _train(network: torch.nn.Module, batch: dict[str, torch.Tensor], config: LossConfig, steps: int) -> list[float]:
    """A few Adam steps with a cosine learning rate on one fixed batch (over-fitting it).

    lr 2e-3: at 5e-3 the first steps push the output below zero everywhere and the ReLU output stops learning.
    """
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=2e-4)
    losses = []
    network.train()
    for _ in range(steps):
        optimizer.zero_grad()
        prediction = network(batch["image"], batch.get("condition"))
        loss = compute_loss(config, prediction, batch["y"], brain=batch.get("brain"), p=batch.get("p"))
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


EVALUATION = {
    "test_set": "phantom:900-919",
    "subjects": 20,
    "methods": {
        "ce-smoke": {"PSNR_L": 31.5, "MAE_CE": 0.042, "c_bar": 0.93, "dice_topk": {"1": 0.61, "5": 0.72}},
        "x_ld": {"PSNR_L": 22.25, "MAE_CE": 0.31},
        "linear": {"PSNR_L": 27.0, "MAE_CE": 0.12, "c_bar": 1.21},
    },
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMOKE_LOSS = LossConfig(margin=4)
SMOKE_STEPS = 30


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The CI smoke test's run: train a tiny differential U-Net for a few steps, then write its model folder."""
    torch.manual_seed(0)
    network = DifferentialUNet(TINY)
    batch = _phantom_like(1, size=(24, 24, 24))
    zero = compute_loss(SMOKE_LOSS, torch.zeros_like(batch["y"]), batch["y"], brain=batch["brain"], p=batch["p"])
    losses = _train(network, batch, SMOKE_LOSS, steps=SMOKE_STEPS)
    network.eval()
    check = _phantom_like(2, n=1, size=(24, 32, 40))
    models = tmp_path_factory.mktemp("models")
    evaluation_file = models.parent / "evaluation.json"
    evaluation_file.write_text(json.dumps(EVALUATION), encoding="utf-8")
    manifest = write_model_folder(
        network,
        models / "ce-smoke",
        differential_manifest_fields(name="ce-smoke", version="0.0.1", gamma=1.05),
        check_inputs=[(check["image"].numpy(), check["condition"].numpy())],
        evaluation=evaluation_file,
        training={"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1]},
    )
    return {"network": network, "losses": losses, "zero_loss": zero.item(), "manifest": manifest, "models": models}


class TestSmokeTrainAndExport:
    def test_loss_decreases(self, smoke: dict[str, object]) -> None:
        losses = smoke["losses"]
        assert isinstance(losses, list)
        assert all(math.isfinite(v) for v in losses)
        assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
        # better than predicting no contrast at all: it learned some of the lesions' signal
        assert np.mean(losses[-3:]) < smoke["zero_loss"]

    def test_folder_loads_through_the_manifest_loader(self, smoke: dict[str, object]) -> None:
        manifest = load_manifest(smoke["models"], "ce-smoke")  # type: ignore[arg-type]
        assert manifest == smoke["manifest"]
        assert manifest.mode == ModelMode.LOW_DOSE_DIFFERENTIAL
        assert manifest.channel_names == ["z_ld", "x_ld", "s_ld"]
        assert manifest.condition is not None
        assert manifest.condition.features == ["dose", "field_strength_t", "r1", "sigma"]
        assert manifest.output.scale == OutputScale.LOCAL_STD and manifest.output.nonnegative
        assert manifest.output.gamma == 1.05
        # a new low-dose model averages unenhanced tissue with x_LD and fades its contrast below the threshold
        assert manifest.postprocess.average_low_dose and manifest.postprocess.gate_below_threshold
        assert manifest.spatial_divisor == 8
        assert manifest.target is not None
        w, b = manifest.target.sigmoid_w, manifest.target.sigmoid_b
        assert 1 / (1 + math.exp(-(w * 1.0 + b))) == pytest.approx(0.01)
        assert 1 / (1 + math.exp(-(w * 4.0 + b))) == pytest.approx(0.99)

    def test_sha256_matches(self, smoke: dict[str, object]) -> None:
        manifest = smoke["manifest"]
        assert isinstance(manifest, ModelManifest)
        data = manifest.model_path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest.sha256
        sha256sum = require_tool("sha256sum")
        result = subprocess.run(
            [sha256sum, "-c", "model.onnx.sha256"], cwd=manifest.folder, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_pipeline_inference_matches_pytorch(self, smoke: dict[str, object]) -> None:
        manifest = smoke["manifest"]
        network = smoke["network"]
        assert isinstance(manifest, ModelManifest) and isinstance(network, DifferentialUNet)
        volume = _phantom_like(3, n=1, size=(24, 40, 32))
        image, condition = volume["image"][0].numpy(), volume["condition"][0].numpy()
        output, calls = predict_volume(get_session(manifest), manifest, image, condition)
        with torch.no_grad():
            expected = network(volume["image"], volume["condition"])[0].numpy()
        assert calls == 1
        assert output.shape == expected.shape == (1, 24, 40, 32)
        assert np.abs(output - expected).max() <= 1e-4

    def test_pipeline_pads_odd_sizes(self, smoke: dict[str, object]) -> None:
        manifest = smoke["manifest"]
        assert isinstance(manifest, ModelManifest)
        volume = _phantom_like(4, n=1, size=(21, 30, 27))  # not a multiple of 8: the pipeline pads to the divisor
        output, _ = predict_volume(
            get_session(manifest), manifest, volume["image"][0].numpy(), volume["condition"][0].numpy()
        )
        assert output.shape == (1, 21, 30, 27)
        assert np.isfinite(output).all() and float(output.min()) >= 0.0

    def test_model_card(self, smoke: dict[str, object]) -> None:
        manifest = smoke["manifest"]
        assert isinstance(manifest, ModelManifest)
        card = (manifest.folder / manifest.model_card).read_text(encoding="utf-8")
        assert "not for diagnosis" in card.lower()
        assert "Synthetic phantoms only" in card
        assert "## Limits" in card and "## Metrics" in card
        assert "| metric | ce-smoke | x_ld | linear |" in card
        assert "| PSNR_L | 31.5 | 22.25 | 27 |" in card
        assert "| dice_topk.5 | 0.72 | - | - |" in card
        assert "test_set: phantom:900-919" in card
        assert manifest.sha256 in card
        assert json.loads((manifest.folder / "evaluation.json").read_text()) == EVALUATION

    def test_training_record(self, smoke: dict[str, object]) -> None:
        manifest = smoke["manifest"]
        assert isinstance(manifest, ModelManifest)
        record = json.loads((manifest.folder / "training.json").read_text())
        assert DifferentialUNetConfig.from_dict(record["network"]) == TINY
        assert record["onnx_check"]["cases"] == 4  # 3 random + 1 phantom-like
        assert record["onnx_check"]["max_abs_difference"] <= 1e-4
        assert record["training"]["steps"] == SMOKE_STEPS

    def test_onnx_graph(self, smoke: dict[str, object]) -> None:
        manifest = smoke["manifest"]
        assert isinstance(manifest, ModelManifest)
        proto = onnx.load(str(manifest.model_path))
        assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
        dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["N", 3, "D", "H", "W"]
        assert [i.name for i in proto.graph.input] == ["image", "condition"]
        assert [o.name for o in proto.graph.output] == ["y_hat"]
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["gadsynth.name"] == "ce-smoke"
        assert json.loads(meta["network"])["base_width"] == 4

    def test_tampered_model_is_rejected(self, smoke: dict[str, object], tmp_path: Path) -> None:
        manifest = smoke["manifest"]
        assert isinstance(manifest, ModelManifest)
        copy = tmp_path / "ce-smoke"
        copy.mkdir()
        for name in ("manifest.json", "model.onnx"):
            (copy / name).write_bytes((manifest.folder / name).read_bytes())
        with (copy / "model.onnx").open("ab") as handle:
            handle.write(b"\0")
        with pytest.raises(ModelIntegrityError, match=r"sha256 of .* is [0-9a-f]{64}, expected"):
            ModelManifest.load(copy)

    def test_direct_zero_dose_smoke(self, tmp_path: Path) -> None:
        torch.manual_seed(5)
        network = DirectUNet(DirectUNetConfig.zero_dose(base_width=4, levels=2))
        g = torch.Generator().manual_seed(6)
        inputs = torch.rand(2, 3, 16, 16, 16, generator=g)
        batch = {"image": inputs, "y": (0.5 * inputs[:, :1] + 0.3 * inputs[:, 2:3]).clamp(0, 1)}
        losses = _train(network, batch, LossConfig(kind="l2", margin=0), steps=10)
        assert np.mean(losses[-3:]) < np.mean(losses[:3])
        manifest = write_model_folder(
            network.eval(),
            tmp_path / "ce-zerodose-smoke",
            direct_manifest_fields(
                name="ce-zerodose-smoke", version="0.0.1", inputs=network.config.inputs, spatial_divisor=4
            ),
        )
        assert manifest.mode == ModelMode.ZERO_DOSE_DIRECT
        assert manifest.channel_names == ["t1_pre", "t2", "flair"]
        assert manifest.condition is None and manifest.condition_tensor is None
        output, _ = predict_volume(get_session(manifest), manifest, inputs[0].numpy(), None)
        with torch.no_grad():
            expected = network(inputs[:1])[0].numpy()
        assert np.abs(output - expected).max() <= 1e-4


class TestOnnxCheck:
    def test_round_trip_within_tolerance(self, tmp_path: Path) -> None:
        torch.manual_seed(7)
        network = DifferentialUNet(TINY).eval()
        path = export_onnx(network, tmp_path / "m.onnx")
        phantom = _phantom_like(8, n=1)
        cases = [*random_check_inputs(network), (phantom["image"].numpy(), phantom["condition"].numpy())]
        assert check_onnx(network, path, cases) <= 1e-4

    def test_random_cases_cover_dynamic_axes(self) -> None:
        cases = random_check_inputs(DifferentialUNet(TINY))
        shapes = [image.shape for image, _ in cases]
        assert {s[0] for s in shapes} == {1, 2}
        assert len({s[2:] for s in shapes}) == len(shapes)
        assert any(any(n % 8 for n in s[2:]) for s in shapes)  # an odd size for the differential U-Net
        assert all(c is not None and c.shape == (s[0], 4) for (_, c), s in zip(cases, shapes, strict=True))

    def test_mismatch_raises(self, tmp_path: Path) -> None:
        torch.manual_seed(9)
        network = DifferentialUNet(TINY).eval()
        path = export_onnx(network, tmp_path / "m.onnx")
        with torch.no_grad():
            network.head.bias += 0.01  # the network no longer matches the exported graph
        with pytest.raises(ExportMismatchError, match=r"differ by up to .* \(tolerance 0.0001\)"):
            check_onnx(network, path)

    def test_condition_must_fit(self, tmp_path: Path) -> None:
        network = DifferentialUNet(TINY).eval()
        path = export_onnx(network, tmp_path / "m.onnx")
        with pytest.raises(ValueError, match="takes a condition of 4 values; found none"):
            check_onnx(network, path, [(np.zeros((1, 3, 16, 16, 16), np.float32), None)])

    def test_rejects_other_modules(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="expected a DifferentialUNet or DirectUNet; found Conv3d"):
            export_onnx(torch.nn.Conv3d(1, 1, 1), tmp_path / "m.onnx")


class TestGamma:
    def test_mean_of_brain_ratios(self) -> None:
        brain = np.zeros((4, 4, 4))
        brain[1:3, 1:3, 1:3] = 1.0
        s_ld = np.full((4, 4, 4), 2.0)
        s_sd = np.full((4, 4, 4), 100.0)  # outside the brain: ignored
        s_sd[1:3, 1:3, 1:3] = 3.0
        pairs = [(brain, s_sd, s_ld), (brain, s_ld * 2.0, s_ld)]
        assert noise_scale_gamma(pairs) == pytest.approx((1.5 + 2.0) / 2)

    def test_empty_brain(self) -> None:
        with pytest.raises(ValueError, match=r"pair 0: <b, s_LD> is 0"):
            noise_scale_gamma([(np.zeros((2, 2, 2)), np.ones((2, 2, 2)), np.ones((2, 2, 2)))])

    def test_no_pairs(self) -> None:
        with pytest.raises(ValueError, match="at least one"):
            noise_scale_gamma([])


class TestModelFolderErrors:
    def test_existing_folder(self, tmp_path: Path) -> None:
        folder = tmp_path / "ce-x"
        folder.mkdir()
        (folder / "keep.txt").write_text("x")
        with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
            write_model_folder(
                DifferentialUNet(TINY), folder, differential_manifest_fields(name="ce-x", version="1", gamma=1.0)
            )
        assert (folder / "keep.txt").exists()

    def test_invalid_manifest_fields(self, tmp_path: Path) -> None:
        fields = differential_manifest_fields(name="CE Model", version="1", gamma=1.0)
        with pytest.raises(ValueError, match="manifest fields are invalid: name"):
            write_model_folder(DifferentialUNet(TINY), tmp_path / "m", fields)
        assert not any(tmp_path.iterdir())

    def test_condition_mismatch(self, tmp_path: Path) -> None:
        fields = direct_manifest_fields(name="zd", version="1", inputs=("t1_pre", "t2", "flair"), spatial_divisor=8)
        with pytest.raises(ValueError, match=r"takes 4 condition value\(s\), the manifest no condition"):
            write_model_folder(DifferentialUNet(TINY), tmp_path / "zd", fields)

    def test_channel_count_mismatch(self, tmp_path: Path) -> None:
        fields = direct_manifest_fields(name="zd", version="1", inputs=("t1_pre", "t2", "flair"), spatial_divisor=8)
        network = DirectUNet(DirectUNetConfig(base_width=2, levels=2))
        with pytest.raises(ValueError, match=r"takes 2 input channel\(s\), the manifest lists 3"):
            write_model_folder(network, tmp_path / "zd", fields)

    def test_channel_order_mismatch(self, tmp_path: Path) -> None:
        fields = direct_manifest_fields(name="ld", version="1", inputs=("t1_low_dose", "t1_pre"), spatial_divisor=4)
        network = DirectUNet(DirectUNetConfig(inputs=("t1_pre", "t1_low_dose"), base_width=2, levels=2))
        with pytest.raises(ValueError, match="channel order"):
            write_model_folder(network, tmp_path / "ld", fields)

    def test_divisor_mismatch(self, tmp_path: Path) -> None:
        fields = direct_manifest_fields(name="ld", version="1", inputs=("t1_pre", "t1_low_dose"), spatial_divisor=2)
        network = DirectUNet(DirectUNetConfig(base_width=2, levels=2))
        with pytest.raises(ValueError, match="spatial_divisor 2 must be a multiple of 4"):
            write_model_folder(network, tmp_path / "ld", fields)

    def test_unreadable_evaluation(self, tmp_path: Path) -> None:
        bad = tmp_path / "evaluation.json"
        bad.write_text("{not json")
        fields = differential_manifest_fields(name="ce-x", version="1", gamma=1.0)
        with pytest.raises(ValueError, match=r"evaluation JSON .* cannot be read"):
            write_model_folder(DifferentialUNet(TINY), tmp_path / "ce-x", fields, evaluation=bad)

    def test_card_without_evaluation(self, tmp_path: Path) -> None:
        network = DirectUNet(DirectUNetConfig(base_width=2, levels=2)).eval()
        fields = direct_manifest_fields(name="ld", version="1", inputs=network.config.inputs, spatial_divisor=4)
        manifest = write_model_folder(network, tmp_path / "ld", fields, limits=("Sigmoid output saturates at 1.",))
        card = (manifest.folder / "MODEL_CARD.md").read_text()
        assert "Not evaluated yet" in card
        assert "- Sigmoid output saturates at 1." in card
        assert manifest.mode == ModelMode.LOW_DOSE_DIRECT
        assert not (manifest.folder / "evaluation.json").exists()
        assert oct((manifest.folder).stat().st_mode & 0o777) == oct(0o755)
