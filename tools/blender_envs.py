#!/usr/bin/env python3
"""The Blender version matrix: one environment per Blender (bpy wheel), and the Blender tests in each.

    python3 tools/blender_envs.py make 4.2 4.5     # .venv-blender/4.2, .venv-blender/4.5
    python3 tools/blender_envs.py test 4.2 4.5     # make them if needed, run tests/test_blender.py in each
    python3 tools/blender_envs.py test all         # 4.2, 4.5 and 5.0
    python3 tools/blender_envs.py test 4.2 4.5 --drop   # each removed after its tests (CI's small disk)

The extension claims Blender 4.2 LTS to 5.0, and the bpy API moved in between (5.0 replaced
``scene.node_tree`` by ``scene.compositing_node_group``; 4.x wires a default compositor).
Only running the tests inside each Blender shows that the claim holds, so each version gets
its own virtual environment with that version's bpy wheel. Everything else (keyprop, its
runtime packages, pytest) comes from the dev environment .venv when there is one (a .pth
file adds its site-packages after the line's own), else from a full install of its own.
bpy wheels exist for one CPython each (3.11 for 4.2 to 5.0) and need numpy < 2, which
keyprop's own pins already give.

Each test run is one `pytest tests/test_blender.py` in the version's Python with a wall-clock
limit that kills the whole process group: a Blender child that hangs (bpy 4.5 does at exit
with a class still registered) fails the run instead of stalling CI.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENVS = ROOT / ".venv-blender"
SHARED = ROOT / ".venv"  # the dev environment the lines share packages with
SHARED_PTH = "keyprop_dev_env.pth"

# The newest release of each line on PyPI when this was written; pinned so that a CI run
# tests what the last one tested (raise them on purpose, with a run of the matrix).
VERSIONS = {"4.2": "4.2.23", "4.5": "4.5.15", "5.0": "5.0.1"}
TEST_TIMEOUT = 900  # seconds for one version's tests (about 30-60 s when healthy)


def _install_module():
    """install.py's helpers (venv layout, pip, the torch pin), loaded by path: it is no package."""
    spec = importlib.util.spec_from_file_location("keyprop_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_dir(version: str) -> Path:
    return ENVS / version


def site_packages(python: Path):
    """The site-packages folder of the environment whose Python this is (None if there is none)."""
    env = python.parent.parent
    found = list(env.glob("lib/python3*/site-packages")) + list(env.glob("Lib/site-packages"))
    return found[0] if found else None


def has_bpy(python: Path, wheel: str) -> bool:
    """Whether the environment already holds this bpy release (checked without starting Blender)."""
    site = site_packages(python)
    return site is not None and (site / f"bpy-{wheel}.dist-info").is_dir()


def can_share(python: Path) -> bool:
    """Whether an environment holds what the Blender tests need besides bpy: keyprop's runtime
    packages, pytest and bpy's own dependencies, which a dev environment (install.py --dev, any
    bpy) has."""
    site = site_packages(python) if python.exists() else None
    return site is not None and all(any(site.glob(f"{name}-*.dist-info")) for name in ("bpy", "pytest", "torch"))


def make(version: str) -> Path:
    """The environment of one Blender line ("4.2"), made or brought to its pinned bpy; its Python.

    With a dev environment (.venv, install.py --dev) beside it, the line's environment holds
    only its bpy and reaches everything else (keyprop, torch, onnxruntime, opencv, pytest)
    through a .pth file that adds the dev environment's site-packages after its own: its bpy
    comes first. That saves about 1.2 GB a line (CI's disk ran out with three full copies).
    Without one it gets its own full install."""
    install = _install_module()
    wheel = VERSIONS[version]
    where = env_dir(version)
    python = install.venv_python(where)
    if python.exists() and has_bpy(python, wheel):
        print(f"blender_envs: {where.relative_to(ROOT)} has bpy {wheel}", flush=True)
        return python
    if not python.exists():
        print(f"blender_envs: creating {where.relative_to(ROOT)} for Blender {wheel}", flush=True)
        venv.EnvBuilder(with_pip=True).create(where)
    dev = install.venv_python(SHARED)
    if can_share(dev):
        # bpy alone, before the .pth exists: pip sees only this environment
        install.pip(python, "-q", "--no-deps", "--no-cache-dir", f"bpy=={wheel}")
        (site_packages(python) / SHARED_PTH).write_text(
            f"import site; site.addsitedir({str(site_packages(dev))!r})\n")
        print(f"blender_envs: {where.relative_to(ROOT)} shares {SHARED.relative_to(ROOT)}'s packages", flush=True)
    else:
        install.pip(python, "-q", "--no-cache-dir", install.TORCH_PIN)
        install.pip(python, "-q", "--no-cache-dir", "-e", str(ROOT), f"bpy=={wheel}", "pytest>=7")
    return python


def run_tests(version: str, python: Path, pytest_args) -> tuple:
    """(exit code, pytest's summary line) of tests/test_blender.py in this version's Python."""
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_blender.py", *pytest_args]
    print(f"blender_envs: Blender {VERSIONS[version]}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group: a timeout kills Blender children too
    try:
        out, _ = proc.communicate(timeout=TEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        sys.stdout.write(out)
        return 124, f"killed after {TEST_TIMEOUT} s"
    finally:
        try:  # children left behind by a finished run (a worker of a hung Blender) go too
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.stdout.write(out)
    lines = [line for line in out.splitlines() if re.search(r"\b(passed|failed|error|errors)\b", line)]
    summary = lines[-1].strip("= ") if lines else f"no pytest summary (exit code {proc.returncode})"
    return proc.returncode, f"{summary} ({time.monotonic() - started:.0f} s)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["make", "test"], help="make the environments, or also run the tests")
    parser.add_argument("versions", nargs="+", metavar="VERSION",
                        help=f"Blender lines: {', '.join(VERSIONS)}, or all")
    parser.add_argument("--drop", action="store_true",
                        help="remove each version's environment once its tests ran: one line's bpy "
                             "(about 0.9 GB) on disk at a time")
    parser.add_argument("--pytest", nargs=argparse.REMAINDER, default=[],
                        help="further pytest arguments (everything after --pytest)")
    args = parser.parse_args(argv)
    if args.versions == ["all"]:
        args.versions = list(VERSIONS)
    unknown = [v for v in args.versions if v not in VERSIONS]
    if unknown:
        parser.error(f"unknown Blender version {', '.join(unknown)} (known: {', '.join(VERSIONS)}, all)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {}
    for version in args.versions:  # one line at a time: made, tested, dropped before the next
        python = make(version)
        if args.action == "test":
            results[version] = run_tests(version, python, args.pytest)
        if args.drop:
            shutil.rmtree(env_dir(version), ignore_errors=True)
            print(f"blender_envs: removed {env_dir(version).relative_to(ROOT)}", flush=True)
    if args.action == "make":
        return 0
    print("blender_envs: the Blender matrix", flush=True)
    for version, (code, summary) in results.items():
        print(f"  Blender {VERSIONS[version]:7s} {'ok  ' if code == 0 else 'FAIL'} {summary}", flush=True)
    return 0 if all(code == 0 for code, _ in results.values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"blender_envs: a step failed: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        sys.exit(1)
