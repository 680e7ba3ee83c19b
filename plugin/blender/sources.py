"""Turn Blender sources (Movie Clip, Image, Mask datablocks, file patterns) into keyprop's files.

keyprop reads frame sequences from disk. File patterns and image sequences keyprop can read
are handed over as they are (so the fill is the CLI's, bit for bit). Everything else goes
through Blender's compositor, one frame at a time, into EXR files under the job folder:

* Movie Clips and movie Images: EXR half, scene-linear (Blender's float buffers are
  scene-linear and premultiplied; byte images are display-encoded and Blender linearises
  them by their colour space on the way in).
* Mask datablocks: rasterized at the plate's size to EXR float (grey RGB; OpenCV reads no single-channel Blender EXR), values as
  data (Non-Color). Each frame is its own render after ``frame_set``: rendering the range
  with ``animation=True`` evaluated an animated mask one frame late.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from typing import List, Optional, Sequence, Tuple

import bpy

from . import compat
from .patterns import KEYPROP_EXTENSIONS, expand, extension, pattern_from_file

log = logging.getLogger(__name__)


class SourceError(Exception):
    """Bad input from the artist: one line, shown as the operator's report."""


@dataclasses.dataclass
class Source:
    kind: str            # 'CLIP', 'IMAGE', 'MASK' or 'FILES'
    name: str = ""       # datablock name for CLIP/IMAGE/MASK
    pattern: str = ""    # file pattern for FILES


@dataclasses.dataclass
class Request:
    """What to propagate, in Blender's terms; :func:`prepare` turns it into files."""

    plate: Source
    mask: Source
    out: str = ""                                    # output pattern; "" = //keyprop/<job>/fill.####.<ext>
    keys_pattern: str = ""                           # clean keyframe files (every file is a keyframe)
    key_frames: List[Tuple[int, str]] = dataclasses.field(default_factory=list)  # (frame, image file or "")
    frame_start: Optional[int] = None
    frame_end: Optional[int] = None
    job_name: str = ""


@dataclasses.dataclass
class Prepared:
    plate: str
    mask: str
    keys: str
    out: str
    frames: Tuple[int, int]
    linear: bool          # fill values are scene-linear (else display-encoded)


def _abspath(path: str) -> str:
    return os.path.normpath(bpy.path.abspath(path)) if path else path


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "shot"


def job_folder(name: str) -> str:
    """``//keyprop/<name>`` beside the .blend."""
    if not bpy.data.filepath:
        raise SourceError("save the .blend first (the fill goes to //keyprop/ beside it) or give an output path")
    return _abspath(f"//keyprop/{_safe_name(name)}")


def _frames_on_disk(pattern: str) -> List[int]:
    directory, name = os.path.split(pattern)
    token = re.search(r"%0?\d*d|#+", name)
    if token is None:
        raise SourceError(f"no frame token (#### or %04d) in {pattern}")
    rx = re.compile(re.escape(name[:token.start()]) + r"(-?\d+)" + re.escape(name[token.end():]) + r"\Z")
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(rx.match, names) if m and os.path.basename(
        expand(pattern, int(m.group(1)))) == m.group(0))


def _image_pattern(image) -> Optional[str]:
    """The file pattern of an image sequence keyprop reads as it is, else None."""
    if image.source not in ("SEQUENCE", "FILE") or image.packed_file is not None:
        return None
    path = _abspath(image.filepath)
    if extension(path) not in KEYPROP_EXTENSIONS:
        return None
    try:
        return pattern_from_file(path)
    except ValueError:
        return None


def _datablock(collection, name: str, what: str):
    item = collection.get(name) if name else None
    if item is None:
        raise SourceError(f"no {what} named {name!r}" if name else f"no {what} chosen")
    return item


def _size_of_file(path: str) -> Tuple[int, int]:
    """(width, height) of an image file, read by Blender."""
    if not os.path.isfile(path):
        raise SourceError(f"file not found: {path}")
    image = bpy.data.images.load(path, check_existing=False)
    try:
        width, height = image.size
    finally:
        bpy.data.images.remove(image)
    if not width:
        raise SourceError(f"cannot read the image {path}")
    return width, height


