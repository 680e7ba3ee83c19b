"""Operators: propagate (modal in the UI, blocking headless), and the keyframe list's add/remove."""
from __future__ import annotations

import logging
import os
import time

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import compositor, jobs, preferences
from .properties import QUALITY
from .sources import Request, Source, SourceError, prepare

log = logging.getLogger(__name__)

_SKIP = {"SKIP_SAVE"}  # operator settings never carry over: the panel reads scene.keyprop


def _parse_key_frames(text: str):
    frames = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if part:
            try:
                frames.append(int(part))
            except ValueError:
                raise SourceError(f"key_frames: {part!r} is not a frame number (expected e.g. '1001,1040')") from None
    return frames


class KEYPROP_OT_propagate(bpy.types.Operator):
    """Fill the masked region of every frame from the clean keyframes (Esc stops after the current frame)"""

    bl_idname = "keyprop.propagate"
    bl_label = "Propagate"
    bl_options = {"REGISTER"}

    # Mirrors `keyprop run`; when no plate is given the compositor panel's settings are used.
    plate: StringProperty(name="Plate", description="Plate file pattern (plate.####.exr)", options=_SKIP)
    plate_clip: StringProperty(name="Plate clip", description="Movie Clip datablock as plate", options=_SKIP)
    plate_image: StringProperty(name="Plate image", description="Image datablock as plate", options=_SKIP)
    mask: StringProperty(name="Mask", description="Mask file pattern (white = fill)", options=_SKIP)
    mask_datablock: StringProperty(name="Mask datablock", description="Mask datablock, rasterized per frame",
                                   options=_SKIP)
    mask_image: StringProperty(name="Mask image", description="Image datablock as mask", options=_SKIP)
    keys: StringProperty(name="Keyframes", description="Clean keyframe file pattern", options=_SKIP)
    key_frames: StringProperty(name="Clean plate frames", options=_SKIP,
                               description="Comma-separated frames where the plate itself is clean")
    out: StringProperty(name="Output", description="Output pattern (default //keyprop/<plate>/fill.####.<ext>)",
                        options=_SKIP)
    frame_start: IntProperty(name="Start", default=1, options=_SKIP)
    frame_end: IntProperty(name="End", default=0, options=_SKIP,
                           description="Last frame; below Start means the plate's whole range")
    model: StringProperty(name="Model", description="keyprop model (.pt) or preset:NAME; empty: shipped model",
                          options=_SKIP)
    backend: EnumProperty(name="Backend", items=[("torch", "PyTorch", ""), ("onnx", "ONNX Runtime", "")],
                          options=_SKIP)
    device: EnumProperty(name="Device", items=[("auto", "Auto", ""), ("cpu", "CPU", ""), ("cuda", "CUDA", "")],
                         options=_SKIP)
    dilate: IntProperty(name="Dilate", min=0, options=_SKIP)
    feather: FloatProperty(name="Feather", min=0.0, options=_SKIP)
    max_keys: IntProperty(name="Max keys", default=2, min=1, options=_SKIP)
    work_res: IntProperty(name="Work resolution", default=640, min=64, options=_SKIP)
    threads: IntProperty(name="Threads", default=0, min=0, options=_SKIP, description="0 = all cores")
    resume: BoolProperty(name="Resume", options=_SKIP)
    overwrite: BoolProperty(name="Overwrite", options=_SKIP)
    mode: EnumProperty(name="Run", options=_SKIP, items=[("PREFERENCES", "As in Preferences", "")]
                       + preferences.MODES)
    add_to_compositor: BoolProperty(name="Add to compositor", default=True, options=_SKIP)

    @classmethod
    def poll(cls, context):
        settings = getattr(context.scene, "keyprop", None)
        if settings is not None and settings.running:
            cls.poll_message_set("keyprop is already running on this scene (Esc stops it)")
            return False
        return True

    # --- what to run ---------------------------------------------------------------------------

    def _request(self, context):
        if self.plate or self.plate_clip or self.plate_image:
            plate = (Source("FILES", pattern=self.plate) if self.plate else
                     Source("CLIP", self.plate_clip) if self.plate_clip else Source("IMAGE", self.plate_image))
            if self.mask_datablock:
                mask = Source("MASK", self.mask_datablock)
            elif self.mask_image:
                mask = Source("IMAGE", self.mask_image)
            elif self.mask:
                mask = Source("FILES", pattern=self.mask)
            else:
                raise SourceError("no mask: give mask, mask_datablock or mask_image")
            ranged = self.frame_end >= self.frame_start
            req = Request(plate, mask, out=self.out, keys_pattern=self.keys,
                          key_frames=[(f, "") for f in _parse_key_frames(self.key_frames)],
                          frame_start=self.frame_start if ranged else None,
                          frame_end=self.frame_end if ranged else None)
            values = dict(model=self.model, backend=self.backend, device=self.device, dilate=self.dilate,
                          feather=self.feather, max_keys=self.max_keys, work_res=self.work_res,
                          threads=self.threads, resume=self.resume, overwrite=self.overwrite)
            return req, values
        return _request_from_panel(context.scene)

    def _start(self, context):
        req, values = self._request(context)
        prepared = prepare(req)
        spec = jobs.JobSpec(prepared.plate, prepared.mask, prepared.keys, prepared.out, prepared.frames[0],
                            prepared.frames[1], **values)
        mode, python = preferences.mode_and_python(context)
        if self.mode == "IN_PROCESS" or (self.mode == "AUTO" and jobs.in_process_available()):
            mode = "in_process"
        elif self.mode != "PREFERENCES":
            mode = "worker"
        self._req, self._prepared = req, prepared
        log.info("keyprop: %s, %s", mode, " ".join(spec.cli_args()))
        return jobs.start(spec, mode, python), mode

    # --- headless / scripts: blocking ----------------------------------------------------------

    def execute(self, context):
        try:
            job, mode = self._start(context)
        except SourceError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        started = time.perf_counter()
        print(f"keyprop: propagating ({mode.replace('_', '-')})", flush=True)

        def show(ev):
            if ev.get("event") == "setup":
                print(f"keyprop: set up in {ev['seconds']:.1f}s", flush=True)
            elif ev.get("event") == "frame":
                print(f"keyprop: frame {ev['frame']} {ev['status']} ({ev['done']}/{ev['total']}, "
                      f"{time.perf_counter() - started:.1f}s)", flush=True)

        job.wait(on_event=show)
        return self._finish(context, job)

    # --- interactive: modal with a timer; the work happens in a thread or another process --------

    def invoke(self, context, event):
        if bpy.app.background:  # timers never fire without a window
            return self.execute(context)
        settings = context.scene.keyprop
        try:
            settings.status = "preparing plate, mask and keyframes"
            self._job, mode = self._start(context)
        except SourceError as exc:
            settings.status = ""
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        settings.running, settings.progress = True, 0.0
        settings.status = f"starting ({mode.replace('_', '-')})"
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        self._status(context, "keyprop: starting… (Esc to stop)")
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC" and event.value == "PRESS" and not job.finished:
            job.cancel()
            context.scene.keyprop.status = "stopping after the current frame"
            self._status(context, "keyprop: stopping after the current frame…")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        for ev in job.events():
            if ev.get("event") == "setup":
                context.scene.keyprop.status = f"set up in {ev['seconds']:.1f}s, filling {ev['total']} frames"
                self._status(context, f"keyprop: {context.scene.keyprop.status} — Esc to stop")
            elif ev.get("event") == "frame":
                settings = context.scene.keyprop
                settings.progress = 100.0 * ev["done"] / max(ev["total"], 1)
                settings.status = f"frame {ev['frame']} {ev['status']} ({ev['done']}/{ev['total']})"
                context.window_manager.progress_update(int(settings.progress))
                self._status(context, f"keyprop: {settings.status} — Esc to stop")
        if not job.finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        self._status(context, None)
        context.scene.keyprop.running = False
        return self._finish(context, job)

    @staticmethod
    def _status(context, text):
        if context.workspace is not None:
            context.workspace.status_text_set(text)
        for area in (context.screen.areas if context.screen else ()):
            if area.type == "NODE_EDITOR":
                area.tag_redraw()

    # --- the end ---------------------------------------------------------------------------------

    def _finish(self, context, job):
        settings = getattr(context.scene, "keyprop", None)
        if job.state == "error":
            if settings is not None:
                settings.status = job.message
            self.report({"ERROR"}, job.message)
            return {"CANCELLED"}
        p = self._prepared
        first = compositor.first_existing(p.out, *p.frames)
        if self.add_to_compositor and first is not None:
            name = os.path.basename(os.path.dirname(p.out)) or "fill"
            compositor.add_result(context.scene, p.out, p.frames[0], p.frames[1], p.linear, name,
                                  plate=self._req.plate)
        if settings is not None:
            settings.status = f"{job.state}: {job.done} of {job.total} frame(s)"
        if job.state == "cancelled":
            self.report({"WARNING"}, f"keyprop: stopped after {job.done} of {job.total} frames; "
                                     "finished frames are kept")
            return {"CANCELLED"}
        self.report({"INFO"}, f"keyprop: {job.done} frame(s) written to {os.path.dirname(p.out)}")
        return {"FINISHED"}


