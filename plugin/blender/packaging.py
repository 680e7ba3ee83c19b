"""Build the extension / legacy add-on zips and install them into a Blender (used by install.py).

Plain Python (no bpy): install.py loads this file by path, with the system Python.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
EXTENSION_ID = "keyprop"
LEGACY_MODULE = "keyprop_blender"  # not "keyprop": that name would shadow keyprop's own package
CONFIG_NAME = "keyprop_env.json"


def source_files() -> list:
    return sorted([p for p in HERE.glob("*.py")] + [HERE / "blender_manifest.toml"])


def _config_bytes(python: Optional[str], keyprop_exe: Optional[str]) -> bytes:
    data = {"python": str(python) if python else "", "keyprop": str(keyprop_exe) if keyprop_exe else ""}
    return (json.dumps(data, indent=2) + "\n").encode()


def build_extension_zip(dest: Path, python: Optional[str] = None, keyprop_exe: Optional[str] = None) -> Path:
    """An extension package: manifest and modules at the zip's root, plus keyprop_env.json."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for path in source_files():
            z.write(path, path.name)
        if python or keyprop_exe:
            z.writestr(CONFIG_NAME, _config_bytes(python, keyprop_exe))
    return dest


def build_legacy_zip(dest: Path, python: Optional[str] = None, keyprop_exe: Optional[str] = None) -> Path:
    """A legacy add-on zip (bl_info): one folder of modules, no manifest."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for path in source_files():
            if path.suffix == ".py":
                z.write(path, f"{LEGACY_MODULE}/{path.name}")
        if python or keyprop_exe:
            z.writestr(f"{LEGACY_MODULE}/{CONFIG_NAME}", _config_bytes(python, keyprop_exe))
    return dest


class InstallError(Exception):
    """One line for install.py to print."""


def find_blender(exe: Optional[str] = None) -> str:
    if exe:
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            raise InstallError(f"--blender-exe {exe}: not an executable file")
        return exe
    found = shutil.which("blender")
    if not found:
        raise InstallError("Blender not found on PATH; give it with --blender-exe PATH")
    return found


def blender_version(exe: str) -> tuple:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120).stdout
    match = re.search(r"Blender (\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        raise InstallError(f"{exe} --version did not print a Blender version")
    return tuple(int(g or 0) for g in match.groups())


_INSTALL_EXPR = """\
import bpy, sys
try:
    bpy.ops.extensions.package_install_files(filepath={zip!r}, repo="user_default", enable_on_install=True,
                                             overwrite=True)
    bpy.ops.wm.save_userpref()
except Exception as exc:
    print("keyprop-install-error:", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    sys.exit(1)
print("keyprop-install-ok")
"""


def install(exe: Optional[str], python: str, keyprop_exe: Optional[str] = None,
            extra_args: Sequence[str] = ()) -> str:
    """Install or update the extension in the user's Blender (4.2+), wired to keyprop's environment."""
    exe = find_blender(exe)
    version = blender_version(exe)
    if version < (4, 2):
        raise InstallError(f"Blender {'.'.join(map(str, version))} is older than 4.2, the oldest keyprop supports")
    with tempfile.TemporaryDirectory() as tmp:
        package = build_extension_zip(Path(tmp) / f"{EXTENSION_ID}.zip", python, keyprop_exe)
        proc = subprocess.run([exe, "-b", "--python-exit-code", "1", *extra_args, "--python-expr",
                               _INSTALL_EXPR.format(zip=str(package))],
                              capture_output=True, text=True, timeout=600)
    said = [line for line in proc.stdout.splitlines() if line.startswith("keyprop-install-")]
    if proc.returncode != 0 or not said or not said[-1].startswith("keyprop-install-ok"):
        reason = said[-1].split(":", 1)[-1].strip() if said else (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise InstallError(f"installing into {exe} failed: {reason}")
    return f"keyprop extension installed in Blender {'.'.join(map(str, version))} ({exe})"
