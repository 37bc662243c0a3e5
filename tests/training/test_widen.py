"""Widening a trained differential U-Net (more channels, or the voxel size in its condition): the wider network
starts as the trained one, and its new weights learn."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.networks import DifferentialUNet, DifferentialUNetConfig
from training.networks.widen import (
    add_condition_state,
    add_gain_state,
    can_add_condition,
    can_add_gain,
    can_widen,
    widen_state,
)

NARROW = DifferentialUNetConfig(base_width=4, embedding_dim=16)
WIDE = DifferentialUNetConfig(base_width=6, embedding_dim=16)


@pytest.fixture(scope="module")
def trained() -> DifferentialUNet:
    """A narrow network whose weights are not its initialization (every parameter moved)."""
    torch.manual_seed(3)
    network = DifferentialUNet(NARROW)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return network.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    image = torch.randn((2, 3, 24, 32, 16), generator=generator)
    condition = torch.tensor([[0.1, 1.5, 4.1, 0.05], [0.3, 3.0, 3.4, 0.08]])
    return image, condition


def test_the_wider_network_computes_what_the_trained_one_did(trained: DifferentialUNet) -> None:
    wide = DifferentialUNet(WIDE)
    wide.load_state_dict(widen_state(trained.state_dict(), NARROW, WIDE))
    image, condition = _inputs()
    with torch.no_grad():
        expected, found = trained(image, condition), wide.eval()(image, condition)
    assert float(expected.abs().mean()) > 0.01  # a non-trivial output
    torch.testing.assert_close(found, expected, atol=1e-6, rtol=1e-5)
    # ... while its new channels hold something (they are not merely zero)
    with torch.no_grad():
        assert float(wide.stem(image)[:, NARROW.widths[0] :].abs().mean()) > 0.01


def test_the_new_channels_learn(trained: DifferentialUNet) -> None:
    """The weights from new channels into trained ones start at zero but get gradients."""
    wide = DifferentialUNet(WIDE).train()
    wide.load_state_dict(widen_state(trained.state_dict(), NARROW, WIDE))
    image, condition = _inputs()
    wide(image, condition).square().mean().backward()
    w = NARROW.widths[0]
    conv = wide.encoder[0][0].conv2  # type: ignore[index]
    assert torch.all(conv.weight[:w, w:] == 0)
    assert conv.weight.grad is not None and float(conv.weight.grad[:w, w:].abs().sum()) > 0
    assert wide.head.weight.grad is not None and float(wide.head.weight.grad[:, w:].abs().sum()) > 0


@pytest.mark.parametrize(
    "wide",
    [
        DifferentialUNetConfig(base_width=3, embedding_dim=16),  # narrower
        DifferentialUNetConfig(base_width=6, embedding_dim=32),  # another embedding
        DifferentialUNetConfig(base_width=6, embedding_dim=16, scales=3),  # another depth
        NARROW,  # the same network: nothing to widen
    ],
)
def test_only_wider_channel_counts(trained: DifferentialUNet, wide: DifferentialUNetConfig) -> None:
    assert not can_widen(NARROW, wide)
    with pytest.raises(ValueError, match="only wider channel counts"):
        widen_state(trained.state_dict(), NARROW, wide)


def test_a_state_of_another_network_is_refused() -> None:
    other = DifferentialUNet(DifferentialUNetConfig(base_width=5, embedding_dim=16)).state_dict()
    with pytest.raises(ValueError, match="the weights are not those of"):
        widen_state(other, NARROW, WIDE)


def test_a_run_starts_wider_from_a_narrow_model_folder(trained: DifferentialUNet, tmp_path: Path) -> None:
    """`gadsynth train --init-from` a narrow model folder with a larger --width: the run starts from its function."""
    from training.checkpoints import initialize_from
    from training.export import differential_manifest_fields, write_model_folder

    folder = tmp_path / "ce-narrow"
    write_model_folder(trained, folder, differential_manifest_fields(name="ce-narrow", version="0.0.1", gamma=1.0))
    wide = DifferentialUNet(WIDE)
    initialize_from(wide, WIDE, folder)
    image, condition = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(image, condition), trained(image, condition), atol=1e-5, rtol=1e-4)


GRID = DifferentialUNetConfig(base_width=4, embedding_dim=16, condition_features=5)


def _export(network: DifferentialUNet, folder: Path) -> Path:
    """Write ``network`` as a model folder named after ``folder``, its manifest naming its condition features."""
    from training.export import differential_manifest_fields, write_model_folder

    fields = differential_manifest_fields(
        name=folder.name, version="0.0.1", gamma=1.0, condition_features=network.config.condition_names
    )
    write_model_folder(network, folder, fields)
    return folder


def _with_voxel(condition: torch.Tensor, voxel_mm: float) -> torch.Tensor:
    return torch.cat([condition, torch.full((condition.shape[0], 1), voxel_mm)], dim=1)


def test_the_voxel_size_starts_with_no_influence(trained: DifferentialUNet) -> None:
    """A network that also takes the voxel size starts as the trained one, for every voxel size, and then learns it."""
    assert can_add_condition(NARROW, GRID) and not can_widen(NARROW, GRID)
    grid = DifferentialUNet(GRID)
    grid.load_state_dict(add_condition_state(trained.state_dict(), NARROW, GRID))
    image, condition = _inputs()
    with torch.no_grad():
        expected = trained(image, condition)
        for voxel_mm in (1.0, 4.0):
            torch.testing.assert_close(grid.eval()(image, _with_voxel(condition, voxel_mm)), expected)
    assert GRID.condition_names[-1] == "voxel_mm"
    grid.train()(image, _with_voxel(condition, 4.0)).square().mean().backward()
    first = grid.embedding.mlp[0].weight
    assert torch.all(first[:, 4] == 0) and first.grad is not None and float(first.grad[:, 4].abs().sum()) > 0


@pytest.mark.parametrize(
    "other",
    [
        DifferentialUNetConfig(base_width=6, embedding_dim=16, condition_features=5),  # wider as well
        DifferentialUNetConfig(base_width=4, embedding_dim=16, condition_features=5, condition_offset=(0,) * 5),
        NARROW,  # nothing to add
    ],
)
def test_only_the_condition_may_grow(trained: DifferentialUNet, other: DifferentialUNetConfig) -> None:
    assert not can_add_condition(NARROW, other)
    with pytest.raises(ValueError, match="cannot extend the condition"):
        add_condition_state(trained.state_dict(), NARROW, other)


def test_a_run_with_the_voxel_condition_starts_from_a_model_folder(trained: DifferentialUNet, tmp_path: Path) -> None:
    """`gadsynth train --voxel-condition --init-from` a 4-feature model folder; its export names the fifth feature."""
    from training.checkpoints import initialize_from
    from training.export import differential_manifest_fields, write_model_folder
    from training.train_config import TrainConfig, manifest_fields, network_config

    folder = tmp_path / "ce-narrow"
    write_model_folder(trained, folder, differential_manifest_fields(name="ce-narrow", version="0.0.1", gamma=1.0))
    config = TrainConfig(
        out=tmp_path / "out", data=("phantom:0-1",), width=4, embedding_dim=16, voxel_condition=True, init_from=folder
    )
    wanted = network_config(config)
    assert wanted == GRID
    grid = DifferentialUNet(wanted)
    initialize_from(grid, wanted, folder)
    image, condition = _inputs()
    with torch.no_grad():
        found = grid.eval()(image, _with_voxel(condition, 1.0))
        torch.testing.assert_close(found, trained(image, condition), atol=1e-5, rtol=1e-4)
    fields = manifest_fields(config, wanted, gamma=1.0)
    assert fields["condition"].features == ["dose", "field_strength_t", "r1", "sigma", "voxel_mm"]
    out = _export(grid, tmp_path / "ce-grid")
    assert json.loads((out / "manifest.json").read_text())["condition"]["features"][-1] == "voxel_mm"


def test_the_voxel_condition_is_for_differential_models(tmp_path: Path) -> None:
    from training.train_config import TrainConfig

    with pytest.raises(ValueError, match="--voxel-condition applies to differential models"):
        TrainConfig(out=tmp_path, data=("phantom:0-1",), model="direct", voxel_condition=True)


def test_a_smaller_voxel_scale_still_starts_from_the_narrow_model(trained: DifferentialUNet, tmp_path: Path) -> None:
    """--voxel-scale standardizes only the new feature differently: the run still starts exactly from the model."""
    from training.train_config import TrainConfig, network_config

    config = TrainConfig(
        out=tmp_path, data=("phantom:0-1",), width=4, embedding_dim=16, voxel_condition=True, voxel_scale=0.02
    )
    wanted = network_config(config)
    assert wanted.resolved_condition_standardization()[1][-1] == 0.02 and can_add_condition(NARROW, wanted)
    grid = DifferentialUNet(wanted)
    grid.load_state_dict(add_condition_state(trained.state_dict(), NARROW, wanted))
    image, condition = _inputs()
    with torch.no_grad():
        for voxel_mm in (1.0, 4.0):
            torch.testing.assert_close(grid.eval()(image, _with_voxel(condition, voxel_mm)), trained(image, condition))
    assert float(grid.embedding.scale[-1]) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="--voxel-scale needs --voxel-condition"):
        TrainConfig(out=tmp_path, data=("phantom:0-1",), voxel_scale=0.02)


GAIN = DifferentialUNetConfig(base_width=4, embedding_dim=16, condition_gain=True)


def test_the_gain_starts_at_one_and_learns(trained: DifferentialUNet) -> None:
    """Blocks with a gain from the condition (FiLM) start as the bias-only blocks, and the gains get gradients."""
    assert can_add_gain(NARROW, GAIN) and not can_widen(NARROW, GAIN) and not can_add_condition(NARROW, GAIN)
    gained = DifferentialUNet(GAIN)
    gained.load_state_dict(add_gain_state(trained.state_dict(), NARROW, GAIN))
    image, condition = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(gained.eval()(image, condition), trained(image, condition))
    gained.train()(image, condition).square().mean().backward()
    gain = gained.decoder[0][0].gain  # type: ignore[index]
    assert gain is not None and torch.all(gain.weight == 0)
    assert gain.weight.grad is not None and float(gain.weight.grad.abs().sum()) > 0
    # a gain that has moved changes the output, differently for each condition
    with torch.no_grad():
        gain.bias.fill_(0.5)
        ratio = gained.eval()(image, condition) / trained(image, condition).clamp_min(1e-6)
    assert float((ratio - 1).abs().max()) > 0.01


@pytest.mark.parametrize(
    "other",
    [
        DifferentialUNetConfig(base_width=6, embedding_dim=16, condition_gain=True),  # wider as well
        DifferentialUNetConfig(base_width=4, embedding_dim=16, condition_features=5, condition_gain=True),
        NARROW,  # nothing to add
    ],
)
def test_only_the_gain_may_be_added(trained: DifferentialUNet, other: DifferentialUNetConfig) -> None:
    assert not can_add_gain(NARROW, other)
    with pytest.raises(ValueError, match="cannot add the condition's gain"):
        add_gain_state(trained.state_dict(), NARROW, other)


def test_the_gain_keeps_old_configs_in_their_form() -> None:
    """Configs without the gain keep the dictionary form (and run identity) they had before the option."""
    assert "condition_gain" not in NARROW.to_dict()
    assert DifferentialUNetConfig.from_dict(NARROW.to_dict()) == NARROW
    assert GAIN.to_dict()["condition_gain"] is True and DifferentialUNetConfig.from_dict(GAIN.to_dict()) == GAIN


def test_a_run_with_voxel_and_gain_starts_from_a_checkpoint(trained: DifferentialUNet, tmp_path: Path) -> None:
    """`gadsynth train --voxel-condition --condition-gain --init-from` a 4-feature run's checkpoint: both additions
    start with no influence, so the run starts exactly where the checkpoint was; the ONNX export keeps the gains."""
    from training.checkpoints import CHECKPOINT_FORMAT, initialize_from, save_checkpoint
    from training.model_folder import network_from_folder
    from training.train_config import TrainConfig, network_config

    source = save_checkpoint(
        tmp_path / "narrow.pt",
        {"format": CHECKPOINT_FORMAT, "network_config": NARROW.to_dict(), "network": trained.state_dict()},
    )
    config = TrainConfig(
        out=tmp_path / "out",
        data=("phantom:0-1",),
        width=4,
        embedding_dim=16,
        voxel_condition=True,
        condition_gain=True,
        init_from=source,
    )
    wanted = network_config(config)
    assert wanted.condition_gain and wanted.condition_features == 5
    assert config.identity()["network"]["condition_gain"] is True
    network = DifferentialUNet(wanted)
    initialize_from(network, wanted, source)
    image, condition = _inputs()
    with torch.no_grad():
        expected = trained(image, condition)
        for voxel_mm in (1.0, 4.0):
            torch.testing.assert_close(network.eval()(image, _with_voxel(condition, voxel_mm)), expected)
        for parameter in network.parameters():  # every parameter moves, the gains included
            parameter.add_(0.02 * torch.randn_like(parameter))
    folder = _export(network, tmp_path / "ce-gain")
    loaded, weights = network_from_folder(folder)
    assert weights == "model.onnx" and loaded.config == wanted
    with torch.no_grad():
        grid_condition = _with_voxel(condition, 4.0)
        torch.testing.assert_close(loaded(image, grid_condition), network(image, grid_condition), atol=1e-6, rtol=1e-5)


def test_the_gain_is_for_differential_models(tmp_path: Path) -> None:
    from training.train_config import TrainConfig

    with pytest.raises(ValueError, match="--condition-gain applies to differential models"):
        TrainConfig(out=tmp_path, data=("phantom:0-1",), model="direct", condition_gain=True)


def test_the_gains_can_learn_at_their_own_rate(tmp_path: Path) -> None:
    """--gain-lr-factor puts the gains in a second Adam group at lr x factor; the cosine keeps the ratio until the
    floor; at factor 1 there is one group and the run's identity is the one it had before the option."""
    from training.train import _parameter_groups
    from training.train_config import TrainConfig, network_config

    base = {"out": tmp_path, "data": ("phantom:0-1",), "width": 4, "embedding_dim": 16, "condition_gain": True}
    plain, fast = TrainConfig(**base), TrainConfig(**base, gain_lr_factor=10.0, lr=1e-4, lr_min=1e-7, steps=10)
    network = DifferentialUNet(network_config(fast))
    assert len(_parameter_groups(network, plain)) == 1 and "gain_lr_factor" not in plain.identity()
    assert fast.identity()["gain_lr_factor"] == 10.0
    groups = _parameter_groups(network, fast)
    gains = {id(p) for name, p in network.named_parameters() if ".gain." in name}
    assert len(gains) == 2 * sum(GAIN.blocks) + 2 * sum(GAIN.blocks[:-1])  # weight and bias of every block's gain
    assert {id(p) for p in groups[1]["params"]} == gains and not gains & {id(p) for p in groups[0]["params"]}
    optimizer = torch.optim.Adam(groups, lr=fast.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=fast.steps, eta_min=fast.lr_min)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    rest_lr, gain_lr = (g["lr"] for g in optimizer.param_groups)
    assert gain_lr > 9 * rest_lr > 0
    with pytest.raises(ValueError, match="--gain-lr-factor needs --condition-gain"):
        TrainConfig(out=tmp_path, data=("phantom:0-1",), gain_lr_factor=10.0)


