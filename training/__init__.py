"""Phantom simulator, datasets, networks, training, ONNX export and evaluation."""
