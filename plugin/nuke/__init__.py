"""The KeyProp gizmo for Nuke 14-16. Nuke loads this folder as a plugin path (init.py, menu.py,
KeyProp.gizmo); keyprop's tests import the plain modules from it as a package. See docs/nuke.md.
"""
