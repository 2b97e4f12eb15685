"""Face-landmark service: HRNetV2-W18 + DARK (WFLW, 98 points) on onnxruntime behind FastAPI.

`service` never imports torch; the ONNX file written by `model_export` is its only input.
"""

__version__ = "0.1.0"
