"""`python -m bench.gpu_check [--wheels DIR] [--sections LIST]`: what this host can benchmark.

Used by `bench/gpu.sh` before anything runs, on hosts that may have no network access: it
imports nothing heavy (only `find_spec` and package metadata, plus onnxruntime's provider list
and torch's CUDA check when present), says exactly which packages are missing for which
sections, which of them the wheel folder holds, and prints the runnable sections as the last
line (`SECTIONS=a,b,c`). Requirements come from pyproject.toml (the service's dependencies),
so this list cannot drift from what the service needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# distribution -> module to look for, where they differ beyond '-' -> '_'
MODULES = {"opencv-python-headless": "cv2", "onnxruntime-gpu": "onnxruntime",
           "python-multipart": "multipart", "prometheus-client": "prometheus_client",
           "pydantic-settings": "pydantic_settings", "fastapi-offline": "fastapi_offline"}
# Other distributions that provide the same module (then reported "as <name>").
ALTERNATES = {"onnxruntime-gpu": ("onnxruntime",),
              "opencv-python-headless": ("opencv-python", "opencv-contrib-python",
                                         "opencv-contrib-python-headless")}
SERVER_SECTIONS = ("service", "serving", "memory")  # start `python -m service`
# What each section imports besides the service's dependencies (servers need those). The
# random-init ONNX files are exported with torch (model_export), so every ONNX section needs it.
SECTION_NEEDS = {
    "gpu_network": ("numpy", "torch"),
    "model": ("numpy", "torch", "onnx", "onnxruntime-gpu"),
    "stages": ("numpy", "torch", "onnx", "onnxruntime-gpu", "opencv-python-headless"),
    **{s: ("torch", "httpx") for s in SERVER_SECTIONS},
}
OPTIONAL = {"uvloop": "faster event loop (uvicorn[standard])",
            "httptools": "faster HTTP parser (uvicorn[standard])",
            "onnxconverter-common": "the fp16 ONNX rows of the model section",
            "tensorrt": "the TensorRT rows of the model section"}
# The fallback when pyproject.toml cannot be read (Python < 3.11 without tomli).
FALLBACK_SERVICE_DEPS = ("fastapi", "uvicorn[standard]", "onnx", "orjson", "fastapi-offline",
                         "onnxruntime-gpu", "numpy", "opencv-python-headless", "pydantic",
                         "pydantic-settings", "prometheus-client", "python-multipart")


def service_requirements() -> list[str]:
    """The `[project] dependencies` of pyproject.toml, as written (e.g. 'uvicorn[standard]>=0.29')."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            return list(FALLBACK_SERVICE_DEPS)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def _name(requirement: str) -> tuple[str, list[str]]:
    """'uvicorn[standard]>=0.29' -> ('uvicorn', ['standard'])."""
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[([^\]]*)\])?", requirement)
    extras = [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]
    return match.group(1).lower(), extras


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@dataclass
class Package:
    dist: str  # pip name
    module: str
    needed_by: list[str] = field(default_factory=list)
    present: bool = False
    version: str = ""
    note: str = ""


def _package(dist: str, needed_by: list[str]) -> Package:
    module = MODULES.get(dist, dist.replace("-", "_"))
    pkg = Package(dist, module, needed_by)
    pkg.present = importlib.util.find_spec(module) is not None
    if pkg.present:
        pkg.version = _version(dist) or "?"
        for other in ALTERNATES.get(dist, ()):
            if pkg.version == "?" and _version(other):
                pkg.version = f"{_version(other)} (as {other})"
    return pkg


def inventory() -> list[Package]:
    """Every package some section needs (or that is optional), with the sections needing it."""
    needs: dict[str, list[str]] = {}
    for requirement in service_requirements():
        needs.setdefault(_name(requirement)[0], []).extend(SERVER_SECTIONS)
    for section, dists in SECTION_NEEDS.items():
        for dist in dists:
            needs.setdefault(dist, []).append(section)
    packages = [_package(dist, sorted(set(sections), key=list(SECTION_NEEDS).index))
                for dist, sections in needs.items()]
    packages += [_package(dist, [f"(optional: {why})"]) for dist, why in OPTIONAL.items()]
    return packages


def gpu_status(packages: list[Package]) -> dict[str, str | bool | None]:
    """torch CUDA and onnxruntime's providers (imports them: only when present)."""
    have = {p.dist: p.present for p in packages}
    out: dict[str, str | bool] = {"torch_cuda": False, "ort_cuda": False}
    if have.get("torch"):
        try:
            import torch

            out["torch_cuda"] = bool(torch.cuda.is_available())
            out["torch"] = f"torch {torch.__version__}, CUDA {torch.version.cuda}, " + (
                f"device {torch.cuda.get_device_name(0)}" if out["torch_cuda"] else "no usable GPU")
        except Exception as exc:  # a broken install is reported, not fatal
            out["torch"] = f"torch fails to import: {str(exc)[:200]}"
    if have.get("onnxruntime-gpu"):
        try:
            import onnxruntime as ort

            providers = ort.get_available_providers()
            out["ort_cuda"] = "CUDAExecutionProvider" in providers and _cuda_session_works()
            out["onnxruntime"] = (f"onnxruntime {ort.__version__}, providers {providers}; CUDA "
                                  f"{'usable' if out['ort_cuda'] else 'NOT usable on this host'}")
        except Exception as exc:
            out["onnxruntime"] = f"onnxruntime fails to import: {str(exc)[:200]}"
    return out