def test_a_run_with_the_sequence_condition_starts_from_a_grid_model_with_gains(
    trained: DifferentialUNet, tmp_path: Path
) -> None:
    """`gadsynth train --voxel-condition --sequence-condition --condition-gain --init-from` a 5-feature model with
    gains (as 1.10.0): the sixth feature, the inversion preparation q, starts with no influence for q = 0 and 1, gets
    gradients, and the export names it; --sequence-condition alone is refused."""
    from training.checkpoints import initialize_from
    from training.train_config import TrainConfig, manifest_fields, network_config

    grid = DifferentialUNetConfig(
        base_width=4, embedding_dim=16, condition_features=5, condition_scale=(0.1, 0.75, 0.5, 0.02, 0.02)
    )
    grid_gain = replace(grid, condition_gain=True)
    source = DifferentialUNet(grid_gain)
    source.load_state_dict(add_gain_state(add_condition_state(trained.state_dict(), NARROW, grid), grid, grid_gain))
    with torch.no_grad():  # the gains and the voxel weights have moved, as in a trained 1.10.0
        for parameter in source.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    folder = _export(source, tmp_path / "ce-grid-gain")
    config = TrainConfig(
        out=tmp_path / "out",
        data=("phantom:0-1",),
        width=4,
        embedding_dim=16,
        voxel_condition=True,
        sequence_condition=True,
        voxel_scale=0.02,
        condition_gain=True,
        init_from=folder,
    )
    wanted = network_config(config)
    assert wanted.condition_features == 6 and wanted.condition_names[-1] == "inversion_prepared"
    assert wanted.resolved_condition_standardization() == (
        (0.2, 2.25, 4.0, 0.03, 2.0, 0.5),
        (0.1, 0.75, 0.5, 0.02, 0.02, 0.02),
    )
    network = DifferentialUNet(wanted)
    initialize_from(network, wanted, folder)
    image, condition = _inputs()
    grid_condition = _with_voxel(condition, 1.0)
    with torch.no_grad():
        expected = source.eval()(image, grid_condition)
        for q in (0.0, 1.0):
            torch.testing.assert_close(
                network.eval()(image, _with_voxel(grid_condition, q)), expected, atol=1e-5, rtol=1e-4
            )
    network.train()(image, _with_voxel(grid_condition, 1.0)).square().mean().backward()
    first = network.embedding.mlp[0].weight
    assert torch.all(first[:, 5] == 0) and first.grad is not None and float(first.grad[:, 5].abs().sum()) > 0
    assert manifest_fields(config, wanted, gamma=1.0)["condition"].features[-2:] == ["voxel_mm", "inversion_prepared"]
    with pytest.raises(ValueError, match="--sequence-condition extends the condition of --voxel-condition"):
        TrainConfig(out=tmp_path, data=("phantom:0-1",), sequence_condition=True)
