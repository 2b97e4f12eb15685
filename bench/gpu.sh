#!/usr/bin/env bash
# The benchmarks on a GPU host: one command, results in bench/RESULTS-gpu.md (next to the CPU
# results in bench/RESULTS.md).
#
#   bash bench/gpu.sh                  # all sections: model, stages, service, memory
#   bash bench/gpu.sh model,service    # some sections (the other blocks of RESULTS-gpu.md are kept,
#                                      # so a host with a per-command time limit can run them one by one)
#
# It builds its own venv (bench/out/venv-gpu, git-ignored) WITHOUT constraints/ci.txt, so pip
# picks PyPI's CUDA build of torch, plus onnxruntime-gpu's `cuda` and `cudnn` extras (NVIDIA's
# CUDA 13 / cuDNN 9 wheels, as in the Dockerfile). Set GPU_PYTHON=/path/to/python to use an
# interpreter that already has everything (a host without internet access), GPU_TENSORRT=1 to
# also pip-install TensorRT for the TensorRT rows, and BENCH_ARGS (e.g. --quick) for extra flags.
#
# Written without a GPU at hand: it has not been run yet. Every GPU variant that fails is
# reported in the results as "not measured (reason)" instead of stopping the run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECTIONS="${1:-model,stages,service,memory}"
VENV=bench/out/venv-gpu

nvidia-smi || { echo "gpu.sh: nvidia-smi failed; is this a GPU host?" >&2; exit 2; }

if [ -n "${GPU_PYTHON:-}" ]; then
  PY="$GPU_PYTHON"
else
  PY="$VENV/bin/python"
  if [ ! -f "$VENV/.installed" ]; then
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e '.[export,dev]' 'onnxruntime-gpu[cuda,cudnn]'
    if [ "${GPU_TENSORRT:-0}" = 1 ]; then
      "$PY" -m pip install --quiet tensorrt
    fi
    touch "$VENV/.installed"
  fi
fi

# NVIDIA's pip wheels put their libraries under site-packages/nvidia/*/lib (and tensorrt_libs),
# which the loader does not search; the server subprocess inherits this path.
NV_LIBS="$("$PY" - <<'EOF'
import glob, os, site
dirs = []
for base in site.getsitepackages():
    dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
    dirs += glob.glob(os.path.join(base, "tensorrt_libs"))
print(":".join(sorted(set(dirs))))
EOF
)"
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

"$PY" - <<'EOF'
import onnxruntime as ort, torch
print("onnxruntime", ort.__version__, "available providers:", ort.get_available_providers())
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
EOF

# shellcheck disable=SC2086
"$PY" -m bench --gpu yes --providers cuda,cpu --results bench/RESULTS-gpu.md \
  --only "$SECTIONS" ${BENCH_ARGS:-}
echo "gpu.sh: wrote bench/RESULTS-gpu.md"
