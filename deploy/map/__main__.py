"""The MAP's entry point: the packager's command is ``python3 /opt/holoscan/app``, which runs this file.

It runs GadSynth's MONAI Deploy application exactly as ``python -m app`` does (the same options, variables and
exit codes), with this folder, which holds the ``app``, ``operators`` and ``training`` packages, first on the path.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
runpy.run_module("app", run_name="__main__", alter_sys=True)
