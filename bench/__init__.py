"""Benchmarks of the face-landmark service (`make bench`; never part of `make test`).

Sections: model (PyTorch vs onnxruntime, FLOPs, floor), stages (decode, warp, DARK, inverse
transform, JSON, detection, rendering), service (real uvicorn under load vs bare session.run),
serving (the serving layer with an instant network: server CPU per face vs the inherent work,
1 and 2 workers), memory (RSS, growth).
Results: bench/RESULTS.md. Soak: `python -m bench.soak`. GPU: `bash bench/gpu.sh`.
"""
