"""Thin host adapters (Blender, Nuke, farm)."""
