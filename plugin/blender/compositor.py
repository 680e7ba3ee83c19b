"""The fill in the compositor: a plain node group holding an Image node on the fill sequence.

Nothing here is a Python-defined node, so the .blend renders the fill on machines
without the add-on. The group has Plate and Mask inputs so it can stand where the plate
was wired (the fill already contains the plate outside the mask); the output is Image.
"""
from __future__ import annotations

import os

import bpy

from . import compat
from .patterns import expand

NODE_NAME = "keyprop fill"


def _image(first_file: str, name: str, linear: bool):
    path = bpy.path.relpath(first_file) if bpy.data.filepath else first_file
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(first_file, check_existing=False)
        image.name = name
    image.filepath = path
    image.source = "SEQUENCE"
    # EXR fills of linear plates are scene-linear; fills of byte plates stay display-encoded.
    image.colorspace_settings.name = compat.LINEAR if linear else compat.DISPLAY
    image.reload()
    return image


def result_group(out_pattern: str, first: int, last: int, linear: bool, name: str):
    """Make (or refresh) the node group ``keyprop <name>`` reading ``out_pattern`` frames first..last."""
    group_name = f"keyprop {name}"
    group = bpy.data.node_groups.get(group_name)
    if group is None:
        group = bpy.data.node_groups.new(group_name, "CompositorNodeTree")
    group.nodes.clear()
    group.interface.clear()
    group.interface.new_socket("Plate", in_out="INPUT", socket_type="NodeSocketColor")
    group.interface.new_socket("Mask", in_out="INPUT", socket_type="NodeSocketFloat")
    group.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    group_in = group.nodes.new("NodeGroupInput")
    group_in.location = (-400, 0)
    node = group.nodes.new("CompositorNodeImage")
    node.location = (-150, 0)
    node.image = _image(expand(out_pattern, first), f"keyprop {name} fill", linear)
    # Scene frame N reads file N: image-user frame = N - frame_start + 1 + frame_offset.
    node.frame_duration = last - first + 1
    node.frame_start = first
    node.frame_offset = first - 1
    node.use_auto_refresh = True
    group_out = group.nodes.new("NodeGroupOutput")
    group_out.location = (150, 0)
    group.links.new(node.outputs["Image"], group_out.inputs["Image"])
    return group


def place(scene, group, plate_socket=None, mask_socket=None):
    """Put ``group`` in the scene's compositor; wire it to the output if nothing is wired there."""
    tree = compat.compositor_tree(scene, create=True)
    node = next((n for n in tree.nodes if n.bl_idname == "CompositorNodeGroup" and n.node_tree == group), None)
    if node is None:
        node = tree.nodes.new("CompositorNodeGroup")
        node.node_tree = group
        node.name = node.label = NODE_NAME
        node.location = (0, -200)
    if plate_socket is not None:
        tree.links.new(plate_socket, node.inputs["Plate"])
    if mask_socket is not None:
        tree.links.new(mask_socket, node.inputs["Mask"])
    target = compat.output_socket(tree)
    if not target.is_linked:
        tree.links.new(node.outputs["Image"], target)
    return node


def add_result(scene, out_pattern: str, first: int, last: int, linear: bool, name: str):
    group = result_group(out_pattern, first, last, linear, name)
    return place(scene, group)


def first_existing(out_pattern: str, first: int, last: int):
    for frame in range(first, last + 1):
        if os.path.isfile(expand(out_pattern, frame)):
            return frame
    return None