def _cuda_session_works() -> bool:
    """onnxruntime lists CUDA whenever the GPU build is installed; only a session that keeps
    the provider shows it can load its libraries and find a device."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.log_severity_level = 4
        ort.set_default_logger_severity(4)  # a provider that cannot load is the answer, not an error
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return session.get_providers()[0] == "CUDAExecutionProvider"
    except Exception:  # no onnx, no libraries, no device: not usable
        return False


def service_import_error() -> str | None:
    """Import the app as `python -m service` would: catches a dependency of a dependency that
    is missing (e.g. starlette under fastapi), which the package list above cannot see."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import service.__main__  # noqa: F401
    except Exception as exc:  # any failure means the server sections cannot run
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None


def runnable(packages: list[Package], host: dict, want: list[str]) -> tuple[list[str], list[str]]:
    """-> (sections that can run, lines saying why the others cannot)."""
    missing_for: dict[str, list[str]] = {}
    for p in packages:
        if not p.present:
            for section in p.needed_by:
                missing_for.setdefault(section, []).append(p.dist)
    ok, why = [], []
    for section in want:
        if missing_for.get(section):
            why.append(f"{section}: missing {', '.join(missing_for[section])}")
        elif section == "gpu_network" and not host.get("torch_cuda"):
            why.append("gpu_network: torch has no usable CUDA device")
        elif section in SERVER_SECTIONS and (error := host.get("service_import_error")):
            why.append(f"{section}: `import service.__main__` fails: {error}")
        else:
            ok.append(section)
    return ok, why


def wheels_for(folder: Path | None, dists: list[str]) -> dict[str, list[str]]:
    """Wheel files in `folder` whose project name is one of `dists`."""
    if folder is None or not folder.is_dir():
        return {}
    found: dict[str, list[str]] = {}
    for wheel in sorted(folder.glob("*.whl")):
        project = wheel.name.split("-")[0].lower().replace("_", "-")
        for dist in dists:
            if project == dist.replace("_", "-"):
                found.setdefault(dist, []).append(wheel.name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=None, help="wheel folder to look in")
    parser.add_argument("--sections", default="gpu_network,model,stages,service,serving,memory")
    args = parser.parse_args(argv)

    packages = inventory()
    host = gpu_status(packages)
    want = [s.strip() for s in args.sections.split(",") if s.strip()]
    server_deps = [p for p in packages if set(p.needed_by) & set(SERVER_SECTIONS)]
    if set(want) & set(SERVER_SECTIONS) and all(p.present for p in server_deps):
        host["service_import_error"] = service_import_error()
    ok, why = runnable(packages, host, want)
    missing = [p for p in packages if not p.present]
    wanted = [p.dist for p in missing]
    if not host.get("ort_cuda") and "onnxruntime-gpu" not in wanted:
        wanted.append("onnxruntime-gpu")  # a CPU onnxruntime is present: the GPU build replaces it
    in_folder = wheels_for(args.wheels, wanted)

    print(f"python {sys.version.split()[0]} at {sys.executable}")
    for key in ("torch", "onnxruntime"):
        if key in host:
            print(f"  {host[key]}")
    width = max(len(p.dist) for p in packages)
    for p in packages:
        state = f"ok  {p.version}" if p.present else "MISSING"
        print(f"  {p.dist:<{width}}  {state:<16} for {', '.join(p.needed_by)}")
    if host.get("onnxruntime") and not host.get("ort_cuda"):
        print("  note: onnxruntime cannot run on CUDA here (a CPU build, or no device/libraries); the "
              "service and the model section run on CPU unless a wheel folder holds onnxruntime-gpu")
    required = [p.dist for p in missing if p.dist not in OPTIONAL]
    optional = [p.dist for p in missing if p.dist in OPTIONAL]
    if missing:
        print(f"missing packages: {' '.join(required) or 'none'}"
              + (f"; optional, missing: {' '.join(optional)}" if optional else ""))
        if args.wheels is not None:
            lacking = [d for d in required + optional if d not in in_folder]
            print(f"  in {args.wheels}: {' '.join(in_folder) or 'none of them'}"
                  + (f"; NOT in it: {' '.join(lacking)}" if lacking else ""))
        else:
            print("  (put their wheels, with their dependencies, in a folder and pass WHEELS=/path; "
                  "`pip download -d DIR <names>` on a machine with network access makes one)")
    for line in why:
        print(f"cannot run {line}")
    print(f"SECTIONS={','.join(ok)}")
    print(f"INSTALLABLE={' '.join(in_folder)}")
    print(f"ORT_CUDA={int(bool(host.get('ort_cuda')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
