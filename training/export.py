"""Export a trained network to ONNX, check ONNX Runtime against PyTorch, and write the model folder."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from operators.model_manifest import MANIFEST_FILE, ModelManifest, file_sha256
from training.manifests import (
    DEFAULT_INTENDED_USE,
    MODEL_FILE,
    build_manifest,
    check_fits,
    differential_manifest_fields,
    direct_manifest_fields,
)
from training.model_card import render_model_card
from training.networks import (
    CONDITION_FEATURES,
    GRID_CONDITION_FEATURES,
    SEQUENCE_CONDITION_FEATURES,
    DifferentialUNet,
    DirectUNet,
    describe_network,
)

__all__ = [
    "DEFAULT_INTENDED_USE",
    "MODEL_FILE",
    "OPSET",
    "TOLERANCE",
    "CheckInput",
    "ExportMismatchError",
    "check_onnx",
    "differential_manifest_fields",
    "direct_manifest_fields",
    "export_onnx",
    "random_check_inputs",
    "write_model_folder",
]

logger = logging.getLogger(__name__)

#: ONNX opset of exported models (ONNX Runtime 1.32 runs up to 23; 17 is what the legacy exporter knows best).
OPSET = 17
#: Largest |ONNX Runtime - PyTorch| accepted by ``check_onnx``.
TOLERANCE = 1e-4
#: One check case: (image (N, C, D, H, W), condition (N, F) or None).
CheckInput = tuple[np.ndarray, np.ndarray | None]


class ExportMismatchError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance: the exported graph is wrong."""


def random_check_inputs(network: torch.nn.Module, *, seed: int = 0) -> list[CheckInput]:
    """Random inputs that exercise the dynamic axes: two spatial sizes (multiples of the divisor), batch 1 and 2,
    plus an odd size for the differential U-Net (which accepts any size); plausible [d, B, r1, sigma(, v)] conditions.
    """
    channels, features, divisor = describe_network(network)
    rng = np.random.default_rng(seed)
    side = max(16, divisor)
    shapes: list[tuple[int, ...]] = [(1, side, side, side), (2, side, side + divisor, 2 * side)]
    if isinstance(network, DifferentialUNet):
        shapes.append((1, side + 1, side + 3, side + 5))
    cases: list[CheckInput] = []
    for n, *spatial in shapes:
        image = rng.standard_normal((n, channels, *spatial)).astype(np.float32)
        condition = None if features is None else _random_condition(rng, n, features)
        cases.append((image, condition))
    return cases


def _random_condition(rng: np.random.Generator, n: int, features: int) -> np.ndarray:
    if features not in (len(CONDITION_FEATURES), len(GRID_CONDITION_FEATURES), len(SEQUENCE_CONDITION_FEATURES)):
        return rng.uniform(0.0, 1.0, (n, features)).astype(np.float32)
    dose = rng.uniform(0.1, 0.33, n)
    field = rng.choice([1.5, 3.0], n)
    r1 = rng.uniform(3.4, 4.6, n)
    sigma = rng.uniform(0.01, 0.05, n)
    voxel = rng.uniform(1.0, 4.0, n)
    inversion = rng.integers(0, 2, n).astype(float)
    return np.stack([dose, field, r1, sigma, voxel, inversion][:features], axis=1).astype(np.float32)


