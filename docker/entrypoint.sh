#!/bin/sh
# Container entrypoint for the face-landmark service (POSIX sh; no bash in the contract).
#
#   landmarks-entrypoint [CMD...]     resolve the model, drop empty settings, exec CMD
#   landmarks-entrypoint healthcheck  exit 0 iff GET /healthz answers 2xx (HEALTHCHECK, compose)
#
# Model resolution, first hit wins (the same for the detector: LANDMARKS_DETECTOR_PATH and
# DETECTOR_NAME, skipped when LANDMARKS_DETECTOR=none):
#   1. LANDMARKS_MODEL_PATH, when set and non-empty (any path, e.g. /models/my_fp16.onnx)
#   2. $MODEL_DIR/$MODEL_NAME   a file mounted over the default (/models/hrnetv2_w18_wflw_dark.onnx)
#   3. $BAKED_MODEL_DIR/$MODEL_NAME   the official weights exported at build time
#
# Empty LANDMARKS_* variables are unset before the service starts, so compose can pass every
# setting through as ${LANDMARKS_X:-} and an unset one keeps the service's own default.
# PROMETHEUS_MULTIPROC_DIR, when set, is created and emptied of metric files (*.db): multiprocess
# mode needs it empty at start, and a Kubernetes emptyDir outlives a container restart.
set -eu

MODEL_DIR="${MODEL_DIR:-/models}"
BAKED_MODEL_DIR="${BAKED_MODEL_DIR:-/opt/landmarks/models}"
MODEL_NAME="${MODEL_NAME:-hrnetv2_w18_wflw_dark.onnx}"
DETECTOR_NAME="${DETECTOR_NAME:-retinaface_mnet025.onnx}"

if [ "${1:-}" = "healthcheck" ]; then
    exec python - <<'EOF'
import os
import sys
import urllib.request

url = "http://127.0.0.1:%s/healthz" % (os.environ.get("LANDMARKS_PORT") or "8000")
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as exc:  # connection refused, timeout, HTTP error
    print(f"healthcheck {url}: {exc}", file=sys.stderr)
    sys.exit(1)
EOF
fi

# Unset LANDMARKS_* variables that are present but empty.
for name in $(env | sed -n 's/^\(LANDMARKS_[A-Za-z0-9_]*\)=$/\1/p'); do
    unset "$name"
done

# resolve VARIABLE FILE_NAME HINT: export VARIABLE as described above; exit 2 if no such file.
resolve() {
    path="$(printenv "$1" || true)"
    if [ -z "$path" ]; then
        if [ -f "$MODEL_DIR/$2" ]; then path="$MODEL_DIR/$2"; else path="$BAKED_MODEL_DIR/$2"; fi
    fi
    if [ ! -f "$path" ]; then
        echo "landmarks-entrypoint: $1: file $path does not exist$3" >&2
        ls -l "$MODEL_DIR" "$BAKED_MODEL_DIR" >&2 2>/dev/null || true
        exit 2
    fi
    export "$1=$path"
    echo "landmarks-entrypoint: $1=$path" >&2
}

resolve LANDMARKS_MODEL_PATH "$MODEL_NAME" ""
detector="$(printf '%s' "${LANDMARKS_DETECTOR:-retinaface}" | tr -d ' ' | tr '[:upper:]' '[:lower:]')"
if [ "$detector" != "none" ]; then
    resolve LANDMARKS_DETECTOR_PATH "$DETECTOR_NAME" " (LANDMARKS_DETECTOR=none serves without detection)"
fi

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -type f -name '*.db' -delete
fi

if [ "$#" -eq 0 ]; then
    set -- python -m service
fi
exec "$@"
