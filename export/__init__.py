"""Export to ONNX and the onnxruntime engine."""
