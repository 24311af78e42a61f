"""Deployment export: ONNX with the vocabulary folded into the weights (`export_onnx`), or as an
input (`dynamic_vocab`), optionally with NMS in the graph; `run_onnx` runs a file with onnxruntime."""
from worldtune.export.check import run_onnx
from worldtune.export.onnx import build_export_module, export_onnx

__all__ = ["build_export_module", "export_onnx", "run_onnx"]
