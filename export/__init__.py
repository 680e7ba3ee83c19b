"""Export to ONNX and the onnxruntime engine: `keyprop export` (export/cli.py), graphs per frame size with DeformConv (export/exporter.py), OnnxEngine (export/engine.py)."""
