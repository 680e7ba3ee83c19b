"""The `keyprop` command, in-process and as a subprocess."""
import shutil
import subprocess
import sys

from keyprop import cli


def test_info_lists_presets(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "paper" in out and "47.57 M" in out and "small" in out


def test_parity_command_passes_on_bundled_fixtures(capsys):
    assert cli.main(["parity"]) == 0
    out = capsys.readouterr().out
    assert out.count("-> OK") == 2


def test_parity_bad_folder_is_exit_2(tmp_path, capsys):
    assert cli.main(["parity", "--fixtures", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_runs():
    exe = shutil.which("keyprop") or f"{sys.prefix}/bin/keyprop"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip()
    proc = subprocess.run([sys.executable, "-m", "keyprop.cli"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no command" in proc.stderr
