"""tools/blender_envs.py: the Blender version matrix's environments and its test runner (no bpy needed)."""
from __future__ import annotations

import configparser
import os
import sys
import time
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _tool():
    return load_script("tools/blender_envs.py", "keyprop_blender_envs")


def test_versions_cover_the_claimed_range_and_the_dev_pin():
    tool = _tool()
    assert list(tool.VERSIONS) == ["4.2", "4.5", "5.0"]  # the manifest's 4.2 LTS to 5.0
    for line, wheel in tool.VERSIONS.items():
        assert wheel.startswith(line + ".")
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    dev = cfg["options.extras_require"]["dev"]
    assert f"bpy=={tool.VERSIONS['5.0']}" in dev, "the dev environment's bpy is the matrix's 5.0"


def test_parse_args():
    tool = _tool()
    assert tool.parse_args(["test", "all"]).versions == ["4.2", "4.5", "5.0"]
    args = tool.parse_args(["test", "4.2", "--pytest", "-k", "panels"])
    assert args.versions == ["4.2"] and args.pytest == ["-k", "panels"]
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(["make", "3.6"])
    assert exc.value.code == 2


def test_has_bpy_reads_the_installed_release(tmp_path):
    tool = _tool()
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / "bpy-4.2.23.dist-info").mkdir(parents=True)
    python = tmp_path / "bin" / "python"
    assert tool.has_bpy(python, "4.2.23") and not tool.has_bpy(python, "4.2.22")


def test_a_hanging_run_is_killed_with_its_children(tmp_path, monkeypatch):
    """A Blender that hangs (bpy 4.5 at exit) fails the version's run; nothing is left running."""
    tool = _tool()
    pid_file = tmp_path / "child.pid"
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\n"
                    "import subprocess, sys, time\n"
                    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                    f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                    "print('1 passed', flush=True)\n"
                    "time.sleep(120)\n")
    fake.chmod(0o755)
    monkeypatch.setattr(tool, "TEST_TIMEOUT", 3)
    started = time.monotonic()
    code, summary = tool.run_tests("4.2", fake, [])
    assert code == 124 and "killed after 3 s" in summary
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # reaped by init once killed
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the run's child process survived the timeout")


def test_a_line_shares_only_a_dev_environment(tmp_path):
    """A line's environment takes keyprop, torch and pytest from a dev environment (one with
    some bpy, pytest and torch installed), not from a runtime-only one."""
    tool = _tool()
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.touch()
    assert tool.site_packages(python) == site
    for name in ("torch-2.13.0", "pytest-9.2.0"):
        (site / f"{name}.dist-info").mkdir()
    assert not tool.can_share(python)  # no bpy: its dependencies may be missing
    (site / "bpy-5.0.1.dist-info").mkdir()
    assert tool.can_share(python)
    assert not tool.can_share(tmp_path / "nowhere" / "bin" / "python")


def test_drop_tests_each_line_before_the_next_is_made(tmp_path, monkeypatch):
    """With --drop (CI's small disk) a line's environment is made, tested and removed before the
    next line's is made: one bpy on disk at a time."""
    tool = _tool()
    monkeypatch.setattr(tool, "ENVS", tmp_path / ".venv-blender")
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    steps = []

    def make(version):
        assert not any(tool.ENVS.glob("*")), "an earlier line's environment is still on disk"
        tool.env_dir(version).mkdir(parents=True)
        steps.append(("make", version))
        return tool.env_dir(version) / "bin" / "python"

    def run_tests(version, python, pytest_args):
        assert tool.env_dir(version).is_dir()
        steps.append(("test", version))
        return (0 if version == "4.2" else 1), "summary"

    monkeypatch.setattr(tool, "make", make)
    monkeypatch.setattr(tool, "run_tests", run_tests)
    assert tool.main(["test", "4.2", "4.5", "--drop"]) == 1  # 4.5's failure still fails the run
    assert steps == [("make", "4.2"), ("test", "4.2"), ("make", "4.5"), ("test", "4.5")]
    assert not any(tool.ENVS.glob("*"))
