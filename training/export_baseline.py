"""Export the linear dose-scaling baseline (x_PC + (x_LD - x_PC) / d in the brain) as an ONNX model folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from operators.model_manifest import ModelManifest, file_sha256
from training.manifests import MODEL_FILE, baseline_manifest_fields, build_manifest

__all__ = ["BASELINE_NAME", "BASELINE_VERSION", "MIN_DOSE", "build_graph", "export_baseline", "main"]

logger = logging.getLogger(__name__)

BASELINE_NAME = "ce-baseline-linear"
BASELINE_VERSION = "1.0.0"
#: Doses below this are clamped before dividing (0.01 of the standard dose would amplify noise 100x already).
MIN_DOSE = 0.01
OPSET = 17
IR_VERSION = 8
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "models" / BASELINE_NAME


def build_graph() -> onnx.ModelProto:
    """The baseline as an ONNX graph: y_hat = brain_mask * (x_ld - x_pc) / max(dose, MIN_DOSE).

    Inputs: ``image`` (N, 3, D, H, W) with channels x_pc, x_ld, brain_mask (normalized intensities, see the
    manifest) and ``condition`` (N, 1) = [dose]. Output: ``y_hat`` (N, 1, D, H, W), the standard-dose contrast
    signal in normalized intensity. Spatial and batch axes are dynamic.
    """
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "D", "H", "W"])
    condition = helper.make_tensor_value_info("condition", TensorProto.FLOAT, ["N", 1])
    output = helper.make_tensor_value_info("y_hat", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])
    initializers = [
        helper.make_tensor("split_sizes", TensorProto.INT64, [3], [1, 1, 1]),
        helper.make_tensor("dose_shape", TensorProto.INT64, [5], [-1, 1, 1, 1, 1]),
        helper.make_tensor("min_dose", TensorProto.FLOAT, [], [MIN_DOSE]),
    ]
    nodes = [
        helper.make_node("Split", ["image", "split_sizes"], ["x_pc", "x_ld", "brain_mask"], axis=1, name="channels"),
        helper.make_node("Sub", ["x_ld", "x_pc"], ["low_dose_signal"], name="subtraction"),
        helper.make_node("Reshape", ["condition", "dose_shape"], ["dose_raw"], name="dose_per_sample"),
        helper.make_node("Max", ["dose_raw", "min_dose"], ["dose"], name="dose_floor"),
        helper.make_node("Div", ["low_dose_signal", "dose"], ["scaled_signal"], name="linear_dose_scaling"),
        helper.make_node("Mul", ["scaled_signal", "brain_mask"], ["y_hat"], name="inside_brain"),
    ]
    graph = helper.make_graph(
        nodes,
        "linear_dose_scaling",
        [image, condition],
        [output],
        initializer=initializers,
        doc_string="y_hat = brain_mask * (x_ld - x_pc) / max(dose, 0.01): linear dose scaling, not a trained model.",
    )
    model = helper.make_model(
        graph,
        producer_name="gadsynth.training.export_baseline",
        producer_version=BASELINE_VERSION,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="GadSynth physics baseline: linear dose scaling. Not trained. Not for diagnosis.",
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    onnx.checker.check_model(model, full_check=True)
    return model


def _manifest(sha256: str) -> ModelManifest:
    fields = baseline_manifest_fields(
        name=BASELINE_NAME,
        version=BASELINE_VERSION,
        description=(
            "Linear dose scaling x_PC + (x_LD - x_PC) / d inside the brain: the physics baseline that every trained "
            "model is reported against (METHODS.md section 6). Runs through the same differential normalization "
            "and post-processing as the trained low-dose models."
        ),
        intended_use=(
            "Research and software testing only; a reference for evaluating trained models. Not a trained model, "
            "not a medical device, not for diagnosis."
        ),
    )
    return build_manifest(fields, sha256)


def _model_card(manifest: ModelManifest) -> str:
    return f"""# {manifest.name} {manifest.version}: linear dose scaling (physics baseline)

**What it is.** Not a trained network: a fixed formula written as an ONNX graph so that the whole GadSynth chain
(registration, brain mask, normalization, inference, post-processing, DICOM writers) runs before any trained model
exists, and so that trained models are always reported beside it (METHODS.md section 6).

    x_SD~ = x_PC + (x_LD - x_PC) / d     inside the brain mask;   x_SD~ = x_PC outside it

x_PC is the pre-contrast T1w, x_LD the low-dose post-contrast T1w rigidly registered onto x_PC, d the low-dose
level relative to the standard dose (0.1 mmol/kg = 1), from the DICOM header (ContrastBolusVolume, PatientWeight,
ContrastBolusAgent) or the request. Both images are scaled by their brain 95th percentile and x_LD is aligned to
x_PC by one robust scalar (the differential normalization, METHODS.md section 2 steps 3-4); the graph computes
y_hat = brain_mask * (x_ld - x_pc) / max(d, {MIN_DOSE}), and the post-processing multiplies y_hat back by the
95th percentile of x_PC and adds it to x_PC (synthetic standard dose) and to x_LD (beyond standard dose).

**Intended use.** {manifest.intended_use}

**Training data.** None: nothing is learned.

**Behaviour and limits.**
- Contrast grows linearly with dose only while the T1 change is small; gadolinium's signal saturates, so lesions
  with strong uptake come out brighter than at a real standard dose, and faint uptake stays faint.
- The noise of the low-dose subtraction is multiplied by 1/d (4x at d = 0.25, 10x at d = 0.1): the output is
  noisy, which is exactly what the trained differential models are meant to fix.
- Any misregistration between x_PC and x_LD is amplified by 1/d as well (bright / dark rims at edges).
- Outside the brain mask the output equals x_PC: no enhancement of dura, scalp or vessels outside the mask.

**Not for diagnosis.** Synthetic images must never replace a real contrast-enhanced acquisition.

**Files.** `model.onnx` (opset {OPSET}, inputs `image` (N, 3, D, H, W): x_pc, x_ld, brain_mask and `condition`
(N, 1): [dose]; output `y_hat` (N, 1, D, H, W)), `manifest.json`. sha256 of model.onnx: `{manifest.sha256}`.
Rebuild with `python -m training.export_baseline` (deterministic: the same bytes every time).
"""


def export_baseline(out_dir: Path = DEFAULT_OUT) -> Path:
    """Write ``model.onnx``, ``manifest.json`` and ``MODEL_CARD.md`` into ``out_dir``; return the manifest path.

    The export is deterministic: the same code writes byte-identical files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / MODEL_FILE
    model_path.write_bytes(build_graph().SerializeToString(deterministic=True))
    manifest = _manifest(file_sha256(model_path))
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(manifest.to_json(), encoding="utf-8")
    (out_dir / "MODEL_CARD.md").write_text(_model_card(manifest), encoding="utf-8")
    ModelManifest.load(out_dir)  # round trip: the folder must load and verify
    logger.info("exported %s %s to %s (sha256 %s)", manifest.name, manifest.version, out_dir, manifest.sha256)
    return manifest_path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m training.export_baseline [--out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export_baseline(args.out)


if __name__ == "__main__":
    main()
