"""MAP entry point: `python -m app -i STUDY -o OUT -m MODELS` (the SDK's options and HOLOSCAN_* variables honoured)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from app.config import LOG_LEVELS

__all__ = ["USAGE_ERROR", "main"]

logger = logging.getLogger(__name__)

#: Exit code of a command line that cannot be parsed: not argparse's 2, which means "study not eligible" here.
USAGE_ERROR = 1

EPILOG = """\
Options mirror the MONAI Deploy SDK's (monai.deploy.core.arg_parser), so MAP runners can call this as any MAP;
-w and -t are accepted and not used. Without -i/-o/-m: $GADSYNTH_INPUT_PATH, $GADSYNTH_OUTPUT_PATH,
$GADSYNTH_MODELS_DIR, then the MAP's $HOLOSCAN_INPUT_PATH, $HOLOSCAN_OUTPUT_PATH, $HOLOSCAN_MODEL_PATH, then
the YAML file named by $GADSYNTH_CONFIG, then ./input, ./output and the models/ folder beside the app package.

Exit codes: 0 success; 2 the study is not eligible or is broken (report.json says why); 1 an internal error,
a bad installation or configuration (e.g. no models folder; report.json is written when the output folder is
known) or an unusable command line (usage errors exit 1, not argparse's 2)."""


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
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-l",
        "--log-level",
        type=_log_level,
        default=None,
        help=f"One of {', '.join(LOG_LEVELS)}, case-insensitive (default: $GADSYNTH_LOG_LEVEL, else INFO).",
    )
    parser.add_argument("-i", "--input", type=Path, default=None, help="Study folder (default: $HOLOSCAN_INPUT_PATH).")
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="Output folder (default: $HOLOSCAN_OUTPUT_PATH)."
    )
    parser.add_argument("-m", "--model", type=Path, default=None, help="Models folder (default: $HOLOSCAN_MODEL_PATH).")
    parser.add_argument(
        "-w",
        "--workdir",
        type=Path,
        default=None,
        help="Working folder (accepted as the SDK's runners pass it; unused).",
    )
    parser.add_argument(
        "-t",
        "--triton-server-netloc",
        default=None,
        help="Triton server host:port (accepted as the SDK's runners pass it; unused: inference runs in-process).",
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="Model sub-folder to run (default: chosen by the roles the study has; see app/model_choice.py).",
    )
    parser.add_argument("--preview", action="store_true", help="Also write preview.png.")
    parser.add_argument("--study", default=None, help="StudyInstanceUID to process when the input holds several.")
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

    from app.config import load_settings, output_folder

    overrides: dict[str, object] = {}
    for key, value in (
        ("models_dir", args.model),
        ("input_path", args.input),
        ("output_path", args.output),
        ("model", args.model_name),
        ("log_level", args.log_level),
    ):
        if value is not None:
            overrides[key] = value
    from app.runner import configuration_error, run_study

    try:
        settings = load_settings(**overrides)
    except (ValidationError, ValueError) as exc:
        return configuration_error(output_folder(**overrides), exc)
    logging.getLogger().setLevel(settings.log_level)
    if args.triton_server_netloc:
        logger.info("--triton-server-netloc %s ignored: inference runs in this process", args.triton_server_netloc)

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
