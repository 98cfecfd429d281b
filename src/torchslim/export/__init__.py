"""Deployable artifacts: sparse safetensors, ONNX, torch-native int8 (each in its own module)."""
