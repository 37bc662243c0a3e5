"""MAP entry point: `python -m app -i STUDY -o OUT -m MODELS` (HOLOSCAN_* variables honoured)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="GadSynth MAP: synthesize a contrast-enhanced T1 series from a brain MRI study "
        "(research use, not for diagnosis). Exit codes: 0 success, 2 study not eligible or broken, 1 internal error.",
    )
    parser.add_argument("-i", "--input", type=Path, default=None, help="Study folder (default: $HOLOSCAN_INPUT_PATH).")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="Output folder (default: $HOLOSCAN_OUTPUT_PATH)."
    )
    parser.add_argument("-m", "--model", type=Path, default=None, help="Models folder (default: $HOLOSCAN_MODEL_PATH).")
    parser.add_argument(
        "--model-name",
        default=None,
        help="Model sub-folder to run (default: chosen by the roles the study has; see app/model_choice.py).",
    )
    parser.add_argument("--preview", action="store_true", help="Also write preview.png.")
    parser.add_argument("--study", default=None, help="StudyInstanceUID to process when the input holds several.")
    parser.add_argument("-l", "--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the pipeline once, return the exit code."""
    args = _parser().parse_args(argv)
    from app.config import load_settings

    overrides: dict[str, object] = {}
    models = args.model or (Path(os.environ["HOLOSCAN_MODEL_PATH"]) if os.environ.get("HOLOSCAN_MODEL_PATH") else None)
    if models is not None:
        overrides["models_dir"] = models
    if args.model_name:
        overrides["model"] = args.model_name
    settings = load_settings(**overrides)
    logging.basicConfig(
        level=args.log_level or settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    input_path = args.input or Path(os.environ.get("HOLOSCAN_INPUT_PATH", "input"))
    output_path = args.output or Path(os.environ.get("HOLOSCAN_OUTPUT_PATH", "output"))
    from app.runner import run_study

    report = run_study(input_path, output_path, settings=settings, preview=args.preview, study_instance_uid=args.study)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
