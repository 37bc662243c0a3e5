"""MAP entry point: `python -m app -i STUDY -o OUT -m MODELS` (the SDK's options and HOLOSCAN_* variables honoured)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

__all__ = ["main"]

#: The SDK's log levels (monai.deploy.core.arg_parser) and the Python level each means.
LOG_LEVELS = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARN": "WARNING",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
}
#: Exit code of a command line that cannot be parsed: 2 means "study not eligible" in our contract.
USAGE_ERROR = 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _log_level(text: str) -> str:
    level = LOG_LEVELS.get(text.upper())
    if level is None:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}; found {text!r}")
    return level


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m app",
        description="GadSynth MAP: synthesize a contrast-enhanced T1 series from a brain MRI study "
        "(research use, not for diagnosis).",
        epilog="Exit codes: 0 success; 2 the study is not eligible or is broken (report.json says why); 1 an "
        "internal error, a bad installation or an unusable command line.",
    )
    parser.add_argument("-i", "--input", type=Path, default=None, help="Study folder (default: $HOLOSCAN_INPUT_PATH).")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="Output folder (default: $HOLOSCAN_OUTPUT_PATH)."
    )
    parser.add_argument("-m", "--model", type=Path, default=None, help="Models folder (default: $HOLOSCAN_MODEL_PATH).")
    parser.add_argument(
        "-w", "--workdir", type=Path, default=None, help="Working folder (accepted as the SDK's runners pass it)."
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="Model sub-folder to run (default: chosen by the roles the study has; see app/model_choice.py).",
    )
    parser.add_argument("--preview", action="store_true", help="Also write preview.png.")
    parser.add_argument("--study", default=None, help="StudyInstanceUID to process when the input holds several.")
    parser.add_argument(
        "-l", "--log-level", type=_log_level, default=None, help=f"One of {', '.join(LOG_LEVELS)} (case-insensitive)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the pipeline once, return the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level or "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from pydantic import ValidationError

    from app.config import load_settings

    overrides: dict[str, object] = {}
    for key, value in (("models_dir", args.model), ("input_path", args.input), ("output_path", args.output)):
        if value is not None:
            overrides[key] = value
    if args.model_name:
        overrides["model"] = args.model_name
    from app.runner import configuration_error, run_study

    try:
        settings = load_settings(**overrides)
    except (ValidationError, ValueError) as exc:
        return configuration_error(args.output, exc)
    if args.log_level is None:
        logging.getLogger().setLevel(settings.log_level)

    report = run_study(
        settings.input_path or Path("input"),
        settings.output_path or Path("output"),
        settings=settings,
        preview=args.preview,
        study_instance_uid=args.study,
    )
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
