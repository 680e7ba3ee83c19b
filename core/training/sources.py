"""Where training pictures come from: image folders, frame-sequence folders, the sample
images scikit-image ships, and procedural textures.

Every source yields display-referred float32 ``(H, W, 3)`` pictures in [0, 1]. Pictures are
held in memory at a bounded size (long side ``max_side``): crops are small, and decoding a
large file for every sample would dominate the step time on CPU.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

import cv2
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "SKIMAGE_TRAIN", "SKIMAGE_HELD_OUT", "load_folder", "load_skimage", "procedural_texture",
           "to_rgb_float", "PictureBank"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".bmp", ".webp")
# scikit-image's bundled samples (no download). coffee, rocket and chelsea/cat are held out:
# the quality benchmark builds its shots from them, so training never sees them.
SKIMAGE_TRAIN = ("astronaut", "brick", "camera", "clock", "coins", "colorwheel", "grass", "gravel",
                 "immunohistochemistry", "moon", "page", "text", "retina", "hubble_deep_field", "cell")
SKIMAGE_HELD_OUT = ("coffee", "rocket", "chelsea")


def to_rgb_float(image: np.ndarray, max_side: Optional[int] = None) -> np.ndarray:
    """Any uint8/uint16/float/bool picture (gray, RGB, RGBA) -> float32 (H, W, 3) in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    elif image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        image = image.astype(np.float32) / 65535.0
    else:
        image = image.astype(np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = np.clip(image[:, :, :3], 0.0, 1.0)
    if max_side and max(image.shape[:2]) > max_side:
        scale = max_side / max(image.shape[:2])
        image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                           interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image, dtype=np.float32)


def _read_display(path: Path) -> np.ndarray:
    """A picture file as display-referred RGB: float files (scene-linear) go through to_display."""
    from ..color import is_linear_by_default, to_display
    from ..io import read_image

    image = read_image(str(path))
    pixels = image.pixels[:, :, :3] if image.pixels.shape[2] >= 3 else image.pixels
    if is_linear_by_default(image.format):
        pixels = np.clip(to_display(pixels), 0.0, 1.0)
    return pixels


def _looks_like_a_sequence(pictures: Sequence[np.ndarray], numbers: Sequence[int]) -> bool:
    """Numbered pictures form a shot only if the numbers run on and neighbours look alike.

    A camera's stills (DSC_0001.jpg, DSC_0002.jpg, ...) are numbered too; using one as the
    reference of another would teach the network to copy unrelated content.
    """
    if len(pictures) < 3 or max(np.diff(sorted(numbers))) > 2:
        return False
    if len({p.shape for p in pictures}) != 1:
        return False
    thumbs = [cv2.resize(p, (32, 32), interpolation=cv2.INTER_AREA) for p in pictures]
    diffs = [float(np.abs(a - b).mean()) for a, b in zip(thumbs, thumbs[1:])]
    return float(np.median(diffs)) < 0.1


