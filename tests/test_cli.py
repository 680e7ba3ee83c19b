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


def test_run_flags_reach_the_settings():
    from keyprop.core import run_cli

    args = cli.parse_args(["run", "--plate", "p.####.png", "--mask", "m.####.png", "--out", "o.####.png",
                           "--no-plate-sources", "--max-sources", "3"])
    settings, shot, _ = run_cli._settings_and_shot(run_cli._job_values(args))
    assert settings.plate_sources is False and settings.max_sources == 3
    args = cli.parse_args(["run", "--plate", "p.####.png", "--mask", "m.####.png", "--out", "o.####.png"])
    settings, _, _ = run_cli._settings_and_shot(run_cli._job_values(args))
    assert settings.plate_sources is True


def test_run_help_says_keyframes_are_optional(capsys):
    import pytest

    with pytest.raises(SystemExit):
        cli.parse_args(["--help"])
    listing = capsys.readouterr().out
    assert "from its keyframes" not in listing
    assert "from clean keyframes when given, else from the shot's own frames" in " ".join(listing.split())


def test_readme_commands_run_keyprop_from_the_venv():
    """install.py puts nothing on PATH: a bare `keyprop` in a README command would not be found."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert blocks
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    bare = [c for c in commands if re.match(r"(?:.*&&\s*)?keyprop\b", c)]
    assert not bare, bare
    assert any(c.startswith(".venv/bin/keyprop run") for c in commands)
    assert "source .venv/bin/activate" in text
