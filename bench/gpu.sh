#!/usr/bin/env bash
# The benchmarks on a GPU host, offline: results in bench/RESULTS-gpu.md (next to the CPU
# results in bench/RESULTS.md). Nothing is ever downloaded.
#
#   bash bench/gpu.sh                      # every section this host can run
#   bash bench/gpu.sh model,serving        # some sections (other blocks of RESULTS-gpu.md are kept,
#                                          # so a host with a per-command time limit can run them one by one)
#   bash bench/gpu.sh --dry-run            # say what is there, what is missing and what would run
#
# Sections: gpu_network (HRNetV2-W18 in PyTorch on the GPU, fp32/fp16, batch sizes, crops/s:
# needs only torch with CUDA), model, stages, service, serving, memory (see bench/__init__.py).
#
# It uses what the host has (python3, torch, numpy, onnxruntime or onnxruntime-gpu, OpenCV,
# httpx, uvloop, prometheus-client, ...) plus, if WHEELS=/path names a folder of wheels, the
# missing packages from that folder: `pip install --no-index --find-links $WHEELS` into a venv
# that sees the host's packages (bench/out/venv-gpu, --system-site-packages). It says exactly
# which packages are missing and which sections that rules out (`python -m bench.gpu_check`).
# A folder can be made on any machine with network access, for the host's Python version, e.g.
#   pip download -d wheels --python-version 3.12 --only-binary=:all: \
#       fastapi 'uvicorn[standard]' pydantic-settings python-multipart orjson fastapi-offline \
#       'onnxruntime-gpu[cuda,cudnn]' onnx
#
# Environment: PYTHON (interpreter, default python3), WHEELS (wheel folder), BENCH_ARGS (extra
# flags for `python -m bench`, e.g. --quick), GPU_RESULTS (default bench/RESULTS-gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
WANT="${1:-gpu_network,model,stages,service,serving,memory}"
PY="${PYTHON:-python3}"
RESULTS="${GPU_RESULTS:-bench/RESULTS-gpu.md}"
VENV=bench/out/venv-gpu
say() { echo "gpu.sh: $*" >&2; }

if nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2; then
  GPU=1
else
  GPU=0
  if [ "$DRY" = 0 ]; then say "nvidia-smi failed; is this a GPU host? (--dry-run checks packages only)"; exit 2; fi
  say "no GPU (nvidia-smi failed); dry run: checking packages only"
fi
command -v "$PY" >/dev/null || { say "no interpreter '$PY' (set PYTHON=/path/to/python3)"; exit 2; }

check() { "$PY" -m bench.gpu_check --sections "$WANT" ${WHEELS:+--wheels "$WHEELS"}; }
field() { sed -n "s/^$1=//p" <<<"$2"; }

# 1. Missing packages from the wheel folder, into a venv layered over the host's packages.
if [ -n "${WHEELS:-}" ]; then
  [ -d "$WHEELS" ] || { say "WHEELS=$WHEELS is not a folder"; exit 2; }
  [ -x "$VENV/bin/python" ] && PY="$VENV/bin/python"  # a previous run's venv: check through it
  INSTALLABLE="$(field INSTALLABLE "$(check 2>/dev/null)")"
  if [ -n "$INSTALLABLE" ]; then
    if [ "$DRY" = 1 ]; then
      say "would install from $WHEELS: $INSTALLABLE (into $VENV, over the host's packages)"
    else
      if [ ! -x "$VENV/bin/python" ]; then
        # --without-pip when the host lacks ensurepip (Debian without python3-venv): the
        # host's pip then installs into the venv with --python.
        "$PY" -m venv --system-site-packages "$VENV" 2>/dev/null \
          || "$PY" -m venv --system-site-packages --without-pip "$VENV"
      fi
      PIP=("$VENV/bin/python" -m pip)
      "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || PIP=("$PY" -m pip --python "$VENV/bin/python")
      say "installing from $WHEELS (no index, no network): $INSTALLABLE"
      # shellcheck disable=SC2086
      "${PIP[@]}" install --no-index --find-links "$WHEELS" $INSTALLABLE \
        || say "pip could not install everything from $WHEELS (the lines above name the missing wheels); going on with what is there"
      PY="$VENV/bin/python"
    fi
  fi
fi

# 2. What is there, what is missing, what can run.
REPORT="$(check)"
echo "$REPORT"
SECTIONS="$(field SECTIONS "$REPORT")"
ORT_CUDA="$(field ORT_CUDA "$REPORT")"

# NVIDIA's pip wheels put their libraries under site-packages/nvidia/*/lib (and tensorrt_libs),
# which the loader does not search; the server subprocesses inherit this path.
NV_LIBS="$("$PY" - <<'PYEOF'
import glob, os, site
dirs = []
for base in site.getsitepackages():
    dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
    dirs += glob.glob(os.path.join(base, "tensorrt_libs"))
print(":".join(sorted(set(dirs))))
PYEOF
)"
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

PROVIDERS=cpu
[ "$ORT_CUDA" = 1 ] && PROVIDERS=cuda,cpu
GPU_FLAG=no
[ "$GPU" = 1 ] && GPU_FLAG=yes
# Worker counts for the serving section: 1, 2, 4, ... up to half the cores (the load
# generator and the supervisor need the rest).
CORES="$(nproc 2>/dev/null || echo 2)"
WORKERS=1; n=2
while [ $((n * 2)) -le "$CORES" ] || [ "$n" = 2 ]; do WORKERS="$WORKERS,$n"; n=$((n * 2)); done
# shellcheck disable=SC2086
CMD=("$PY" -m bench --gpu "$GPU_FLAG" --providers "$PROVIDERS" --serving-workers "$WORKERS"
     --results "$RESULTS" --only "$SECTIONS" ${BENCH_ARGS:-})

if [ -z "$SECTIONS" ]; then say "no section can run on this host (see the missing packages above)"; [ "$DRY" = 1 ] && exit 0; exit 3; fi
if [ "$DRY" = 1 ]; then say "would run: ${CMD[*]}"; exit 0; fi
say "running: ${CMD[*]}"
"${CMD[@]}"
say "wrote $RESULTS"
