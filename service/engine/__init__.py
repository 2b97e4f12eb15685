"""onnxruntime session factory and the async dynamic batcher."""
