"""The "keyprop" tab in the compositor's sidebar."""
from __future__ import annotations

import bpy

from . import jobs, preferences


class KEYPROP_UL_keyframes(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0):
        row = layout.row(align=True)
        row.prop(item, "frame", text="", emboss=False)
        try:
            row.prop(item, "filepath", text="", placeholder="plate frame is clean")
        except TypeError:  # no placeholder argument in this Blender
            row.prop(item, "filepath", text="")


class KeypropPanel:
    bl_space_type = "NODE_EDITOR"
    bl_region_type = "UI"
    bl_category = "keyprop"

    @classmethod
    def poll(cls, context):
        space = context.space_data
        return space is not None and getattr(space, "tree_type", "") == "CompositorNodeTree"


class KEYPROP_PT_main(KeypropPanel, bpy.types.Panel):
    bl_label = "keyprop"

    def draw(self, context):
        s = context.scene.keyprop
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False

        col = layout.column()
        col.prop(s, "plate_source")
        col.prop(s, {"CLIP": "plate_clip", "IMAGE": "plate_image", "FILES": "plate_pattern"}[s.plate_source])
        col.separator()
        col.prop(s, "mask_source")
        col.prop(s, {"MASK": "mask", "IMAGE": "mask_image", "FILES": "mask_pattern"}[s.mask_source])

        layout.label(text="Keyframes")
        row = layout.row()
        row.template_list("KEYPROP_UL_keyframes", "", s, "keyframes", s, "keyframe_index", rows=3)
        buttons = row.column(align=True)
        buttons.operator("keyprop.keyframe_add", icon="ADD", text="")
        buttons.operator("keyprop.keyframe_remove", icon="REMOVE", text="")
        layout.prop(s, "keys_pattern")

        col = layout.column()
        col.prop(s, "use_scene_range")
        sub = col.column(align=True)
        sub.enabled = not s.use_scene_range
        sub.prop(s, "frame_start")
        sub.prop(s, "frame_end")
        layout.prop(s, "output")

        row = layout.row()
        row.scale_y = 1.4
        if s.running:
            row.enabled = False
            row.operator("keyprop.propagate", text=f"Propagating… {s.progress:.0f}%", icon="TIME")
        else:
            row.operator("keyprop.propagate", icon="PLAY")
        if s.status:
            layout.label(text=s.status)


class KEYPROP_PT_settings(KeypropPanel, bpy.types.Panel):
    bl_label = "Settings"
    bl_parent_id = "KEYPROP_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.keyprop
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        layout.prop(s, "model")
        layout.prop(s, "quality")
        layout.prop(s, "dilate")
        layout.prop(s, "feather")
        layout.prop(s, "device")
        layout.prop(s, "backend")
        mode, python = preferences.mode_and_python(context)
        layout.label(text="Runs " + ("in-process" if mode == "in_process" else "as a worker process")
                     + " (see the add-on preferences)", icon="INFO")
        if mode == "worker" and jobs.worker_command(python) is None:
            layout.label(text="keyprop not found: run install.py --blender", icon="ERROR")


classes = (KEYPROP_UL_keyframes, KEYPROP_PT_main, KEYPROP_PT_settings)