def render_frames(frames: Sequence[int], size: Tuple[int, int], out_pattern: str, connect, depth: str,
                  channels: str, colorspace: str, progress=None) -> str:
    """Render ``connect(tree) -> socket`` through a scratch scene's compositor, one EXR per frame."""
    os.makedirs(os.path.dirname(out_pattern), exist_ok=True)
    active = bpy.context.scene
    was = active.frame_current
    scene, tree = compat.new_scratch_scene("keyprop scratch", *size)
    try:
        tree.links.new(connect(tree), compat.output_socket(tree))
        compat.set_exr_output(scene.render.image_settings, depth, channels, colorspace)
        for i, frame in enumerate(frames):
            # Animation (a mask's layers and points) is written back to the datablocks by the
            # active scene's evaluation only: the scratch scene's own frame_set is not enough.
            active.frame_set(frame)
            scene.frame_set(frame)
            scene.render.filepath = expand(out_pattern, frame)
            bpy.ops.render.render(write_still=True, scene=scene.name)
            if not os.path.isfile(scene.render.filepath):
                raise SourceError(f"Blender did not write {scene.render.filepath}")
            if progress:
                progress(i + 1, len(frames))
    finally:
        compat.remove_scratch_scene(scene)
        active.frame_set(was)
    return out_pattern


def _clip_node(clip):
    def connect(tree):
        node = tree.nodes.new("CompositorNodeMovieClip")
        node.clip = clip
        return node.outputs["Image"]
    return connect


def _image_node(image, first: int, last: int):
    def connect(tree):
        node = tree.nodes.new("CompositorNodeImage")
        node.image = image
        if image.source in ("SEQUENCE", "MOVIE"):
            node.frame_duration = max(image.frame_duration, last)
            node.frame_start, node.frame_offset = 1, 0  # scene frame N shows the source's frame N
        return node.outputs["Image"]
    return connect


def _mask_node(mask):
    def connect(tree):
        node = tree.nodes.new("CompositorNodeMask")
        node.mask = mask  # sized by the scene (the plate's size); feather and motion blur as set
        return node.outputs["Mask"]
    return connect


def _plate(req: Request, folder: str, frames_hint) -> Tuple[str, bool, Tuple[int, int]]:
    """(plate pattern, rendered by Blender, frame range)."""
    src = req.plate
    if src.kind == "FILES":
        pattern = _abspath(src.pattern)
        return pattern, False, _range(req, _frames_on_disk(pattern), pattern)
    if src.kind == "IMAGE":
        image = _datablock(bpy.data.images, src.name, "image")
        pattern = _image_pattern(image)
        if pattern:
            return pattern, False, _range(req, _frames_on_disk(pattern), pattern)
        first, last = _range(req, list(range(1, image.frame_duration + 1)), image.name)
        connect, size = _image_node(image, first, last), tuple(image.size)
    elif src.kind == "CLIP":
        clip = _datablock(bpy.data.movieclips, src.name, "movie clip")
        start = clip.frame_start
        first, last = _range(req, list(range(start, start + clip.frame_duration)), clip.name)
        connect, size = _clip_node(clip), tuple(clip.size)
    else:
        raise SourceError(f"unknown plate source {src.kind!r}")
    if not size[0]:
        raise SourceError(f"cannot read the plate {src.name!r} (missing file?)")
    pattern = os.path.join(folder, "plate", "plate.####.exr")
    log.info("keyprop: rendering plate %s frames %d-%d to %s", src.name, first, last, pattern)
    render_frames(range(first, last + 1), size, pattern, connect, "16", "RGB", compat.LINEAR,
                  progress=frames_hint)
    return pattern, True, (first, last)


