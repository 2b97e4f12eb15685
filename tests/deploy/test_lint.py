"""The offline deployment checks (docker/lint.py): green on the real files, red on a deliberately
broken copy of each file; plus the container entrypoint's model resolution and healthcheck.

Fast (a few seconds): no Docker engine, cluster or network; the tools come from the venv.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = ROOT / "docker" / "lint.py"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

_spec = importlib.util.spec_from_file_location("deploy_lint", LINT)
lint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint)


def mutate(src: Path, dst: Path, old: str, new: str) -> Path:
    text = src.read_text()
    assert old in text, f"{src.name} no longer contains {old!r}: update this test's mutation"
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text.replace(old, new, 1))
    return dst


# --------------------------------------------------------------------------------------------
# the real files


def test_lint_script_passes_on_the_repository():
    proc = subprocess.run(
        [sys.executable, str(LINT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("hadolint", "context", "compose", "k8s"):
        assert f"PASS {check}" in proc.stdout


def test_lint_script_exits_non_zero_and_names_the_failed_check(tmp_path):
    broken = mutate(
        ROOT / "Dockerfile",
        tmp_path / "Dockerfile",
        "USER ${UID}:${UID}\n",
        "USER ${UID}:${UID}\nRUN cd /tmp && python -m pip install requests\n",
    )
    proc = subprocess.run(
        [sys.executable, str(LINT), "--only", "hadolint", "--dockerfile", str(broken)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "FAIL hadolint" in proc.stdout and "lint failed: hadolint" in proc.stdout


# --------------------------------------------------------------------------------------------
# Dockerfile: hadolint


@pytest.mark.parametrize(
    "old,new,rule",
    [
        # an unpinned pip install and `cd` in RUN
        ('"pip==${PIP_VERSION}"', "pip", "DL3013"),
        ("WORKDIR /src\n", "RUN cd /src\n", "DL3003"),
        # apt without pins / --no-install-recommends / list cleanup
        (
            "WORKDIR /opt/landmarks\n",
            "RUN apt-get update && apt-get install -y curl\nWORKDIR /opt/landmarks\n",
            "DL3008",
        ),
        # the base image unpinned
        (
            "ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm\n\nFROM ${PYTHON_IMAGE} AS base",
            "FROM python:latest AS base",
            "DL3007",
        ),
    ],
)
def test_hadolint_fails_on_a_broken_dockerfile(tmp_path, old, new, rule):
    assert lint.check_hadolint(ROOT / "Dockerfile") == []
    broken = mutate(ROOT / "Dockerfile", tmp_path / "Dockerfile", old, new)
    errors = lint.check_hadolint(broken)
    assert any(rule in e for e in errors), errors


# --------------------------------------------------------------------------------------------
# build context: .dockerignore + COPY sources


def fake_context(tmp_path: Path) -> Path:
    """A small tree shaped like the repository (the real one holds a .venv: slow to walk)."""
    root = tmp_path / "ctx"
    for rel in (
        "pyproject.toml",
        "README.md",
        "constraints/ci.txt",
        "service/__init__.py",
        "service/pipeline/dark.py",
        "model_export/__init__.py",
        "docker/entrypoint.sh",
        "docker/lint.py",
        "THIRD_PARTY_NOTICES.md",
        "models/hrnetv2_w18_wflw_dark.onnx",
        ".venv/bin/python",
        "service/__pycache__/x.cpython-311.pyc",
        "bench/run.py",
        "tests/data/wflw_samples/7_Cheering_Cheering_7_16.jpg",
        "tests/conftest.py",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    for rel in ("Dockerfile", ".dockerignore", "pyproject.toml"):
        shutil.copy(ROOT / rel, root / rel)
    return root


def test_context_holds_what_the_dockerfile_copies_and_no_tests(tmp_path):
    assert lint.check_context(ROOT / "Dockerfile", ROOT / ".dockerignore", ROOT) == []
    root = fake_context(tmp_path)
    assert lint.check_context(root / "Dockerfile", root / ".dockerignore", root) == []
    files = set(
        lint.context_files(root, lint.dockerignore_matcher((root / ".dockerignore").read_text()))
    )
    assert "service/pipeline/dark.py" in files and "docker/entrypoint.sh" in files
    assert not any(
        f.startswith(("tests/", "models/", ".venv/", "bench/", "docker/lint.py"))
        or f.endswith(".pyc")
        for f in files
    ), files


@pytest.mark.parametrize(
    "old,new",
    [
        ("*\n!pyproject.toml", "!pyproject.toml"),  # allow-list lost: tests/ goes in
        ("!service/\n", "!service/\n!tests/\n"),  # tests re-included on purpose
    ],
)
def test_context_fails_when_dockerignore_lets_the_samples_in(tmp_path, old, new):
    root = fake_context(tmp_path)
    mutate(ROOT / ".dockerignore", root / ".dockerignore", old, new)
    errors = lint.check_context(root / "Dockerfile", root / ".dockerignore", root)
    assert any("tests/data/wflw_samples/7_Cheering_Cheering_7_16.jpg" in e for e in errors), errors


def test_context_fails_when_a_copy_source_is_ignored_or_missing(tmp_path):
    root = fake_context(tmp_path)
    mutate(ROOT / ".dockerignore", root / ".dockerignore", "!model_export/\n", "")
    errors = lint.check_context(root / "Dockerfile", root / ".dockerignore", root)
    assert any("model_export/ is excluded" in e for e in errors), errors

    shutil.copy(ROOT / ".dockerignore", root / ".dockerignore")
    mutate(
        ROOT / "Dockerfile",
        root / "Dockerfile",
        "COPY constraints/ constraints/",
        "COPY constraint/ constraints/",
    )
    errors = lint.check_context(root / "Dockerfile", root / ".dockerignore", root)
    assert any("constraint/ does not exist" in e for e in errors), errors
    assert lint.check_context(root / "Dockerfile", root / "missing.dockerignore", root)


@pytest.mark.parametrize(
    "old,new,expected",
    [
        # the image must install the project like the Makefile does (so CI exercises it)
        ("-c constraints/ci.txt '.[export]'", "'.[export]'", "without the constraints file"),
        (
            "-c constraints/ci.txt '.[export]'",
            "-c constraints/gpu.txt '.[export]'",
            "constraints/gpu.txt is not in the context",
        ),
        (
            "-c constraints/ci.txt '.[export]'",
            "-c constraints/ci.txt '.[exporter]'",
            "extra [exporter] is not defined",
        ),
    ],
)
def test_context_fails_when_the_image_installs_differently(tmp_path, old, new, expected):
    root = fake_context(tmp_path)
    assert lint.check_context(root / "Dockerfile", root / ".dockerignore", root) == []
    mutate(ROOT / "Dockerfile", root / "Dockerfile", old, new)
    errors = lint.check_context(root / "Dockerfile", root / ".dockerignore", root)
    assert any(expected in e for e in errors), errors


def test_context_fails_when_the_wheel_leaves_a_data_file_out(tmp_path):
    # `pip install .` (the image's install) ships only what setuptools is told to: a data file
    # of the package that pyproject.toml does not declare is in the context, not in the image.
    root = fake_context(tmp_path)
    (root / "service" / "undeclared.dat").write_text("x")
    errors = lint.check_context(root / "Dockerfile", root / ".dockerignore", root)
    assert any(
        e.startswith("service/undeclared.dat is in the build context but not in the wheel")
        for e in errors
    ), errors


def test_context_fails_on_an_unknown_setting_in_the_dockerfile(tmp_path):
    root = fake_context(tmp_path)
    mutate(ROOT / "Dockerfile", root / "Dockerfile", "LANDMARKS_PORT=8000", "LANDMARKS_PROT=8000")
    errors = lint.check_context(root / "Dockerfile", root / ".dockerignore", root)
    assert any("unknown settings (typo?): LANDMARKS_PROT" in e for e in errors), errors


def test_shell_commands_split_like_a_shell():
    script = """pip install -c c.txt '.[a,b]' && echo 'x; y' ; python -c "import s; s.f()" || true"""
    assert lint.shell_commands(script) == [
        ["pip", "install", "-c", "c.txt", ".[a,b]"],
        ["echo", "x; y"],
        ["python", "-c", "import s; s.f()"],
        ["true"],
    ]


@pytest.mark.parametrize(
    "patterns,path,excluded",
    [
        ("*\n!service/", "service/app.py", False),
        ("*\n!service/", "tests/x.py", True),
        ("*\n!service/\n**/__pycache__", "service/__pycache__/a.pyc", True),
        ("**/*.py[cod]", "a/b/c.pyc", True),
        ("tests", "tests/data/x.jpg", True),  # a directory pattern covers what is below
        ("/tests/*.jpg", "tests/a.jpg", True),
        ("tests/*.jpg", "tests/sub/a.jpg", False),  # `*` does not cross a slash
        ("docs\n!docs/keep.md", "docs/keep.md", False),
        ("# comment\n\n", "anything", False),
        # where Docker differs from gitignore (so pathspec's gitwildmatch would be wrong here):
        ("*.pyc", "a/b.pyc", False),  # anchored at the context root, not at any depth
        ("tests", "a/tests/x.py", False),
        ("service/", "service", True),  # a trailing slash does not mean "directories only"
        ("*\n!service/", "service/pipeline/dark.py", False),  # re-included below a `*`
    ],
)
def test_dockerignore_matching_follows_docker(patterns, path, excluded):
    assert lint.dockerignore_matcher(patterns).matches(path) is excluded


# --------------------------------------------------------------------------------------------
# docker-compose.yml (+ docker/prometheus.yml)


def compose_copy(tmp_path: Path) -> Path:
    project = tmp_path / "compose"
    (project / "docker").mkdir(parents=True)
    shutil.copy(ROOT / "docker" / "prometheus.yml", project / "docker" / "prometheus.yml")
    shutil.copy(ROOT / "docker-compose.yml", project / "docker-compose.yml")
    return project


def test_compose_config_passes_for_every_profile(tmp_path):
    assert lint.check_compose(ROOT / "docker-compose.yml", ROOT) == []
    project = compose_copy(tmp_path)
    assert lint.check_compose(project / "docker-compose.yml", ROOT) == []


@pytest.mark.parametrize(
    "old,new,expected",
    [
        # schema errors, reported by `docker compose config -q` itself
        (
            "    environment:\n      <<: *settings\n    deploy:",
            "    enviroment:\n      <<: *settings\n    deploy:",
            "config -q",
        ),
        ("profiles: [cpu]", "profiles: cpu", "config -q"),
        ("start_period: 180s", "start_period: 3 minutes", "config -q"),
        # an undefined anchor: not even YAML
        (
            "      <<: *settings\n      LANDMARKS_PROVIDERS: cpu",
            "      <<: *setings\n      LANDMARKS_PROVIDERS: cpu",
            "config",
        ),
        # rules on the resolved config
        ("  LANDMARKS_MAX_QUEUE: ${LANDMARKS_MAX_QUEUE:-}\n", "", "LANDMARKS_MAX_QUEUE"),
        ("  LANDMARKS_MAX_FACES:", "  LANDMARKS_MAX_FACE:", "unknown settings"),
        (
            "              capabilities: [gpu]",
            "              capabilities: [compute]",
            "GPU device reservation",
        ),
        ("      LANDMARKS_PROVIDERS: cpu\n", "", "LANDMARKS_PROVIDERS=cpu"),
        ("    profiles: [monitoring]", "    profiles: [metrics]", "monitoring"),
        (
            '    test: ["CMD", "landmarks-entrypoint", "healthcheck"]\n',
            "    disable: true\n",
            "no healthcheck",
        ),
        ("stop_grace_period: 45s", "stop_grace_period: 5s", "stop_grace_period"),
        # the settings added with workers and detection are passed through too
        ("  LANDMARKS_WORKERS: ${LANDMARKS_WORKERS:-4}\n", "", "LANDMARKS_WORKERS"),
        ("  LANDMARKS_DETECTOR_PATH:", "  LANDMARKS_DETECTORS_PATH:", "unknown settings"),
        # the multiprocess metrics directory must be on the tmpfs (the root fs is read-only)
        (
            "      target: /run/prometheus-multiproc\n",
            "      target: /run/metrics\n",
            "PROMETHEUS_MULTIPROC_DIR=/run/prometheus-multiproc is not on a writable mount",
        ),
    ],
)
def test_compose_fails_on_a_broken_file(tmp_path, old, new, expected):
    project = compose_copy(tmp_path)
    mutate(ROOT / "docker-compose.yml", project / "docker-compose.yml", old, new)
    errors = lint.check_compose(project / "docker-compose.yml", ROOT)
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("scrape_configs:", "scrape_config:", "no scrape_configs"),
        ("names: [landmarks, landmarks-cpu]", "names: [landmarks]", "landmarks-cpu is not scraped"),
        ("metrics_path: /metrics", "metrics_path: /metric", "/metrics"),
        ("  - job_name: face-landmarks", "  - job_name: [face-landmarks", "invalid YAML"),
    ],
)
def test_compose_fails_on_a_broken_prometheus_config(tmp_path, old, new, expected):
    project = compose_copy(tmp_path)
    mutate(ROOT / "docker" / "prometheus.yml", project / "docker" / "prometheus.yml", old, new)
    errors = lint.check_compose(project / "docker-compose.yml", ROOT)
    assert any(expected in e for e in errors), errors


# --------------------------------------------------------------------------------------------
# docker/k8s (kustomize)


def k8s_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(ROOT / "docker" / "k8s", tmp_path / "k8s"))


def test_k8s_manifests_render_and_validate(tmp_path):
    assert lint.check_k8s(ROOT / "docker" / "k8s", ROOT) == []


@pytest.mark.parametrize(
    "name,old,new,expected",
    [
        # kustomization.yaml
        (
            "kustomization.yaml",
            "  - pdb.yaml\n",
            "  - pdb.yaml\n  - ingress.yaml\n",
            "kubectl kustomize",
        ),
        ("kustomization.yaml", "  - pdb.yaml\n", "", "pdb.yaml is not listed"),
        ("kustomization.yaml", "kind: Kustomization", "kind: Kustomisation", "kubectl kustomize"),
        # deployment.yaml: strict schema (unknown field, wrong type), then the cross-object rules
        ("deployment.yaml", "          readinessProbe:", "          readynessProbe:", "strict"),
        (
            "deployment.yaml",
            "periodSeconds: 5\n            timeoutSeconds: 3\n            failureThreshold: 60",
            "periodSeconds: five\n            timeoutSeconds: 3\n            failureThreshold: 60",
            "strict",
        ),
        ("deployment.yaml", "              nvidia.com/gpu: 1\n", "", "nvidia.com/gpu"),
        (
            "deployment.yaml",
            "              path: /healthz",
            "              path: /readyz",
            "livenessProbe",
        ),
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds: 45",
            "terminationGracePeriodSeconds: 15",
            "terminationGracePeriodSeconds",
        ),
        (
            "deployment.yaml",
            '                command: ["sleep", "10"]',
            '                command: ["true"]',
            "preStop",
        ),
        (
            "deployment.yaml",
            "- name: LANDMARKS_MAX_QUEUE",
            "- name: LANDMARKS_QUEUE_MAX",
            "unknown settings",
        ),
        # service.yaml
        ("service.yaml", "      targetPort: http", "      targetPort: htp", "targetPort"),
        (
            "service.yaml",
            "    app.kubernetes.io/component: api\n  ports:",
            "    app.kubernetes.io/component: web\n  ports:",
            "Service selector",
        ),
        (
            "service.yaml",
            "  type: ClusterIP",
            "  type: ClusterIP\n  sessionAffinityy: None",
            "strict",
        ),
        # hpa.yaml
        (
            "hpa.yaml",
            "          name: landmarks_queue_depth",
            "          name: landmarks_queue_length",
            "not exported",
        ),
        (
            "hpa.yaml",
            "    name: face-landmarks\n  minReplicas",
            "    name: face-landmark\n  minReplicas",
            "scaleTargetRef",
        ),
        (
            "hpa.yaml",
            "apiVersion: autoscaling/v2",
            "apiVersion: autoscaling/v2beta1",
            "unknown kind or apiVersion",
        ),
        # deployment.yaml: workers, their CPU and the multiprocess metrics directory
        ("deployment.yaml", '              cpu: "4"', '              cpu: "2"', "one CPU per worker"),
        (
            "deployment.yaml",
            "              mountPath: /run/prometheus-multiproc",
            "              mountPath: /run/metrics",
            "PROMETHEUS_MULTIPROC_DIR=/run/prometheus-multiproc is not on a writable mount",
        ),
        # pdb.yaml
        (
            "pdb.yaml",
            "  maxUnavailable: 1",
            "  maxUnavailable: 1\n  minAvailable: 1\n  maxSurge: 1",
            "strict",
        ),
        (
            "pdb.yaml",
            "      app.kubernetes.io/component: api",
            "      app.kubernetes.io/component: worker",
            "PodDisruptionBudget selector",
        ),
    ],
)
def test_k8s_fails_on_a_broken_manifest(tmp_path, name, old, new, expected):
    k8s = k8s_copy(tmp_path)
    mutate(ROOT / "docker" / "k8s" / name, k8s / name, old, new)
    errors = lint.check_k8s(k8s, ROOT)
    assert any(expected in e for e in errors), errors


def test_k8s_fails_on_an_unlisted_manifest(tmp_path):
    k8s = k8s_copy(tmp_path)
    (k8s / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
    assert any("extra.yaml is not listed" in e for e in lint.check_k8s(k8s, ROOT))


# --------------------------------------------------------------------------------------------
# docker/entrypoint.sh (POSIX sh, as in the image)


@pytest.fixture
def entry_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(
        sys.executable
    )  # the image has `python`; CI may only have python3
    mounted, baked = tmp_path / "models", tmp_path / "baked"
    mounted.mkdir()
    baked.mkdir()
    (baked / "hrnetv2_w18_wflw_dark.onnx").write_text("baked")
    (baked / "retinaface_mnet025.onnx").write_text("baked detector")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LANDMARKS_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        MODEL_DIR=str(mounted),
        BAKED_MODEL_DIR=str(baked),
        MODEL_NAME="hrnetv2_w18_wflw_dark.onnx",
        DETECTOR_NAME="retinaface_mnet025.onnx",
    )
    return env, mounted, baked


def run_entry(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def env_of(proc: subprocess.CompletedProcess) -> dict:
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def test_entrypoint_uses_the_baked_model_then_a_mounted_one_then_the_setting(entry_env):
    env, mounted, baked = entry_env
    proc = run_entry(env, "env")
    assert proc.returncode == 0, proc.stderr
    assert env_of(proc)["LANDMARKS_MODEL_PATH"] == str(baked / "hrnetv2_w18_wflw_dark.onnx")

    (mounted / "hrnetv2_w18_wflw_dark.onnx").write_text("mine")
    assert env_of(run_entry(env, "env"))["LANDMARKS_MODEL_PATH"] == str(
        mounted / "hrnetv2_w18_wflw_dark.onnx"
    )

    (mounted / "other_fp16.onnx").write_text("other")
    env["LANDMARKS_MODEL_PATH"] = str(mounted / "other_fp16.onnx")
    assert env_of(run_entry(env, "env"))["LANDMARKS_MODEL_PATH"] == str(mounted / "other_fp16.onnx")


def test_entrypoint_drops_empty_settings_and_fails_on_a_missing_model(entry_env):
    env, mounted, _ = entry_env
    env.update(
        LANDMARKS_API_KEY="",
        LANDMARKS_MAX_QUEUE="",
        LANDMARKS_LOG_LEVEL="DEBUG",
        LANDMARKS_MODEL_PATH="",
    )
    seen = env_of(run_entry(env, "env"))
    assert "LANDMARKS_API_KEY" not in seen and "LANDMARKS_MAX_QUEUE" not in seen
    assert seen["LANDMARKS_LOG_LEVEL"] == "DEBUG"

    env["LANDMARKS_MODEL_PATH"] = str(mounted / "nope.onnx")
    proc = run_entry(env, "env")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_entrypoint_resolves_the_detector_like_the_model(entry_env):
    env, mounted, baked = entry_env
    assert env_of(run_entry(env, "env"))["LANDMARKS_DETECTOR_PATH"] == str(
        baked / "retinaface_mnet025.onnx"
    )
    (mounted / "retinaface_mnet025.onnx").write_text("mine")
    assert env_of(run_entry(env, "env"))["LANDMARKS_DETECTOR_PATH"] == str(
        mounted / "retinaface_mnet025.onnx"
    )
    env["LANDMARKS_DETECTOR_PATH"] = str(mounted / "missing.onnx")
    proc = run_entry(env, "env")
    assert proc.returncode == 2 and "LANDMARKS_DETECTOR=none" in proc.stderr
    # no detection: no detector file is needed, none is resolved
    env.update(LANDMARKS_DETECTOR="None", LANDMARKS_DETECTOR_PATH="")
    (mounted / "retinaface_mnet025.onnx").unlink()
    (baked / "retinaface_mnet025.onnx").unlink()
    proc = run_entry(env, "env")
    assert proc.returncode == 0, proc.stderr
    assert "LANDMARKS_DETECTOR_PATH" not in env_of(proc)


def test_entrypoint_empties_the_prometheus_multiprocess_dir(entry_env, tmp_path):
    env, _, _ = entry_env
    metrics = tmp_path / "multiproc"
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    assert run_entry(env, "true").returncode == 0
    assert metrics.is_dir() and not any(metrics.iterdir())  # created
    (metrics / "counter_41.db").write_bytes(b"\0" * 16)  # a previous run's worker files
    (metrics / "gauge_livesum_42.db").write_bytes(b"\0" * 16)
    (metrics / "notes.txt").write_text("not a metrics file")
    assert run_entry(env, "true").returncode == 0
    assert sorted(p.name for p in metrics.iterdir()) == ["notes.txt"]


def test_entrypoint_healthcheck_probes_healthz(entry_env, tmp_path):
    env, _, _ = entry_env

    class Handler(http.server.BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):
            self.send_response(self.status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env["LANDMARKS_PORT"] = str(server.server_address[1])
        assert run_entry(env, "healthcheck").returncode == 0
        Handler.status = 503
        assert run_entry(env, "healthcheck").returncode == 1
    finally:
        server.shutdown()
        server.server_close()
    assert run_entry(env, "healthcheck").returncode == 1  # nothing listening
