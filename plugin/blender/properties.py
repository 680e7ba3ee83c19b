"""The compositor panel's settings: one PropertyGroup on the scene (``scene.keyprop``)."""
from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty,
                       PointerProperty, StringProperty)

QUALITY = {"DRAFT": 320, "STANDARD": 640, "HIGH": 1024}  # the network's long side of the ROI

DEVICES = [("auto", "Auto", "CUDA when available, else CPU"), ("cpu", "CPU", ""), ("cuda", "CUDA", "")]
BACKENDS = [("torch", "PyTorch", ""), ("onnx", "ONNX Runtime", "")]


class KeypropKeyframe(bpy.types.PropertyGroup):
    frame: IntProperty(name="Frame", description="Frame the clean image belongs to")
    filepath: StringProperty(name="Image", subtype="FILE_PATH",
                             description="Clean (painted) image of this frame; empty: the plate frame itself is clean")


class KeypropSettings(bpy.types.PropertyGroup):
    plate_source: EnumProperty(name="Plate", items=[
        ("CLIP", "Movie Clip", "A Movie Clip datablock (movie or sequence)"),
        ("IMAGE", "Image", "An image-sequence Image datablock"),
        ("FILES", "Files", "A file pattern such as //plates/plate.####.exr")], default="CLIP")
    plate_clip: PointerProperty(name="Movie Clip", type=bpy.types.MovieClip)
    plate_image: PointerProperty(name="Image", type=bpy.types.Image)
    plate_pattern: StringProperty(name="Pattern", subtype="FILE_PATH")

    mask_source: EnumProperty(name="Mask", items=[
        ("MASK", "Mask", "A Mask datablock, rasterized per frame"),
        ("IMAGE", "Image", "An image-sequence Image datablock (white = fill)"),
        ("FILES", "Files", "A file pattern (white = fill)")], default="MASK")
    mask: PointerProperty(name="Mask", type=bpy.types.Mask)
    mask_image: PointerProperty(name="Image", type=bpy.types.Image)
    mask_pattern: StringProperty(name="Pattern", subtype="FILE_PATH")

    keyframes: CollectionProperty(type=KeypropKeyframe)
    keyframe_index: IntProperty()
    keys_pattern: StringProperty(name="Keyframe files", subtype="FILE_PATH",
                                 description="Pattern of clean keyframe files (every file is a keyframe); "
                                             "used instead of the list when set")

    use_scene_range: BoolProperty(name="Scene range", default=True)
    frame_start: IntProperty(name="Start", default=1)
    frame_end: IntProperty(name="End", default=250)

    model: StringProperty(name="Model", subtype="FILE_PATH",
                          description="keyprop model (.pt); empty: the shipped model")
    quality: EnumProperty(name="Quality", items=[
        ("DRAFT", "Draft", "Network at 320 px (fast)"),
        ("STANDARD", "Standard", "Network at 640 px"),
        ("HIGH", "High", "Network at 1024 px (slow)")], default="STANDARD")
    backend: EnumProperty(name="Backend", items=BACKENDS, default="torch")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    dilate: IntProperty(name="Dilate", min=0, soft_max=64, subtype="PIXEL")
    feather: FloatProperty(name="Feather", min=0.0, soft_max=32.0, subtype="PIXEL")
    output: StringProperty(name="Output", subtype="FILE_PATH",
                           description="Output pattern; empty: //keyprop/<plate>/fill.####.exr")

    # Progress, shown by the panel while a run is going.
    running: BoolProperty(options={"SKIP_SAVE"})
    progress: FloatProperty(subtype="PERCENTAGE", min=0, max=100, options={"SKIP_SAVE"})
    status: StringProperty(options={"SKIP_SAVE"})


classes = (KeypropKeyframe, KeypropSettings)


def register():
    bpy.types.Scene.keyprop = PointerProperty(type=KeypropSettings)


def unregister():
    del bpy.types.Scene.keyprop
