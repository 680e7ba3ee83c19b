"""Add-on preferences: how keyprop runs (in Blender's process or as a worker) and where it is."""
from __future__ import annotations

import bpy

from . import jobs

MODES = [
    ("AUTO", "Automatic", "In-process when keyprop imports in Blender's Python, else the worker"),
    ("IN_PROCESS", "In-process", "Call keyprop's core in Blender's process (Blender started inside keyprop's env)"),
    ("WORKER", "Worker process", "Run `keyprop run` in keyprop's own environment and read its progress"),
]


class KeypropPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    mode: bpy.props.EnumProperty(name="Run keyprop", items=MODES, default="AUTO")
    keyprop_python: bpy.props.StringProperty(
        name="keyprop Python", subtype="FILE_PATH",
        description="Python of keyprop's environment (empty: the one install.py recorded, else `keyprop` on PATH)")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "mode")
        layout.prop(self, "keyprop_python")
        mode = jobs.choose_mode(self.mode, self.keyprop_python)
        box = layout.box()
        if mode == "in_process":
            box.label(text="Runs in-process: keyprop's core imports here", icon="CHECKMARK")
        else:
            command = jobs.worker_command(self.keyprop_python)
            if command:
                box.label(text="Runs as a worker: " + " ".join(command), icon="CONSOLE")
            else:
                box.label(text="keyprop not found: run `python install.py --blender`", icon="ERROR")


def get(context=None):
    """The preferences, or None when registered without the add-on system (as a plain module)."""
    context = context or bpy.context
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def mode_and_python(context=None):
    prefs = get(context)
    preference = prefs.mode if prefs else "AUTO"
    python = prefs.keyprop_python if prefs else ""
    return jobs.choose_mode(preference, python), python


classes = (KeypropPreferences,)