def _range(req: Request, available: List[int], what: str) -> Tuple[int, int]:
    if req.frame_start is not None and req.frame_end is not None:
        return req.frame_start, req.frame_end
    if not available:
        raise SourceError(f"no plate frames found for {what}")
    return available[0], available[-1]


def _mask(req: Request, folder: str, frames: Tuple[int, int], size: Tuple[int, int]) -> str:
    src = req.mask
    if src.kind == "FILES":
        return _abspath(src.pattern)
    if src.kind == "IMAGE":
        image = _datablock(bpy.data.images, src.name, "mask image")
        pattern = _image_pattern(image)
        if pattern:
            return pattern  # keyprop reads the file's values as data, like Non-Color
        # Through Blender: read the values as data, not as colour to be linearised.
        saved = image.colorspace_settings.name
        image.colorspace_settings.name = compat.DATA
        try:
            connect = _image_node(image, *frames)
            return render_frames(range(frames[0], frames[1] + 1), size,
                                 os.path.join(folder, "mask", "mask.####.exr"), connect, "32", "RGB", compat.DATA)
        finally:
            image.colorspace_settings.name = saved
    if src.kind == "MASK":
        mask = _datablock(bpy.data.masks, src.name, "mask")
        return rasterize_mask(mask, frames, size, os.path.join(folder, "mask", "mask.####.exr"))
    raise SourceError(f"unknown mask source {src.kind!r}")


def rasterize_mask(mask, frames: Tuple[int, int], size: Tuple[int, int], pattern: str) -> str:
    """Render a Mask datablock at ``size`` (width, height) for each frame of ``frames`` (inclusive)."""
    log.info("keyprop: rasterizing mask %s frames %d-%d at %dx%d", mask.name, frames[0], frames[1], *size)
    return render_frames(range(frames[0], frames[1] + 1), size, pattern, _mask_node(mask), "32", "RGB",
                         compat.DATA)


def _keys(req: Request, folder: str, plate: str) -> str:
    if req.keys_pattern:
        pattern = _abspath(req.keys_pattern)
        if not _frames_on_disk(pattern):  # as `keyprop run --keys`: a typo, not "no keyframes"
            raise SourceError(f"no keyframe file matches {pattern}")
        return pattern
    if not req.key_frames:
        raise SourceError("no keyframes: add the current frame (if it is clean) or keyframe images")
    ext = extension(plate)
    directory = os.path.join(folder, "keys")
    os.makedirs(directory, exist_ok=True)
    pattern = os.path.join(directory, "key.####" + ext)
    for name in os.listdir(directory):  # this folder is ours: stale keyframes must not count
        if name.startswith("key."):
            os.remove(os.path.join(directory, name))
    for frame, path in req.key_frames:
        source = _abspath(path) if path else expand(plate, frame)
        if not os.path.isfile(source):
            raise SourceError(f"keyframe {frame}: file not found: {source}")
        if extension(source) != ext:
            raise SourceError(f"keyframe {frame}: {os.path.basename(source)} is not a {ext} file like the plate "
                              f"frames; save it as {ext}")
        shutil.copyfile(source, expand(pattern, frame))
    return pattern


def prepare(req: Request, progress=None) -> Prepared:
    """Files for `keyprop run`: plate, mask and keyframe patterns and the output pattern."""
    name = req.job_name or req.plate.name or os.path.basename(os.path.dirname(req.plate.pattern)) or "shot"
    folder = job_folder(name) if not req.out else os.path.dirname(_abspath(req.out))
    plate, rendered, frames = _plate(req, folder, progress)
    if req.frame_start is None:
        req.frame_start, req.frame_end = frames
    size = _size_of_file(expand(plate, frames[0]))
    mask = _mask(req, folder, frames, size)
    keys = _keys(req, folder, plate)
    ext = extension(plate)
    out = _abspath(req.out) if req.out else os.path.join(folder, "fill.####" + (".exr" if rendered else ext))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    linear = rendered or ext == ".exr"  # core treats float plates as scene-linear, integer ones as display
    return Prepared(plate, mask, keys, out, frames, linear)
