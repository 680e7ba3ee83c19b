#!/usr/bin/env python3
"""Set up keyprop's own environment on a fresh machine.

    python3 install.py            # .venv with keyprop and its runtime packages
    python3 install.py --dev      # the same plus the test tools
    python3 install.py --nuke     # also install the KeyProp gizmo into ~/.nuke, wired to this environment
    python3 install.py --blender  # also install the Blender extension, wired to this environment

The environment is a plain virtual environment (default `.venv` beside this file). torch
is installed first and pinned (2.13.0, the CPU build where one is available) so that no
later requirement can pull the multi-gigabyte CUDA wheels.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TORCH_PIN = "torch==2.13.0"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=str(ROOT / ".venv"),
                        help="where to make the environment (default: .venv beside install.py)")
    parser.add_argument("--dev", action="store_true", help="also install the test tools")
    parser.add_argument("--onnx", action="store_true",
                        help="also install onnxruntime (CPU) for --backend onnx")
    parser.add_argument("--gpu", action="store_true",
                        help="install onnxruntime-gpu (also chosen when an NVIDIA driver is found)")
    parser.add_argument("--blender", action="store_true",
                        help="install or update the keyprop extension in your Blender (4.2+), using this environment")
    parser.add_argument("--blender-exe", metavar="PATH",
                        help="the Blender to install into (default: `blender` on PATH)")
    parser.add_argument("--nuke", action="store_true",
                        help="install or update the KeyProp gizmo in ~/.nuke (Nuke 14-16), using this environment")
    parser.add_argument("--nuke-dir", metavar="DIR", help="the .nuke folder to install into (default: ~/.nuke)")
    return parser.parse_args(argv)


def venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def has_nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


def main(argv=None) -> int:
    args = parse_args(argv)
    env_dir = Path(args.venv).resolve()
    python = venv_python(env_dir)
    if not python.exists():
        print(f"creating environment {env_dir}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
    pip(python, "-q", TORCH_PIN)
    extras = []
    if args.dev:
        extras.append("dev")
    if args.gpu or has_nvidia_driver():
        extras.append("gpu")
    elif args.onnx:
        extras.append("onnx")
    target = f"{ROOT}[{','.join(extras)}]" if extras else str(ROOT)
    pip(python, "-q", "-e", target)
    print(f"keyprop is installed in {env_dir}; run it as {env_dir / 'bin' / 'keyprop'}", flush=True)
    if args.nuke or args.nuke_dir:
        code = install_nuke(args.nuke_dir, python)
        if code:
            return code
    if args.blender or args.blender_exe:
        return install_blender(args.blender_exe, python)
    return 0


def install_blender(exe, python: Path) -> int:
    """Put the extension into the user's Blender, with keyprop_env.json naming this environment's Python."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keyprop_blender_packaging",
                                                  ROOT / "plugin" / "blender" / "packaging.py")
    packaging = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packaging)  # plain Python; the package itself needs bpy
    keyprop_exe = python.parent / ("keyprop.exe" if os.name == "nt" else "keyprop")
    try:
        print(packaging.install(exe, str(python), str(keyprop_exe)), flush=True)
    except packaging.InstallError as exc:
        print(f"install.py: {exc}", file=sys.stderr)
        return 2
    return 0


def install_nuke(nuke_dir, python: Path) -> int:
    """Copy the gizmo into the user's .nuke, with keyprop_env.json naming this environment's keyprop."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("keyprop_install_nuke",
                                                  ROOT / "plugin" / "nuke" / "install_nuke.py")
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)  # plain Python: no Nuke needed
    keyprop_exe = python.parent / ("keyprop.exe" if os.name == "nt" else "keyprop")
    try:
        print(installer.install(str(keyprop_exe), nuke_dir), flush=True)
    except installer.InstallError as exc:
        print(f"install.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"install.py: a step failed: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        sys.exit(1)
