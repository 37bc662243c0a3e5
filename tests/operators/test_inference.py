"""ONNX inference: providers, cached sessions, sliding window == whole volume, flip TTA, the baseline model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from operators.inference import (
    CROP_CONTEXT_VOXELS,
    PROVIDER_PRIORITY,
    InferenceSettings,
    brain_box,
    gaussian_importance,
    get_session,
    predict_volume,
    select_providers,
    sliding_window,
    window_for,
)
from operators.model_manifest import ModelManifest, file_sha256
from tests.conftest import REPO

BASELINE = REPO / "models" / "ce-baseline-linear"


def conv_model(kernel: np.ndarray) -> onnx.ModelProto:
    """A single 3D convolution (zero padding, 'same' size): a local model with a 3-voxel receptive field."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])
    output = helper.make_tensor_value_info("y_hat", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])
    weight = numpy_helper.from_array(kernel.astype(np.float32).reshape(1, 1, *kernel.shape), "weight")
    node = helper.make_node("Conv", ["image", "weight"], ["y_hat"], pads=[1] * 6)
    graph = helper.make_graph([node], "conv", [image], [output], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def write_model(folder: Path, model: onnx.ModelProto, **overrides: Any) -> ModelManifest:
    """A model folder with a direct (z-score, t1_pre -> image) manifest; ``overrides`` replace manifest fields."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    manifest: dict[str, Any] = {
        "name": folder.name,
        "version": "0.0.1",
        "description": "test model",
        "intended_use": "tests",
        "mode": "zero_dose_direct",
        "required_roles": ["t1_pre"],
        "sha256": file_sha256(path),
        "inputs": [{"name": "t1_pre"}],
        "normalization": {"kind": "zscore"},
        "output": {"tensor": "y_hat", "meaning": "image"},
    }
    manifest.update(overrides)
    (folder / "manifest.json").write_text(ModelManifest.model_validate(manifest).to_json(), encoding="utf-8")
    return ModelManifest.load(folder)


@pytest.fixture(scope="module")
def smooth_kernel() -> np.ndarray:
    kernel = np.random.default_rng(0).uniform(0.0, 1.0, (3, 3, 3))
    return kernel / kernel.sum()


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.normal(0.0, 1.0, (1, 40, 52, 36)).astype(np.float32)


class TestProviders:
    def test_priority_by_availability(self) -> None:
        everything = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "X"]
        assert select_providers(available=everything) == list(PROVIDER_PRIORITY)
        assert select_providers(available=["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
        assert select_providers(available=["AzureExecutionProvider", "CPUExecutionProvider"]) == [
            "CPUExecutionProvider"
        ]

    def test_override_keeps_cpu_fallback(self) -> None:
        available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert select_providers(["CUDAExecutionProvider"], available=available) == available
        assert select_providers(["CPUExecutionProvider"], available=available) == ["CPUExecutionProvider"]

    def test_unavailable_override(self) -> None:
        with pytest.raises(ValueError, match=r"providers \['TensorrtExecutionProvider'\] are not available here"):
            select_providers(["TensorrtExecutionProvider"], available=["CPUExecutionProvider"])

    def test_this_machine(self) -> None:
        chosen = select_providers()
        assert chosen[-1] == "CPUExecutionProvider"
        assert all(p in ort.get_available_providers() for p in chosen)


class TestSession:
    def test_one_session_per_model_and_settings(self, tmp_path: Path, smooth_kernel: np.ndarray) -> None:
        manifest = write_model(tmp_path / "conv", conv_model(smooth_kernel))
        first = get_session(manifest)
        assert get_session(ModelManifest.load(tmp_path / "conv")) is first
        assert get_session(manifest, InferenceSettings(intra_op_threads=1)) is not first
        assert first.get_providers()[-1] == "CPUExecutionProvider"


class TestSlidingWindow:
    def test_gaussian_weights(self) -> None:
        weight = gaussian_importance((16, 20, 12))
        assert weight.shape == (16, 20, 12)
        assert float(weight.max()) == pytest.approx(1.0, abs=0.05)
        assert float(weight.min()) > 0.0
        np.testing.assert_allclose(weight, weight[::-1, ::-1, ::-1], rtol=1e-6)

    def test_equals_whole_volume_for_a_local_model(
        self, tmp_path: Path, smooth_kernel: np.ndarray, volume: np.ndarray
    ) -> None:
        whole_manifest = write_model(tmp_path / "whole", conv_model(smooth_kernel))
        tiled_manifest = write_model(tmp_path / "tiled", conv_model(smooth_kernel), patch_size=[24, 24, 24])
        whole, calls = predict_volume(get_session(whole_manifest), whole_manifest, volume, None)
        assert calls == 1
        tiled, patches = predict_volume(get_session(tiled_manifest), tiled_manifest, volume, None)
        assert patches == 3 * 4 * 2  # windows start every 12 voxels: 0,8,16 x 0,9,19,28 x 0,12
        assert tiled.shape == whole.shape == volume.shape
        inner = (slice(None), *(slice(1, -1),) * 3)
        # Only voxels next to a window edge differ (zero padding there), and the Gaussian weights make their share
        # of the blend tiny; away from window edges the two are identical.
        assert float(np.abs(tiled - whole)[inner].max()) < 0.02 * float(np.abs(whole).max())
        assert float(np.abs(tiled - whole).mean()) < 1e-3

    def test_pointwise_model_is_exact(self, volume: np.ndarray) -> None:
        def run(batch: np.ndarray) -> np.ndarray:
            return batch * 2.0 + 1.0

        out, patches = sliding_window(run, volume, (16, 16, 16), overlap=0.25, batch_size=4)
        assert patches == 3 * 4 * 3
        np.testing.assert_allclose(out, volume * 2.0 + 1.0, rtol=1e-5, atol=1e-5)

    def test_volume_smaller_than_a_window(self, volume: np.ndarray) -> None:
        out, patches = sliding_window(lambda b: b * 3.0, volume[:, :10, :12, :8], (16, 16, 16))
        assert patches == 1
        np.testing.assert_allclose(out, volume[:, :10, :12, :8] * 3.0, rtol=1e-6)

    def test_batched_windows(self, tmp_path: Path, smooth_kernel: np.ndarray, volume: np.ndarray) -> None:
        one = write_model(tmp_path / "one", conv_model(smooth_kernel), patch_size=[24, 24, 24])
        four = write_model(tmp_path / "four", conv_model(smooth_kernel), patch_size=[24, 24, 24], batch_size=4)
        a, _ = predict_volume(get_session(one), one, volume, None)
        b, _ = predict_volume(get_session(four), four, volume, None)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    def test_spatial_divisor_pads_and_crops(self, tmp_path: Path, smooth_kernel: np.ndarray) -> None:
        manifest = write_model(tmp_path / "div", conv_model(smooth_kernel), spatial_divisor=16)
        odd = np.ones((1, 21, 30, 17), dtype=np.float32)
        out, _ = predict_volume(get_session(manifest), manifest, odd, None)
        assert out.shape == odd.shape
        assert float(out[0, 10, 15, 8]) == pytest.approx(1.0, rel=1e-5)  # interior: kernel sums to 1


class TestFlipTTA:
    def test_tta_averages_the_eight_flips(self, tmp_path: Path, volume: np.ndarray) -> None:
        shift = np.zeros((3, 3, 3))
        shift[1, 1, 0] = 1.0  # out[x] = in[x - 1] along the last axis: not flip-symmetric
        manifest = write_model(tmp_path / "shift", conv_model(shift))
        plain, _ = predict_volume(get_session(manifest), manifest, volume, None)
        averaged, _ = predict_volume(get_session(manifest), manifest, volume, None, tta=True)
        inner = (slice(None), slice(None), slice(None), slice(1, -1))
        np.testing.assert_allclose(plain[..., 1:], volume[..., :-1], atol=1e-6)
        expected = 0.5 * (volume[..., :-2] + volume[..., 2:])  # flipped pass shifts the other way
        np.testing.assert_allclose(averaged[inner], expected, atol=1e-5)

    def test_tta_leaves_symmetric_models_alone(self, tmp_path: Path, volume: np.ndarray) -> None:
        kernel = np.ones((3, 3, 3)) / 27.0
        manifest = write_model(tmp_path / "box", conv_model(kernel))
        plain, _ = predict_volume(get_session(manifest), manifest, volume, None)
        averaged, _ = predict_volume(get_session(manifest), manifest, volume, None, tta=True)
        np.testing.assert_allclose(averaged, plain, atol=1e-5)


class TestBaselineModel:
    def test_linear_dose_scaling(self) -> None:
        manifest = ModelManifest.load(BASELINE)
        rng = np.random.default_rng(2)
        x_pc = rng.uniform(0.2, 1.2, (20, 24, 16)).astype(np.float32)
        x_ld = x_pc + rng.uniform(0.0, 0.3, x_pc.shape).astype(np.float32)
        brain = np.zeros_like(x_pc)
        brain[4:16, 4:20, 4:12] = 1.0
        inputs = np.stack([x_pc, x_ld, brain])
        out, _ = predict_volume(get_session(manifest), manifest, inputs, np.array([0.25], dtype=np.float32))
        np.testing.assert_allclose(out[0], brain * (x_ld - x_pc) / 0.25, rtol=1e-5, atol=1e-6)
        tiny, _ = predict_volume(get_session(manifest), manifest, inputs, np.array([0.0], dtype=np.float32))
        assert np.isfinite(tiny).all()  # the dose is floored at 0.01 inside the graph


class TestWindowForLargeVolumes:
    """Whole-volume models are run in windows above a voxel budget (memory), choosing the cheapest window."""

    def test_small_volumes_run_whole(self) -> None:
        manifest = ModelManifest.load(REPO / "models" / "ce-lowdose-v1")
        assert window_for((192, 256, 256), manifest, None) is None
        assert window_for((48, 64, 64), manifest, 8_000_000) is None

    def test_a_slab_across_the_head_when_it_fits(self) -> None:
        manifest = ModelManifest.load(REPO / "models" / "ce-lowdose-v1")
        window = window_for((192, 256, 256), manifest, 8_000_000)
        assert window == (120, 256, 256)
        assert math.prod(window) <= 8_000_000 and all(n % manifest.spatial_divisor == 0 for n in window)


class TestBrainBox:
    """The network runs on the brain's bounding box, grown by the post-processing margin and the context."""

    def test_box_grows_by_margin_and_context(self) -> None:
        brain = np.zeros((120, 160, 140), dtype=bool)
        brain[40:80, 50:100, 30:90] = True
        box = brain_box(brain, (1.0, 1.0, 1.0), margin_mm=5.0, divisor=1)
        assert box is not None
        grow = 5 + CROP_CONTEXT_VOXELS
        assert box.start == (40 - grow, 50 - grow, 30 - grow)
        assert box.stop == (80 + grow, 100 + grow, 90 + grow)
        assert box.to_dict()["voxel_fraction"] == pytest.approx(math.prod(box.shape) / brain.size, abs=1e-4)

    def test_sides_are_multiples_of_the_divisor_inside_the_volume(self) -> None:
        brain = np.zeros((50, 64, 70), dtype=bool)
        brain[2:45, 30:33, 10:21] = True  # touches the first and (nearly) the last slice
        box = brain_box(brain, (2.0, 1.0, 0.5), margin_mm=4.0, context_voxels=3, divisor=8)
        assert box is not None
        assert all(0 <= a < b <= n for a, b, n in zip(box.start, box.stop, brain.shape, strict=True))
        assert box.shape[0] == 50  # grown past both ends: the whole axis (inference pads it to 56)
        assert box.shape[1] % 8 == 0 and box.shape[2] % 8 == 0
        assert box.start[1] <= 30 - 4 - 3 and box.stop[1] >= 33 + 4 + 3
        assert box.start[2] == 0 and box.stop[2] >= 21 + 8 + 3  # 4 mm = 8 voxels of 0.5 mm, clipped at 0

    def test_empty_mask_runs_the_whole_volume(self) -> None:
        assert brain_box(np.zeros((8, 8, 8), dtype=bool), (1.0, 1.0, 1.0), margin_mm=5.0) is None