def load_folder(folder, max_side: int = 768, min_side: int = 64):
    """Pictures and frame sequences under ``folder`` (searched recursively).

    Pictures in one directory whose names differ only in a frame number (three or more,
    numbers running on, neighbouring frames alike) are read as a sequence; every other
    picture stands alone. Returns ``(images, sequences)``: a list of arrays and a list of
    lists of arrays.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: training data folder not found")
    images, sequences = [], []
    dirs = [folder] + sorted(p for p in folder.rglob("*") if p.is_dir())
    for d in dirs:
        files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        groups = {}
        for p in files:
            groups.setdefault((p.stem.rstrip("0123456789"), p.suffix.lower()), []).append(p)
        for paths in groups.values():
            loaded = []
            for p in paths:
                try:
                    pic = to_rgb_float(_read_display(p), max_side)
                except Exception as exc:  # unreadable files are skipped, with a note
                    log.warning("%s: skipped (%s)", p, exc)
                    continue
                if min(pic.shape[:2]) >= min_side:
                    loaded.append((p, pic))
            numbered = [(p, pic) for p, pic in loaded if p.stem != p.stem.rstrip("0123456789")]
            numbers = [int(p.stem[len(p.stem.rstrip("0123456789")):]) for p, _ in numbered]
            if _looks_like_a_sequence([pic for _, pic in numbered], numbers):
                order = np.argsort(numbers)
                sequences.append([numbered[i][1] for i in order])
                in_sequence = {p for p, _ in numbered}
                images.extend(pic for p, pic in loaded if p not in in_sequence)
            else:
                images.extend(pic for _, pic in loaded)
    return images, sequences


def load_skimage(names: Sequence[str] = SKIMAGE_TRAIN, max_side: int = 768) -> List[np.ndarray]:
    """scikit-image's bundled sample pictures (the ``train`` extra installs scikit-image)."""
    try:
        import skimage.data
    except ImportError:
        raise ImportError("the scikit-image sample pictures need scikit-image: "
                          "pip install 'keyprop[train]'") from None
    out = []
    for name in names:
        try:
            out.append(to_rgb_float(getattr(skimage.data, name)(), max_side))
        except Exception as exc:  # some samples need a download in other versions
            log.warning("scikit-image sample %r unavailable: %s", name, exc)
    return out


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 5) -> np.ndarray:
    """Multi-octave value noise (H, W) in about [0, 1]."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.random((cells, cells)).astype(np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= rng.uniform(0.45, 0.7)
    return np.clip(out / total, 0, 1)


def procedural_texture(rng: np.random.Generator, size: int = 512) -> np.ndarray:
    """A random picture with natural-image statistics: dead leaves over coloured noise, stripes.

    Dead leaves (occluding discs and rectangles of random colour and size, heavy-tailed)
    have the scale invariance and sharp edges of natural pictures; the noise underlay and
    the occasional stripes add fine texture that flow and fill must reproduce.
    """
    base = np.stack([_value_noise(rng, size) for _ in range(3)], axis=2)
    tint = rng.random(3).astype(np.float32)
    image = 0.5 * base + 0.5 * tint
    n_shapes = int(rng.integers(20, 150))
    for _ in range(n_shapes):
        r = int(size * 0.25 * rng.random() ** 3) + 2
        x, y = (int(v) for v in rng.integers(0, size, 2))
        colour = tuple(float(c) for c in rng.random(3))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), r, colour, -1, lineType=cv2.LINE_AA)
        else:
            cv2.rectangle(image, (x - r, y - r // 2), (x + r, y + r // 2), colour, -1, lineType=cv2.LINE_AA)
    if rng.random() < 0.3:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(0.05, 0.4)
        stripes = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)))
        image = image * (0.7 + 0.3 * stripes[:, :, None])
    grain = rng.normal(0, rng.uniform(0, 0.03), image.shape).astype(np.float32)
    return np.clip(image + grain, 0, 1).astype(np.float32)


class PictureBank:
    """Stills and sequences to draw samples from; procedural textures made on demand.

    ``procedural`` is the share of samples drawn from procedural textures (made afresh
    from the sample's own random stream, so they need no memory and never repeat).
    """

    def __init__(self, images: Sequence[np.ndarray] = (), sequences: Sequence[Sequence[np.ndarray]] = (),
                 procedural: float = 0.3, sequence_share: float = 0.5, texture_size: int = 384):
        self.images = list(images)
        self.sequences = [list(s) for s in sequences if len(s) >= 2]
        self.procedural = procedural if (self.images or self.sequences) else 1.0
        self.sequence_share = sequence_share if self.sequences else 0.0
        self.texture_size = texture_size

    def __repr__(self):
        return (f"PictureBank({len(self.images)} pictures, {len(self.sequences)} sequences, "
                f"procedural share {self.procedural:.2f})")

    def still(self, rng: np.random.Generator) -> np.ndarray:
        if not self.images or rng.random() < self.procedural:
            return procedural_texture(rng, self.texture_size)
        return self.images[int(rng.integers(len(self.images)))]

    def draw(self, rng: np.random.Generator):
        """('sequence', frames) or ('still', picture)."""
        if self.sequences and rng.random() < self.sequence_share:
            return "sequence", self.sequences[int(rng.integers(len(self.sequences)))]
        return "still", self.still(rng)
