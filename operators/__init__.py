"""GadSynth pipeline operators: thin MONAI Deploy wrappers over plain, typed functions (one module each)."""

__all__: list[str] = []
