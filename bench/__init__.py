"""Benchmarks of the face-landmark service (`make bench`; never part of `make test`).

Sections: model (PyTorch vs onnxruntime, FLOPs, floor), stages (decode, warp, DARK, inverse
transform, JSON), service (real uvicorn under load vs bare session.run), memory (RSS, growth).
Results: bench/RESULTS.md. Soak: `python -m bench.soak`. GPU: `bash bench/gpu.sh`.
"""
