"""GadSynth pipeline stages: plain, typed functions (one module each), with no import of ``app`` or ``training``."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("gadsynth")
except PackageNotFoundError:  # a source tree used without installing it
    __version__ = "0.1.0"