def export_onnx(
    network: torch.nn.Module,
    path: Path | str,
    *,
    input_tensor: str = "image",
    condition_tensor: str | None = "condition",
    output_tensor: str = "y_hat",
    opset: int = OPSET,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``network`` as ONNX with dynamic batch and spatial axes (the network itself is left untouched).

    Parameters
    ----------
    network:
        A ``DifferentialUNet`` (inputs image and condition) or ``DirectUNet`` (image only).
    path:
        The .onnx file to write.
    input_tensor, condition_tensor, output_tensor:
        Tensor names (the manifest's ``input_tensor``, ``condition_tensor`` and ``output.tensor``);
        ``condition_tensor`` is ignored for a network without condition.
    opset:
        ONNX opset.
    metadata:
        Extra ``metadata_props`` (e.g. name, version, network config as JSON).

    Raises
    ------
    TypeError
        When ``network`` is not a GadSynth network.
    """
    channels, features, divisor = describe_network(network)
    path = Path(path)
    model = copy.deepcopy(network).to("cpu", torch.float32).eval()
    side = max(16, divisor)
    image = torch.zeros(1, channels, side, side, side)
    names = [input_tensor]
    dynamic: dict[str, dict[int, str]] = {
        input_tensor: {0: "N", 2: "D", 3: "H", 4: "W"},
        output_tensor: {0: "N", 2: "D", 3: "H", 4: "W"},
    }
    args: tuple[torch.Tensor, ...] = (image,)
    if features is not None:
        if not condition_tensor:
            raise ValueError(f"{type(network).__name__} takes a condition: condition_tensor must be named")
        args = (image, torch.zeros(1, features))
        names.append(condition_tensor)
        dynamic[condition_tensor] = {0: "N"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy (TorchScript) exporter: no onnxscript here
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=[output_tensor],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    proto.producer_name = "gadsynth.training.export"
    proto.doc_string = f"GadSynth {type(network).__name__}. Research use only; not for diagnosis."
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    logger.info("exported %s to %s (opset %d, %d bytes)", type(network).__name__, path, opset, path.stat().st_size)
    return path


def check_onnx(
    network: torch.nn.Module,
    path: Path | str,
    inputs: Sequence[CheckInput] | None = None,
    *,
    input_tensor: str = "image",
    condition_tensor: str | None = "condition",
    output_tensor: str = "y_hat",
    tolerance: float = TOLERANCE,
) -> float:
    """Run the ONNX file with ONNX Runtime (CPU, full graph optimization, as the pipeline does) and PyTorch on the
    same inputs and return the largest absolute difference.

    Parameters
    ----------
    inputs:
        Cases (image, condition); None = ``random_check_inputs(network)``. Pass phantom-like inputs here too.
    tolerance:
        Largest accepted |difference| (1e-4).

    Raises
    ------
    ExportMismatchError
        When any output differs by more than ``tolerance`` or has another shape (the message says which case).
    ValueError
        When a case's condition does not fit the network (missing, or given to a network without condition).
    """
    _, features, _ = describe_network(network)
    cases = list(inputs) if inputs is not None else random_check_inputs(network)
    model = copy.deepcopy(network).to("cpu", torch.float32).eval()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # a correctness check on small inputs: threads only add contention
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for index, (image, condition) in enumerate(cases):
        label = f"case {index} (image {tuple(image.shape)})"
        if (condition is None) != (features is None):
            raise ValueError(
                f"{label}: {type(network).__name__} takes "
                f"{'no condition' if features is None else f'a condition of {features} values'}; "
                f"found {'none' if condition is None else tuple(condition.shape)}"
            )
        image32 = np.ascontiguousarray(image, dtype=np.float32)
        feeds = {input_tensor: image32}
        torch_args = [torch.from_numpy(image32)]
        if condition is not None and condition_tensor:
            condition32 = np.ascontiguousarray(condition, dtype=np.float32)
            feeds[condition_tensor] = condition32
            torch_args.append(torch.from_numpy(condition32))
        with torch.no_grad():
            expected = model(*torch_args).numpy()
        found = np.asarray(session.run([output_tensor], feeds)[0])
        if found.shape != expected.shape:
            raise ExportMismatchError(
                f"{path}: {label}: ONNX Runtime output shape {found.shape}, PyTorch {expected.shape}"
            )
        difference = float(np.max(np.abs(found - expected))) if expected.size else 0.0
        if not np.isfinite(difference):
            raise ExportMismatchError(f"{path}: {label}: non-finite output (ONNX Runtime or PyTorch)")
        logger.debug("%s: max |ONNX Runtime - PyTorch| = %.3g", label, difference)
        if difference > tolerance:
            raise ExportMismatchError(
                f"{path}: {label}: ONNX Runtime and PyTorch differ by up to {difference:.3g} (tolerance "
                f"{tolerance:g}). The exported graph does not compute what the network does; check the opset and "
                "any operator whose export is approximate."
            )
        worst = max(worst, difference)
    logger.info("ONNX Runtime agrees with PyTorch on %d case(s): max |difference| %.3g", len(cases), worst)
    return worst


def _config_dict(network: torch.nn.Module) -> dict[str, Any]:
    if isinstance(network, DifferentialUNet | DirectUNet):
        return network.config.to_dict()
    raise TypeError(f"expected a DifferentialUNet or DirectUNet; found {type(network).__name__}")


def _load_evaluation(evaluation: Mapping[str, Any] | Path | str | None) -> Mapping[str, Any] | None:
    if evaluation is None or isinstance(evaluation, Mapping):
        return evaluation
    path = Path(evaluation)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"evaluation JSON {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"evaluation JSON {path} must hold an object; found {type(data).__name__}")
    return data


def write_model_folder(
    network: torch.nn.Module,
    folder: Path | str,
    manifest_fields: Mapping[str, Any],
    *,
    check_inputs: Sequence[CheckInput] | None = None,
    evaluation: Mapping[str, Any] | Path | str | None = None,
    training: Mapping[str, Any] | None = None,
    run: Mapping[str, Any] | None = None,
    limits: Sequence[str] = (),
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
) -> ModelManifest:
    """Export, check and package a network as a model folder the pipeline loads.

    Writes ``model.onnx``, ``manifest.json`` (with the model's sha256), ``model.onnx.sha256`` (``sha256sum -c``
    format), ``MODEL_CARD.md``, ``training.json`` (network config and what the caller says about training) and,
    when given, ``evaluation.json``. The folder is assembled beside the target and moved into place only after
    the ONNX check passed, then loaded back through ``ModelManifest.load`` (which verifies the sha256).

    Parameters
    ----------
    network:
        The trained ``DifferentialUNet`` or ``DirectUNet``.
    folder:
        The model folder (``models/<name>``).
    manifest_fields:
        Every manifest field except ``sha256`` (see ``differential_manifest_fields`` / ``direct_manifest_fields``).
    check_inputs:
        Extra (image, condition) cases for the ONNX check, e.g. phantom patches; random cases always run too.
    evaluation:
        Evaluation results (a mapping or a JSON file) for the model card's metrics table; see
        ``training.model_card.metrics_table`` for the accepted shapes.
    training:
        What the model was trained on and how (data description, steps, seeds, loss); written to training.json and
        summarized in the card. ``training["data"]`` replaces the default training-data paragraph.
    run:
        The full training configuration (``training.json`` ``run``; not rendered in the card).
    limits:
        Extra limitations for the model card.
    tolerance:
        Largest accepted |ONNX Runtime - PyTorch|.
    overwrite:
        Replace an existing non-empty folder.

    Raises
    ------
    ValueError
        When the manifest fields are invalid or do not fit the network, or the evaluation JSON is unreadable.
    FileExistsError
        When the folder exists, is not empty, and ``overwrite`` is False.
    ExportMismatchError
        When ONNX Runtime and PyTorch disagree by more than ``tolerance`` (nothing is written then).
    """
    folder = Path(folder)
    draft = build_manifest(manifest_fields, "0" * 64)
    check_fits(network, draft)
    evaluation_data = _load_evaluation(evaluation)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"model folder {folder} exists and is not empty; pass overwrite=True to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    config = _config_dict(network)
    input_tensor, condition_tensor, output_tensor = draft.input_tensor, draft.condition_tensor, draft.output.tensor
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model folder is read by the service user too
    try:
        model_path = staging / draft.model_file
        export_onnx(
            network,
            model_path,
            input_tensor=input_tensor,
            condition_tensor=condition_tensor,
            output_tensor=output_tensor,
            metadata={"gadsynth.name": draft.name, "gadsynth.version": draft.version, "network": json.dumps(config)},
        )
        cases = random_check_inputs(network) + list(check_inputs or [])
        worst = check_onnx(
            network,
            model_path,
            cases,
            tolerance=tolerance,
            input_tensor=input_tensor,
            condition_tensor=condition_tensor,
            output_tensor=output_tensor,
        )
        manifest = build_manifest(manifest_fields, file_sha256(model_path))
        (staging / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
        (staging / f"{draft.model_file}.sha256").write_text(f"{manifest.sha256}  {draft.model_file}\n", "utf-8")
        parameters = int(sum(p.numel() for p in network.parameters()))
        onnx_check = {"cases": len(cases), "max_abs_difference": worst, "tolerance": tolerance}
        record = {
            "network": config,
            "parameters": parameters,
            "onnx_check": onnx_check,
            "training": dict(training or {}),
        }
        if run is not None:
            record["run"] = dict(run)
        (staging / "training.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        if evaluation_data is not None:
            (staging / "evaluation.json").write_text(
                json.dumps(evaluation_data, indent=2, default=str) + "\n", encoding="utf-8"
            )
        card = render_model_card(
            manifest,
            network_config=config,
            parameters=parameters,
            onnx_check=onnx_check,
            evaluation=evaluation_data,
            training=training,
            limits=limits,
            opset=OPSET,
        )
        (staging / manifest.model_card).write_text(card, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    loaded = ModelManifest.load(folder)
    logger.info("model folder %s written: %s %s, sha256 %s", folder, loaded.name, loaded.version, loaded.sha256[:12])
    return loaded
