"""GadSynth application: MAP entry point, command line, service and DICOM node."""

__all__: list[str] = []
__version__ = "0.1.0"
