"""Print GadSynth's pinned runtime requirements from pyproject.toml, one per line (the image's build stage).

``--flavour gpu`` swaps ``onnxruntime`` for the ``gpu`` extra's ``onnxruntime-gpu``: both install the same module,
so only one of them may be in an environment.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

#: What the image needs beyond GadSynth's dependencies. Holoscan (under the MONAI Deploy App SDK) links
#: libcudart.so.13 even on CPU; a development machine has it from its CUDA install, the image from this wheel
#: (its folder is on the image's LD_LIBRARY_PATH).
IMAGE_EXTRAS = ["nvidia-cuda-runtime==13.0.96"]


def requirements(pyproject: Path, flavour: str) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"]) + IMAGE_EXTRAS
    if flavour == "gpu":
        lines = [line for line in lines if re.split(r"[=<>!~\[ ;]", line, maxsplit=1)[0] != "onnxruntime"]
        lines += project["optional-dependencies"]["gpu"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flavour", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.flavour)))  # noqa: T201 - the output is the product


if __name__ == "__main__":
    main()
