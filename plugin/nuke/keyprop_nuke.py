"""The KeyProp gizmo's Python: Nuke glue only; the logic is in keyprop_command (tested without Nuke).

Process (the button, or a render without GUI):
1. render the gizmo's inputs to EXR with the Write nodes inside the group (nuke.execute):
   plate and mask over the frame range, the clean keyframes at the listed frames only
   (keyprop takes every file present as a keyframe, so stale ones are removed);
2. run `keyprop run ... --progress json` in keyprop's own environment (a separate process:
   Nuke's Python never imports torch), with a nuke.ProgressTask that can cancel it;
3. point the group's Read at the result and show it.

Python 3.9 (Nuke 14) compatible; no numpy, no torch.
"""
import os
import threading

import nuke  # noqa: F401  (only inside Nuke; the tests use a stand-in)

try:  # inside Nuke this folder is on the plugin path; in keyprop's tests it is a package
    from . import keyprop_command as kc
except ImportError:
    import keyprop_command as kc

GIZMO_CLASS = "KeyProp"
# Nodes inside KeyProp.gizmo that this module drives.
WRITE_PLATE, WRITE_MASK, WRITE_KEYS = "write_plate", "write_mask", "write_keys"
KEYS_SOURCE = "keys_source"   # Switch: 0 = the plate, 1 = the keys input
RESULT_READ = "result_read"


def settings(node) -> dict:
    """The gizmo's knobs, checked; raises KeypropError with a line for the artist."""
    keyframes = kc.parse_keyframes(node["keyframes"].value())
    first, last = int(node["first_frame"].value()), int(node["last_frame"].value())
    kc.check_range(first, last, keyframes)
    if not keyframes:
        raise kc.KeypropError("list the clean keyframes (e.g. 1001, 1024) in the keyframes knob")
    work_dir = kc.nuke_path(node["work_dir"].evaluate())
    if not work_dir or not os.path.isabs(work_dir):
        raise kc.KeypropError("the work folder {!r} is not an absolute path: save the script first, or set the "
                              "work folder (where the inputs are rendered for keyprop)".format(work_dir))
    out = kc.nuke_path(node["output"].evaluate()) or work_dir + "/fill.####.exr"
    return {"keyframes": keyframes, "first": first, "last": last, "work_dir": work_dir, "out": out,
            "model": node["model"].evaluate() or "default", "device": node["device"].value(),
            "dilate": int(node["dilate"].value()), "feather": float(node["feather"].value()),
            "existing": node["existing"].value()}


def _execute_frames(write, frames) -> None:
    """nuke.execute over ``frames`` in contiguous runs (one call per run)."""
    frames = sorted(frames)
    start = prev = None
    for f in frames + [None]:
        if start is None:
            start = prev = f
        elif f is not None and f == prev + 1:
            prev = f
        else:
            nuke.execute(write, start, prev)
            start = prev = f


def render_inputs(node, s: dict, only_missing: bool) -> dict:
    """Render plate, mask and keyframes to EXR in the work folder; returns their patterns."""
    patterns = kc.work_patterns(s["work_dir"])
    os.makedirs(s["work_dir"], exist_ok=True)
    out_dir = os.path.dirname(s["out"])
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    frames = list(range(s["first"], s["last"] + 1))
    # Stale keyframes from an earlier list would count as keyframes too.
    for f in set(frames) - set(s["keyframes"]):
        stale = kc.frame_file(patterns["keys"], f)
        if os.path.exists(stale):
            os.remove(stale)
    with node:
        nuke.toNode(KEYS_SOURCE)["which"].setValue(1 if node.input(2) is not None else 0)
        for name, key, todo in ((WRITE_PLATE, "plate", frames), (WRITE_MASK, "mask", frames),
                                (WRITE_KEYS, "keys", s["keyframes"])):
            write = nuke.toNode(name)
            write["file"].setValue(patterns[key])
            if only_missing:
                todo = kc.missing_frames(patterns[key], todo)
            _execute_frames(write, todo)
    return patterns


