"""keyprop for Blender: fill masked regions of a shot from clean keyframes, in the compositor.

An extension (blender_manifest.toml, Blender 4.2 LTS to 5.0) that also installs as a legacy
add-on (bl_info). It never imports keyprop's core or torch at module level: the network runs
in keyprop's own environment as a worker process (``keyprop run --progress json``), or
in-process when keyprop's core imports in Blender's Python. See docs/blender.md.
"""

bl_info = {
    "name": "keyprop",
    "author": "keyprop developers",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "Compositor > Sidebar > keyprop",
    "description": "Fill masked regions of a shot from clean keyframes",
    "category": "Compositing",
}

if "bpy" in locals():  # F8 / script reload
    import importlib
    for _name in ("jobs", "patterns", "compat", "sources", "compositor", "preferences", "properties",
                  "operators", "panels"):
        if _name in locals():
            importlib.reload(locals()[_name])

import bpy  # noqa: E402

from . import compositor, jobs, operators, panels, patterns, preferences, properties, sources  # noqa: E402,F401

_modules = (preferences, properties, operators, panels)


def register():
    for module in _modules:
        for cls in module.classes:
            bpy.utils.register_class(cls)
        if hasattr(module, "register"):
            module.register()


def unregister():
    for module in reversed(_modules):
        if hasattr(module, "unregister"):
            module.unregister()
        for cls in reversed(module.classes):
            bpy.utils.unregister_class(cls)
