"""GadSynth application: MAP entry point, command line, service and DICOM node."""

from operators import __version__

__all__ = ["__version__"]
