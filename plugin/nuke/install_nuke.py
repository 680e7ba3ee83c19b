"""Install the KeyProp gizmo into a user's Nuke folder (``python install.py --nuke``).

Plain Python, no Nuke: copies this folder's plugin files to ``~/.nuke/keyprop/``, writes
``keyprop_env.json`` there (keyprop's executable, which the gizmo runs), and adds one marked
line to ``~/.nuke/init.py`` that puts that folder on Nuke's plugin path. Running it again
updates the files and leaves init.py alone.
"""
import json
import os
import shutil

PLUGIN_FILES = ("KeyProp.gizmo", "keyprop_nuke.py", "keyprop_command.py", "init.py", "menu.py")
MARKER = "# keyprop: KeyProp gizmo (added by keyprop's install.py --nuke)"
INIT_LINE = "nuke.pluginAddPath('./keyprop')"


class InstallError(Exception):
    pass


def install(keyprop_exe: str, nuke_dir: str = None) -> str:
    """Copy the plugin into ``nuke_dir`` (default ~/.nuke); returns a line saying what was done."""
    nuke_dir = os.path.abspath(os.path.expanduser(nuke_dir or os.path.join("~", ".nuke")))
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(keyprop_exe):
        raise InstallError("{}: keyprop's executable is missing; install keyprop first".format(keyprop_exe))
    target = os.path.join(nuke_dir, "keyprop")
    try:
        os.makedirs(target, exist_ok=True)
        for name in PLUGIN_FILES:
            shutil.copyfile(os.path.join(here, name), os.path.join(target, name))
        with open(os.path.join(target, "keyprop_env.json"), "w") as f:
            json.dump({"keyprop": os.path.abspath(keyprop_exe)}, f, indent=2)
        init_py = os.path.join(nuke_dir, "init.py")
        text = open(init_py).read() if os.path.exists(init_py) else ""
        if MARKER not in text:
            with open(init_py, "a") as f:
                f.write(("" if not text or text.endswith("\n") else "\n")
                        + "{}\nimport nuke\n{}\n".format(MARKER, INIT_LINE))
    except OSError as exc:
        raise InstallError("cannot install into {}: {}".format(nuke_dir, exc.strerror or exc))
    return "KeyProp gizmo installed in {} (runs {}); restart Nuke, then Nodes toolbar > KeyProp".format(
        target, keyprop_exe)
