"""The compositor API across Blender 4.2 LTS and 5.0.

5.0 replaced ``scene.node_tree`` (embedded, with a Composite node) by
``scene.compositing_node_group`` (a node group whose Group Output is the result).
"""
from __future__ import annotations

import bpy

LINEAR = "Linear Rec.709"   # keyprop's scene-linear: Rec.709 primaries (core.color)
DISPLAY = "sRGB"
DATA = "Non-Color"


def has_node_group_compositor() -> bool:
    return "compositing_node_group" in bpy.types.Scene.bl_rna.properties


def compositor_tree(scene, create: bool = True):
    """The scene's compositing node tree (made if missing and ``create``), or None.

    A tree made here holds only the output node; a tree that was there (on 4.x also one whose
    "Use Nodes" was off) keeps its nodes.
    """
    if has_node_group_compositor():
        tree = scene.compositing_node_group
        if tree is None and create:
            tree = bpy.data.node_groups.new(f"{scene.name} Compositor", "CompositorNodeTree")
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
            tree.nodes.new("NodeGroupOutput").location = (300, 0)
            scene.compositing_node_group = tree
        return tree
    if create and not scene.use_nodes:
        made = scene.node_tree is None
        scene.use_nodes = True
        if made:
            # 4.x fills a new tree with Render Layers -> Composite (4.5: through a Reroute, plus a
            # Viewer). Nobody asked for those: the 3D scene would be rendered into the result on
            # every frame and the output would already be taken. Keep only the Composite, as 5.0's
            # new compositor group holds only its Group Output.
            for node in list(scene.node_tree.nodes):
                if node.bl_idname != "CompositorNodeComposite":
                    scene.node_tree.nodes.remove(node)
    return scene.node_tree


def output_socket(tree):
    """The socket whose input becomes the render result, made if the tree has none."""
    if has_node_group_compositor():
        outputs = [n for n in tree.nodes if n.bl_idname == "NodeGroupOutput"]
        node = next((n for n in outputs if n.is_active_output), outputs[0] if outputs else None)
        if node is None:
            node = tree.nodes.new("NodeGroupOutput")
        if not any(item.item_type == "SOCKET" and item.in_out == "OUTPUT" for item in tree.interface.items_tree):
            tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        return node.inputs[0]
    node = next((n for n in tree.nodes if n.bl_idname == "CompositorNodeComposite"), None)
    if node is None:
        node = tree.nodes.new("CompositorNodeComposite")
    return node.inputs["Image"]


def new_scratch_scene(name: str, width: int, height: int):
    """An empty scene whose compositor renders nothing but what we put in it."""
    scene = bpy.data.scenes.new(name)
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.use_compositing, r.use_sequencer = True, False
    r.engine = "BLENDER_WORKBENCH"  # never initialised: no Render Layers node, so no scene render
    tree = compositor_tree(scene, create=True)
    for node in list(tree.nodes):
        if node.bl_idname not in ("NodeGroupOutput", "CompositorNodeComposite"):
            tree.nodes.remove(node)
    return scene, tree


def remove_scratch_scene(scene) -> None:
    group = scene.compositing_node_group if has_node_group_compositor() else None
    bpy.data.scenes.remove(scene)
    if group is not None and group.users == 0:
        bpy.data.node_groups.remove(group)


def set_exr_output(settings, depth: str, channels: str, colorspace: str) -> None:
    """Explicit EXR: 16 (half) or 32 (float) bits, and the colour space its values are in."""
    settings.file_format = "OPEN_EXR"
    settings.color_depth = depth
    settings.color_mode = channels
    settings.exr_codec = "ZIP"
    if hasattr(settings, "color_management"):
        settings.color_management = "OVERRIDE"
        settings.linear_colorspace_settings.name = colorspace