def _panel_source(role, kind, datablocks, pattern):
    """The panel's choice for ``role`` ('plate'/'mask'): a datablock of ``kind``, or files."""
    if kind in datablocks:
        block, what = datablocks[kind]
        if block is None:
            raise SourceError(f"choose {what} as {role}")
        return Source(kind, block.name)
    return Source("FILES", pattern=pattern)


def _request_from_panel(scene):
    s = scene.keyprop
    plate = _panel_source("plate", s.plate_source, {"CLIP": (s.plate_clip, "a Movie Clip"),
                                                     "IMAGE": (s.plate_image, "an image sequence")},
                          s.plate_pattern)
    mask = _panel_source("mask", s.mask_source, {"MASK": (s.mask, "a Mask"),
                                                 "IMAGE": (s.mask_image, "an image sequence")},
                         s.mask_pattern)
    first, last = (scene.frame_start, scene.frame_end) if s.use_scene_range else (s.frame_start, s.frame_end)
    req = Request(plate, mask, out=s.output, keys_pattern=s.keys_pattern,
                  key_frames=[(k.frame, k.filepath) for k in s.keyframes], frame_start=first, frame_end=last)
    values = dict(model=s.model and bpy.path.abspath(s.model), backend=s.backend, device=s.device,
                  dilate=s.dilate, feather=s.feather, work_res=QUALITY[s.quality], overwrite=True)
    return req, values