def show_result(node, s: dict) -> None:
    with node:
        read = nuke.toNode(RESULT_READ)
        read["file"].setValue(s["out"])
        for knob, value in (("first", s["first"]), ("last", s["last"]),
                            ("origfirst", s["first"]), ("origlast", s["last"])):
            read[knob].setValue(value)
        read["reload"].execute()
    node["show_result"].setValue(True)


def command(node, s: dict, patterns: dict, existing=None) -> list:
    return kc.build_run_command(kc.find_keyprop(), patterns["plate"], patterns["mask"], patterns["keys"],
                                s["out"], s["first"], s["last"], model=s["model"], device=s["device"],
                                dilate=s["dilate"], feather=s["feather"], existing=existing or s["existing"])


def process(node=None) -> None:
    """The Process button: render inputs, run keyprop in the background with a cancellable progress bar."""
    node = node or nuke.thisNode()
    if not nuke.env.get("gui"):
        process_blocking(node)
        return
    try:
        s = settings(node)
        patterns = render_inputs(node, s, only_missing=False)
        cmd = command(node, s, patterns)
        run = kc.KeypropRun(cmd)
    except kc.KeypropError as exc:
        nuke.message("KeyProp: {}".format(exc))
        return
    node["status"].setValue("running...")
    threading.Thread(target=_follow_in_background, args=(node, s, run), name="keyprop").start()


def _follow_in_background(node, s: dict, run) -> None:
    task = nuke.ProgressTask("KeyProp {}".format(node.name()))

    def on_event(event):
        task.setProgress(kc.percent(event))
        task.setMessage(kc.progress_message(event))

    try:
        code = kc.follow(run, on_event, task.isCancelled)
    except kc.KeypropError as exc:
        message = str(exc)
        nuke.executeInMainThread(node["status"].setValue, ("failed: " + message,))
        nuke.executeInMainThread(nuke.message, ("KeyProp: " + message,))
        return
    finally:
        del task  # closes the progress bar
    status = "cancelled: finished frames kept" if code == 130 else "done"
    nuke.executeInMainThread(node["status"].setValue, (status,))
    nuke.executeInMainThread(show_result, (node, s))


def process_blocking(node) -> None:
    """No GUI (`nuke -x` on a farm): render missing inputs, fill missing frames, raise on failure."""
    try:
        s = settings(node)
        patterns = render_inputs(node, s, only_missing=True)
        run = kc.KeypropRun(command(node, s, patterns, existing="resume"))
        code = kc.follow(run, lambda e: print("KeyProp {}: {}".format(node.name(), kc.progress_message(e))),
                         lambda: False)
    except kc.KeypropError as exc:
        raise RuntimeError("KeyProp {}: {}".format(node.name(), exc))
    if code != 0:
        raise RuntimeError("KeyProp {}: keyprop stopped (exit {})".format(node.name(), code))
    show_result(node, s)


def upstream_keyprop_nodes(node) -> list:
    """KeyProp gizmos feeding ``node`` (any depth), nearest first."""
    seen, found, todo = set(), [], [node]
    while todo:
        current = todo.pop(0)
        for dep in current.dependencies():
            if dep.fullName() in seen:
                continue
            seen.add(dep.fullName())
            if dep.Class() == GIZMO_CLASS:
                found.append(dep)
            todo.append(dep)
    return found


_busy = set()  # KeyProp nodes being processed: their own internal Writes render inside it


def before_render() -> None:
    """nuke.addBeforeRender callback (init.py): without a GUI, process KeyProp nodes a Write needs."""
    if nuke.env.get("gui"):
        return
    for node in upstream_keyprop_nodes(nuke.thisNode()):
        if node["farm_process"].value() and node.fullName() not in _busy:
            _busy.add(node.fullName())
            try:
                process_blocking(node)
            finally:
                _busy.discard(node.fullName())
