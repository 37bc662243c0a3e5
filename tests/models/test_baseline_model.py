"""The committed baseline model: deterministic export, its formula, and the same normalize -> infer -> post path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from operators.model_manifest import ModelManifest, file_sha256
from tests.conftest import REPO
from training.export_baseline import MIN_DOSE, build_graph, export_baseline

BASELINE = REPO / "models" / "ce-baseline-linear"


class TestExport:
    def test_export_is_deterministic_and_matches_the_committed_files(self, tmp_path: Path) -> None:
        export_baseline(tmp_path / "a")
        export_baseline(tmp_path / "b")
        for name in ("model.onnx", "manifest.json", "MODEL_CARD.md"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
            assert (tmp_path / "a" / name).read_bytes() == (BASELINE / name).read_bytes(), name
        assert ModelManifest.load(tmp_path / "a").sha256 == file_sha256(BASELINE / "model.onnx")

    def test_graph_is_valid_with_dynamic_axes(self) -> None:
        model = onnx.load(str(BASELINE / "model.onnx"))
        onnx.checker.check_model(model, full_check=True)
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["N", 3, "D", "H", "W"]
        assert model.graph == build_graph().graph

    def test_model_card_says_what_it_is(self) -> None:
        card = (BASELINE / "MODEL_CARD.md").read_text()
        assert "Not a trained network" in card
        assert "Not for diagnosis" in card
        assert file_sha256(BASELINE / "model.onnx") in card


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    """The committed baseline, opened directly (no GadSynth code between the test and ONNX Runtime)."""
    return ort.InferenceSession(str(BASELINE / "model.onnx"), providers=["CPUExecutionProvider"])


class TestFormula:
    @pytest.mark.parametrize("dose", [0.1, 0.25, 0.33, 1.0])
    def test_linear_dose_scaling_inside_the_brain(self, session: ort.InferenceSession, dose: float) -> None:
        rng = np.random.default_rng(int(dose * 100))
        x_pc = rng.uniform(0.0, 1.2, (2, 1, 9, 10, 11)).astype(np.float32)
        x_ld = (x_pc + rng.uniform(-0.05, 0.4, x_pc.shape)).astype(np.float32)
        brain = (rng.uniform(size=x_pc.shape) > 0.3).astype(np.float32)
        image = np.concatenate([x_pc, x_ld, brain], axis=1)
        condition = np.array([[dose], [dose]], dtype=np.float32)
        (y_hat,) = session.run(["y_hat"], {"image": image, "condition": condition})
        np.testing.assert_allclose(y_hat, brain * (x_ld - x_pc) / dose, rtol=1e-6, atol=1e-6)
        synthetic = x_pc + y_hat
        np.testing.assert_allclose(synthetic[brain > 0], (x_pc + (x_ld - x_pc) / dose)[brain > 0], rtol=1e-5)
        np.testing.assert_array_equal(synthetic[brain == 0], x_pc[brain == 0])

    def test_enhancing_voxels_get_brighter(self, session: ort.InferenceSession) -> None:
        x_pc = np.full((1, 1, 4, 4, 4), 0.5, dtype=np.float32)
        x_ld = x_pc.copy()
        x_ld[..., 1:3, 1:3, 1:3] += 0.1  # low-dose uptake
        image = np.concatenate([x_pc, x_ld, np.ones_like(x_pc)], axis=1)
        (y_hat,) = session.run(["y_hat"], {"image": image, "condition": np.array([[0.2]], np.float32)})
        synthetic = x_pc + y_hat
        assert float(synthetic[..., 1:3, 1:3, 1:3].min()) == pytest.approx(1.0)  # 0.5 + 0.1 / 0.2
        assert float(synthetic[0, 0, 0, 0, 0]) == pytest.approx(0.5)

    def test_dose_floor(self, session: ort.InferenceSession) -> None:
        image = np.ones((1, 3, 2, 2, 2), dtype=np.float32)
        image[:, 0] = 0.0
        (y_hat,) = session.run(["y_hat"], {"image": image, "condition": np.array([[0.0]], np.float32)})
        np.testing.assert_allclose(y_hat, 1.0 / MIN_DOSE, rtol=1e-6)
