"""Tests of the networks: the conditional differential U-Net (Pinetz et al.) and the direct 3D U-Net (Bone et al.)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from training.networks import (
    CONDITION_FEATURES,
    DIFFERENTIAL_INPUTS,
    DIRECT_INPUTS,
    DifferentialUNet,
    DifferentialUNetConfig,
    DirectUNet,
    DirectUNetConfig,
    build_network,
    config_from_dict,
)
from training.networks.blocks import BlurDownsample, ConditionalResidualBlock, GatedFusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = DifferentialUNetConfig(base_width=4, embedding_dim=16)
TINY_DIRECT = DirectUNetConfig(base_width=4, levels=3)


@contextlib.contextmanager
def _forward_hooks(modules: Sequence[nn.Module], hook: Callable[..., None]) -> Iterator[None]:
    """``hook`` registered as a forward hook on every module while the block runs."""
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _condition(n: int = 1, *, dose: float = 0.25, field: float = 3.0, r1: float = 4.5, sigma: float = 0.03):
    return torch.tensor([[dose, field, r1, sigma]] * n, dtype=torch.float32)


@pytest.fixture(scope="module")
def differential() -> DifferentialUNet:
    torch.manual_seed(0)
    return DifferentialUNet(TINY).eval()


class TestDifferentialShapes:
    @pytest.mark.parametrize(
        "spatial",
        [(16, 16, 16), (24, 16, 32), (17, 19, 23), (9, 12, 15), (8, 8, 8)],
        ids=["cube-16", "even-mixed", "odd", "small-odd", "one-voxel-bottom"],
    )
    def test_output_has_input_size(self, differential: DifferentialUNet, spatial: tuple[int, int, int]) -> None:
        image = torch.randn(2, 3, *spatial)
        with torch.no_grad():
            out = differential(image, _condition(2))
        assert out.shape == (2, 1, *spatial)

    def test_spatial_divisor_is_two_to_the_down_samplings(self) -> None:
        assert DifferentialUNetConfig().spatial_divisor == 8
        assert DifferentialUNetConfig(scales=3).spatial_divisor == 4

    def test_widths_double_per_scale(self) -> None:
        assert DifferentialUNetConfig.paper().widths == (32, 64, 128, 256)
        assert DifferentialUNetConfig(base_width=8, max_width=32).widths == (8, 16, 32, 32)

    def test_blocks_per_scale(self) -> None:
        assert DifferentialUNetConfig().blocks == (1, 2, 2, 2)
        assert DifferentialUNetConfig.paper().blocks == (2, 2, 2, 2)
        assert DifferentialUNetConfig(scales=3, blocks_per_scale=(2, 3, 1), finest_blocks=None).blocks == (2, 3, 1)

    def test_inputs_and_condition_names(self) -> None:
        assert DIFFERENTIAL_INPUTS == ("z_ld", "x_ld", "s_ld")
        assert CONDITION_FEATURES == ("dose", "field_strength_t", "r1", "sigma")
        assert DifferentialUNetConfig().condition_names == CONDITION_FEATURES
        grid = DifferentialUNetConfig(condition_features=5)
        assert grid.condition_names == (*CONDITION_FEATURES, "voxel_mm")
        offset, scale = grid.resolved_condition_standardization()
        assert offset[:4] == DifferentialUNetConfig().resolved_condition_standardization()[0] and scale[4] > 0
        with pytest.raises(ValueError, match="this one has 3 feature"):
            _ = DifferentialUNetConfig(condition_features=3).condition_names


class TestDifferentialBehaviour:
    def test_output_is_nonnegative(self, differential: DifferentialUNet) -> None:
        torch.manual_seed(1)
        with torch.no_grad():
            out = differential(torch.randn(2, 3, 16, 16, 16) * 3.0, _condition(2))
        assert float(out.min()) >= 0.0
        assert float(out.max()) > 0.0  # not a dead network

    def test_condition_changes_output(self, differential: DifferentialUNet) -> None:
        image = torch.randn(1, 3, 16, 16, 16)
        with torch.no_grad():
            low = differential(image, _condition(dose=0.1, field=1.5, r1=3.9))
            high = differential(image, _condition(dose=0.33, field=3.0, r1=4.5))
        assert float((low - high).abs().max()) > 1e-5

    def test_condition_is_per_sample(self, differential: DifferentialUNet) -> None:
        image = torch.randn(1, 3, 16, 16, 16)
        conditions = torch.cat([_condition(dose=0.1), _condition(dose=0.3)])
        with torch.no_grad():
            batch = differential(image.repeat(2, 1, 1, 1, 1), conditions)
            first = differential(image, conditions[:1])
            second = differential(image, conditions[1:])
        torch.testing.assert_close(batch[0:1], first, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch[1:2], second, atol=1e-5, rtol=1e-5)

    def test_every_crb_receives_the_embedding(self, differential: DifferentialUNet) -> None:
        blocks = [m for m in differential.modules() if isinstance(m, ConditionalResidualBlock)]
        assert len(blocks) == 2 * sum(TINY.blocks) - TINY.blocks[-1]  # down path + up path (no up at the bottom)
        calls: list[torch.Tensor] = []
        with _forward_hooks(blocks, lambda _m, args, _o: calls.append(args[1])), torch.no_grad():
            differential(torch.randn(1, 3, 16, 16, 16), _condition())
        assert len(calls) == len(blocks)
        assert all(c.shape == (1, TINY.embedding_dim) for c in calls)

    def test_local_operators_only_and_no_normalization_layers(self, differential: DifferentialUNet) -> None:
        norms = (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d, nn.LayerNorm)
        assert not [m for m in differential.modules() if isinstance(m, norms)]
        assert not [m for m in differential.modules() if isinstance(m, nn.MultiheadAttention)]
        assert any(isinstance(m, nn.SiLU) for m in differential.modules())

    def test_every_parameter_gets_a_gradient(self) -> None:
        torch.manual_seed(2)
        network = DifferentialUNet(TINY)
        out = network(torch.randn(2, 3, 16, 16, 16), _condition(2))
        out.sum().backward()
        unused = [name for name, p in network.named_parameters() if p.grad is None]
        assert not unused

    @pytest.mark.parametrize("antialias,pyramid", [(False, False), (True, False), (False, True)])
    def test_down_sampling_variants(self, antialias: bool, pyramid: bool) -> None:
        config = DifferentialUNetConfig(base_width=4, embedding_dim=8, antialias=antialias, input_pyramid=pyramid)
        network = DifferentialUNet(config).eval()
        with torch.no_grad():
            out = network(torch.randn(1, 3, 13, 16, 10), _condition())
        assert out.shape == (1, 1, 13, 16, 10)
        assert any(isinstance(m, BlurDownsample) for m in network.modules()) == (antialias or pyramid)


class TestGatedFusion:
    def test_matches_the_paper_formula(self) -> None:
        torch.manual_seed(3)
        fusion = GatedFusion(4)
        up, skip = torch.randn(2, 4, 5, 6, 7), torch.randn(2, 4, 5, 6, 7)
        gates = torch.sigmoid(fusion.gates(torch.cat([up, skip], dim=1)))
        expected = gates[:, :4] * fusion.up(up) + gates[:, 4:] * fusion.skip(skip)
        torch.testing.assert_close(fusion(up, skip), expected)

    def test_gates_select_the_skip_path(self) -> None:
        fusion = GatedFusion(3)
        with torch.no_grad():
            fusion.gates.weight.zero_()
            fusion.gates.bias[:3] = -60.0  # upsampled path closed
            fusion.gates.bias[3:] = 60.0  # skip path open
        up, skip = torch.randn(1, 3, 4, 4, 4), torch.randn(1, 3, 4, 4, 4)
        torch.testing.assert_close(fusion(up, skip), fusion.skip(skip))

    def test_gates_are_in_the_decoder(self, differential: DifferentialUNet) -> None:
        fusions = [m for m in differential.modules() if isinstance(m, GatedFusion)]
        assert len(fusions) == TINY.scales - 1
        seen: list[tuple[float, float]] = []

        def gate_minima(fusion: GatedFusion, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            seen.append(tuple(float(g.min()) for g in fusion.gate_values(*args)))  # type: ignore[arg-type]

        with _forward_hooks(fusions, gate_minima), torch.no_grad():
            differential(torch.randn(1, 3, 16, 16, 16), _condition())
        assert len(seen) == len(fusions)
        assert all(0.0 < value < 1.0 for pair in seen for value in pair)


class TestDifferentialErrors:
    def test_wrong_channels(self, differential: DifferentialUNet) -> None:
        with pytest.raises(ValueError, match="must have 3 channel"):
            differential(torch.randn(1, 2, 16, 16, 16), _condition())

    def test_wrong_dimensions(self, differential: DifferentialUNet) -> None:
        with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
            differential(torch.randn(3, 16, 16, 16), _condition())

    def test_wrong_condition(self, differential: DifferentialUNet) -> None:
        with pytest.raises(ValueError, match=r"condition must be \(N, 4\)"):
            differential(torch.randn(1, 3, 16, 16, 16), torch.zeros(1, 3))

    def test_blocks_per_scale_length(self) -> None:
        with pytest.raises(ValueError, match="blocks_per_scale must be a positive integer or 4"):
            DifferentialUNetConfig(blocks_per_scale=(1, 2))

    def test_nonpositive_width(self) -> None:
        with pytest.raises(ValueError, match="base_width must be a positive integer"):
            DifferentialUNetConfig(base_width=0)

    def test_condition_standardization_length(self) -> None:
        with pytest.raises(ValueError, match="need 4 value"):
            DifferentialUNet(DifferentialUNetConfig(base_width=4, condition_offset=(0.0, 1.0)))


class TestDirectUNet:
    @pytest.mark.parametrize("spatial", [(8, 8, 8), (16, 8, 24), (32, 16, 16)])
    def test_output_shape_and_range(self, spatial: tuple[int, int, int]) -> None:
        torch.manual_seed(4)
        network = DirectUNet(TINY_DIRECT).eval()
        with torch.no_grad():
            out = network(torch.randn(2, 2, *spatial))
        assert out.shape == (2, 1, *spatial)
        assert float(out.min()) > 0.0 and float(out.max()) < 1.0

    def test_v_net_building_blocks(self) -> None:
        network = DirectUNet(TINY_DIRECT)
        down = [m for m in network.modules() if isinstance(m, nn.Conv3d) and m.stride == (2, 2, 2)]
        up = [m for m in network.modules() if isinstance(m, nn.ConvTranspose3d)]
        assert len(down) == len(up) == TINY_DIRECT.levels
        assert all(m.kernel_size == (2, 2, 2) for m in down + up)
        slopes = {m.negative_slope for m in network.modules() if isinstance(m, nn.LeakyReLU)}
        assert slopes == {0.2}

    def test_requires_multiple_of_divisor(self) -> None:
        network = DirectUNet(TINY_DIRECT)
        assert TINY_DIRECT.spatial_divisor == 8
        with pytest.raises(ValueError, match=r"multiple of 8 \(2\*\*levels\); found \(12, 16, 16\)"):
            network(torch.randn(1, 2, 12, 16, 16))

    @pytest.mark.parametrize(
        "inputs", [("t1_pre",), ("t1_pre", "flair", "t2", "adc"), DIRECT_INPUTS], ids=["t1", "zero+adc", "all"]
    )
    def test_any_subset_of_inputs(self, inputs: tuple[str, ...]) -> None:
        network = DirectUNet(DirectUNetConfig(inputs=inputs, base_width=2, levels=2)).eval()
        with torch.no_grad():
            out = network(torch.randn(1, len(inputs), 8, 8, 8))
        assert out.shape == (1, 1, 8, 8, 8)

    def test_residual_output_starts_at_the_pre_contrast_image(self) -> None:
        config = DirectUNetConfig.zero_dose(base_width=4, levels=2)
        assert config.output == "residual" and DirectUNetConfig.from_dict(config.to_dict()) == config
        assert "output" not in DirectUNetConfig(base_width=4).to_dict()  # sigmoid configs keep their old form
        network = DirectUNet(config)
        image = torch.rand(2, 3, 16, 16, 16)
        out = network(image)
        torch.testing.assert_close(out, image[:, :1])  # zero-initialized head: the identity on x_PC
        out.sum().backward()
        assert network.head.weight.grad is not None and float(network.head.weight.grad.abs().sum()) > 0
        with pytest.raises(ValueError, match="must be 'sigmoid' or 'residual'"):
            DirectUNetConfig(output="linear")  # type: ignore[arg-type]

    def test_output_max_widens_the_range(self) -> None:
        """A target range above 1 (issue 12): the sigmoid is scaled, the residual clipped at output_max."""
        torch.manual_seed(4)
        config = DirectUNetConfig(inputs=("t1_pre", "t1_low_dose"), base_width=2, levels=2, output_max=4.0)
        assert DirectUNetConfig.from_dict(config.to_dict()) == config
        assert "output_max" not in DirectUNetConfig(base_width=2).to_dict()  # configs before the option keep their form
        network = DirectUNet(config).eval()
        with torch.no_grad():
            network.head.bias.fill_(3.0)  # type: ignore[union-attr]
            out = network(torch.randn(1, 2, 8, 8, 8))
        assert float(out.min()) > 1.0 and float(out.max()) < 4.0
        residual = DirectUNet(DirectUNetConfig.zero_dose(base_width=2, levels=2, output_max=4.0))
        image = torch.full((1, 3, 8, 8, 8), 0.9)
        with torch.no_grad():
            residual.head.bias.fill_(5.0)  # type: ignore[union-attr]
            assert float(residual(image).max()) == 4.0
        with pytest.raises(ValueError, match="output_max must be within 1 to 10"):
            DirectUNetConfig(output_max=0.5)

    def test_zero_dose_variant(self) -> None:
        assert DirectUNetConfig.zero_dose().inputs == ("t1_pre", "t2", "flair")
        assert DirectUNetConfig.zero_dose(adc=True).inputs == ("t1_pre", "t2", "flair", "adc")
        assert DirectUNetConfig.zero_dose(t1_map=True).inputs == ("t1_pre", "t1_map", "t2", "flair")
        assert "t1_low_dose" not in DirectUNetConfig.zero_dose(adc=True).inputs

    @pytest.mark.parametrize(
        "inputs,message",
        [
            (("t1_pre", "swi"), "distinct names from"),
            (("t1_pre", "t1_pre"), "distinct names from"),
            (("flair", "t2"), "must include 't1_pre'"),
            ((), "distinct names from"),
        ],
    )
    def test_bad_inputs(self, inputs: tuple[str, ...], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            DirectUNetConfig(inputs=inputs)

    def test_wrong_channel_count(self) -> None:
        with pytest.raises(ValueError, match="must have 2 channel"):
            DirectUNet(TINY_DIRECT)(torch.randn(1, 3, 8, 8, 8))


class TestConfigs:
    @pytest.mark.parametrize(
        "config",
        [
            DifferentialUNetConfig(base_width=4, blocks_per_scale=(3, 2, 2, 1), condition_offset=(0, 0, 0, 0)),
            DifferentialUNetConfig.paper(),
            DirectUNetConfig.zero_dose(adc=True, base_width=8),
        ],
    )
    def test_dict_round_trip(self, config: DifferentialUNetConfig | DirectUNetConfig) -> None:
        data = config.to_dict()
        assert config_from_dict(data) == config
        assert type(build_network(config_from_dict(data))) is (
            DifferentialUNet if isinstance(config, DifferentialUNetConfig) else DirectUNet
        )

    def test_unknown_kind(self) -> None:
        with pytest.raises(ValueError, match="kind must be 'differential_unet' or 'direct_unet'; found 'gan'"):
            config_from_dict({"kind": "gan"})

    def test_unknown_key(self) -> None:
        with pytest.raises(ValueError, match=r"unknown DifferentialUNetConfig key\(s\) \['depth'\]"):
            config_from_dict({"kind": "differential_unet", "depth": 3})

    def test_build_network_rejects_other_types(self) -> None:
        with pytest.raises(TypeError, match="found dict"):
            build_network({"kind": "differential_unet"})  # type: ignore[arg-type]


class TestInitializeFrom:
    """--init-from across the output range: the clip / scale holds no weights, every other field must match."""

    @staticmethod
    def _checkpoint(tmp_path: Path, config: DirectUNetConfig) -> tuple[Path, DirectUNet]:
        from training.checkpoints import CHECKPOINT_FORMAT, save_checkpoint

        torch.manual_seed(3)
        network = DirectUNet(config)
        state = {"format": CHECKPOINT_FORMAT, "network_config": config.to_dict(), "network": network.state_dict()}
        return save_checkpoint(tmp_path / "start.pt", state), network

    def test_residual_network_starts_under_a_wider_clip(self, tmp_path: Path) -> None:
        from training.checkpoints import initialize_from

        clipped = DirectUNetConfig(inputs=("t1_pre",), base_width=2, levels=2, output="residual")
        source, start = self._checkpoint(tmp_path, clipped)
        wider = dataclasses.replace(clipped, output_max=4.0)
        network = DirectUNet(wider).eval()
        initialize_from(network, wider, source)
        image = torch.rand(1, 1, 8, 8, 8) * 0.5  # inside both ranges: the same output
        with torch.no_grad():
            torch.testing.assert_close(network(image), start.eval()(image))

    def test_another_width_is_still_refused(self, tmp_path: Path) -> None:
        from training.checkpoints import initialize_from

        config = DirectUNetConfig(inputs=("t1_pre",), base_width=2, levels=2, output="residual")
        source, _ = self._checkpoint(tmp_path, config)
        other = dataclasses.replace(config, base_width=4, output_max=4.0)
        with pytest.raises(ValueError, match=r"its network is .*base_width"):
            initialize_from(DirectUNet(other), other, source)
