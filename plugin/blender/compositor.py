"""The fill in the compositor: a plain node group holding an Image node on the fill sequence.

Nothing here is a Python-defined node, so the .blend renders the fill on machines
without the add-on. The group has Plate and Mask inputs so it can stand where the plate
was wired (the fill already contains the plate outside the mask); the output is Image.
:func:`place` puts it where a compositor would: right after the node reading the plate,
else in front of the output.
"""
from __future__ import annotations

import os

import bpy

from . import compat
from .patterns import expand, pattern_from_file

NODE_NAME = "keyprop fill"
INTERFACE = (("Plate", "INPUT", "NodeSocketColor"), ("Mask", "INPUT", "NodeSocketFloat"),
             ("Image", "OUTPUT", "NodeSocketColor"))


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
    sockets = sorted((item.name, item.in_out) for item in group.interface.items_tree if item.item_type == "SOCKET")
    if sockets != sorted((name, in_out) for name, in_out, _ in INTERFACE):
        # Rebuilt only when it differs: new sockets would drop the links the group node has
        # in the compositor, and a rerun must leave it wired where it is.
        group.interface.clear()
        for name, in_out, socket_type in INTERFACE:
            group.interface.new_socket(name, in_out=in_out, socket_type=socket_type)
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


def _same_file(a: str, b: str) -> bool:
    return os.path.normcase(os.path.normpath(a)) == os.path.normcase(os.path.normpath(b))


def plate_node(tree, plate):
    """The node of ``tree`` that reads the plate ``plate`` (a ``sources.Source``), or None.

    A Movie Clip node on the clip, an Image node on the image, or an Image node on a file of
    the plate's pattern.
    """
    if plate is None:
        return None
    for node in tree.nodes:
        if plate.kind == "CLIP" and node.bl_idname == "CompositorNodeMovieClip":
            if node.clip is not None and node.clip.name == plate.name:
                return node
        elif node.bl_idname == "CompositorNodeImage" and node.image is not None:
            if plate.kind == "IMAGE" and node.image.name == plate.name:
                return node
            if plate.kind == "FILES" and node.image.filepath:
                try:
                    pattern = pattern_from_file(bpy.path.abspath(node.image.filepath))
                except ValueError:
                    continue
                if _same_file(expand(pattern, 1), expand(bpy.path.abspath(plate.pattern), 1)):
                    return node
    return None


def place(scene, group, plate=None):
    """Put ``group`` in the scene's compositor where the fill replaces the plate; the group node.

    Where it goes, first that applies:

    1. a keyprop node already wired there (a rerun): it stays where it is;
    2. a node reading the plate (``plate``, a ``sources.Source``) that feeds something: the
       group goes right after it, so everything the plate fed (grades, the output) gets the fill;
    3. something wired to the output (Composite on 4.x, Group Output on 5.0): the group goes
       between that image and the output;
    4. else the group alone feeds the output.

    The user's nodes and links are kept (only the links the group takes over are moved). On
    4.x a compositor made here holds only its Composite (see ``compat.compositor_tree``), so
    the group feeds it directly, as on 5.0.
    """
    tree = compat.compositor_tree(scene, create=True)
    node = next((n for n in tree.nodes if n.bl_idname == "CompositorNodeGroup" and n.node_tree == group), None)
    if node is not None and node.outputs["Image"].is_linked:
        return node
    if node is None:
        node = tree.nodes.new("CompositorNodeGroup")
        node.node_tree = group
        node.name = node.label = NODE_NAME
    fill = node.outputs["Image"]
    source = plate_node(tree, plate)
    taken = [link.to_socket for link in source.outputs[0].links if link.to_node != node] if source else []
    target = compat.output_socket(tree)
    if taken:
        for socket in taken:  # an input takes one link: the new one replaces the plate's
            tree.links.new(fill, socket)
        tree.links.new(source.outputs[0], node.inputs["Plate"])
        node.location = (source.location.x + 250, source.location.y)
    elif target.is_linked:
        before = target.links[0].from_socket
        tree.links.new(before, node.inputs["Plate"])
        tree.links.new(fill, target)
        node.location = ((before.node.location.x + target.node.location.x) / 2, before.node.location.y - 200)
    else:
        tree.links.new(fill, target)
        node.location = (target.node.location.x - 250, target.node.location.y)
    return node


def add_result(scene, out_pattern: str, first: int, last: int, linear: bool, name: str, plate=None):
    """The fill's node group, made or refreshed, placed in the scene's compositor (see :func:`place`)."""
    group = result_group(out_pattern, first, last, linear, name)
    return place(scene, group, plate)


def first_existing(out_pattern: str, first: int, last: int):
    for frame in range(first, last + 1):
        if os.path.isfile(expand(out_pattern, frame)):
            return frame
    return None