class KEYPROP_OT_keyframe_add(bpy.types.Operator):
    """Add the current frame as a keyframe (the plate frame is clean, or give its clean image)"""

    bl_idname = "keyprop.keyframe_add"
    bl_label = "Add Current Frame"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        s = context.scene.keyprop
        frame = context.scene.frame_current
        for i, k in enumerate(s.keyframes):
            if k.frame == frame:
                s.keyframe_index = i
                return {"FINISHED"}
        item = s.keyframes.add()
        item.frame = frame
        s.keyframe_index = len(s.keyframes) - 1
        return {"FINISHED"}


class KEYPROP_OT_keyframe_remove(bpy.types.Operator):
    """Remove the selected keyframe"""

    bl_idname = "keyprop.keyframe_remove"
    bl_label = "Remove Keyframe"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        s = context.scene.keyprop
        if not len(s.keyframes):
            cls.poll_message_set("no keyframes to remove")
            return False
        return True

    def execute(self, context):
        s = context.scene.keyprop
        s.keyframes.remove(s.keyframe_index)
        s.keyframe_index = min(s.keyframe_index, len(s.keyframes) - 1)
        return {"FINISHED"}


classes = (KEYPROP_OT_propagate, KEYPROP_OT_keyframe_add, KEYPROP_OT_keyframe_remove)
