"""Training, checkpoint conversion, ONNX export and evaluation for the landmark model.

torch lives here only; the service consumes the ONNX file this package writes.
"""

__version__ = "0.1.0"
