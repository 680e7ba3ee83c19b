#!/usr/bin/env python3
"""Fetch freely licensed photographs from Debian packages as training pictures.

scikit-image bundles only 15 sample pictures.  This script downloads a curated
list of Debian packages that ship photographs (desktop wallpapers, login-screen
backgrounds, OpenCV's sample images, game terrain textures), extracts them
without root (``apt-get download`` + ``dpkg-deb -x``, or a pure-Python ``ar`` +
``tarfile`` fallback), and writes every photograph whose licence is free as an
8-bit JPEG/PNG with the long side at most ``--max-side`` pixels.

For every picture ``SOURCES.json`` in the output folder records the output
file, the Debian package and version, the path inside the package, and the
licence as found in ``usr/share/doc/<pkg>/copyright``: the matching stanza
when that file is machine-readable (DEP-5), otherwise the licences the
package's copyright file names.  Pictures whose licence is not clearly free
are skipped, as are pictures smaller than ``--min-side``, near-flat pictures,
pictures with real transparency, and near-duplicates (the same picture at
several resolutions: the largest source is kept once).

Reruns are idempotent: a package whose recorded version is still the
candidate version and whose outputs all exist is not downloaded again.

    python tools/fetch_pictures.py                  # -> data/pictures/
    python tools/fetch_pictures.py --out /tmp/pics --max-side 768
    python tools/fetch_pictures.py --packages mate-backgrounds,lxqt-themes

Exit status: 0 on success, 2 on failure (one line on stderr).
Only the standard library, numpy and opencv-python are used.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
from pathlib import Path

import numpy as np

try:
    import cv2
except ImportError:  # pragma: no cover - reported by main()
    cv2 = None

PICTURE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
SOURCES_NAME = "SOURCES.json"


# --------------------------------------------------------------------------
# Curated package list
# --------------------------------------------------------------------------

class PackageSpec:
    """Which pictures of a package to take, and how install paths map back to
    the source-tree paths that ``debian/copyright`` uses.

    include / exclude: DEP-5 style globs on the install path;
    src_map: install-path prefix -> source-tree prefix, for ``Files:`` matching;
    one_per_dir: keep only the largest picture of each folder;
    kind: "photo" or "texture"; note: copied into SOURCES.json."""

    def __init__(self, name, short="", include=("*",), exclude=(), src_map=None,
                 one_per_dir=False, kind="photo", note=""):
        self.name = name
        self.short = short
        self.include = list(include)
        self.exclude = list(exclude)
        self.src_map = dict(src_map or {})
        self.one_per_dir = one_per_dir
        self.kind = kind
        self.note = note


PACKAGES = [
    PackageSpec(
        "lomiri-wallpapers-16.04", short="lomiri",
        include=["usr/share/backgrounds/*.jpg"],
        # renders / abstract / colour-washed texture
        exclude=["*greentock_*", "*umang_*", "*analogpattern_*"],
        src_map={"usr/share/backgrounds/": "16.04/"}),
    PackageSpec(
        "lomiri-wallpapers-20.04", short="lomiri",
        include=["usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"],
        src_map={"usr/share/backgrounds/": "20.04/"}),
    PackageSpec(
        "mate-backgrounds", short="mate",
        include=["usr/share/backgrounds/mate/nature/*"],
        src_map={"usr/share/backgrounds/mate/": ""}),
    PackageSpec(
        "plasma-workspace-wallpapers", short="plasma",
        include=["usr/share/wallpapers/%s/contents/images/*" % d for d in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour",
            "EveningGlow", "FallenLeaf", "Grey", "Kite", "OneStandsOut",
            "Path", "summer_1am")],
        src_map={"usr/share/wallpapers/": ""}, one_per_dir=True),
    PackageSpec(
        "lxqt-themes", short="lxqt",
        include=["usr/share/lxqt/wallpapers/%s" % f for f in (
            "flowers.png", "fog.jpg", "after-the-rain.jpg",
            "Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "appleflower.png",
            "cloud.png", "drop.png", "this-is-not-windows.jpg", "butterfly.png")],
        src_map={"usr/share/lxqt/wallpapers/": "wallpapers/"}),
    PackageSpec(
        "sddm-theme-maldives", short="sddm",
        include=["usr/share/sddm/themes/maldives/background.jpg"],
        src_map={"usr/share/sddm/themes/maldives/": "data/themes/maldives/"}),
    PackageSpec(
        "opencv-doc", short="opencv",
        include=["usr/share/doc/opencv-doc/examples/data/%s" % f for f in (
            "fruits.jpg", "baboon.jpg", "home.jpg", "butterfly.jpg",
            "leuvenA.jpg", "leuvenB.jpg", "squirrel_cls.jpg", "sudoku.png",
            "aloeL.jpg", "board.jpg", "orange.jpg", "chicky_512.png",
            "rubberwhale1.png", "ela_original.jpg", "graf1.png", "graf3.png",
            "aero1.jpg", "aero3.jpg", "apple.jpg", "building.jpg")]
        + ["usr/share/doc/opencv-doc/examples/text/scenetext0?.jpg",
           "usr/share/doc/opencv-doc/examples/alphamat/input_images/plant.jpg"],
        src_map={"usr/share/doc/opencv-doc/examples/": "samples/"},
        note="OpenCV sample image; debian/copyright gives the package licence, "
             "not a per-image provenance"),
    PackageSpec(
        "extremetuxracer-data", short="etr", kind="texture",
        include=["usr/share/games/etr/terrains/%s.png" % f for f in (
            "dirt01", "floor01", "floor02", "grass01", "grass02", "grass03",
            "mud01", "pave01", "pave02", "pebbles01", "pebbles04", "pebbles05",
            "rock", "rock0?", "sand01")],
        src_map={"usr/share/games/etr/": "data/"}),
]


class FetchError(Exception):
    """A failure reported as one line on stderr (exit status 2)."""


# --------------------------------------------------------------------------
# DEP-5 copyright parsing and licence decisions (pure Python)
# --------------------------------------------------------------------------

def _paragraphs(text: str):
    para: list[str] = []
    for line in text.splitlines():
        if line.strip() == "":
            if para:
                yield para
                para = []
        else:
            para.append(line.rstrip())
    if para:
        yield para


def _fields(lines: list[str]) -> dict:
    """One deb822 paragraph -> {lower-case key: value}; continuation lines are
    joined with newlines (a lone ``.`` stands for an empty line)."""
    out: dict[str, str] = {}
    key = None
    for line in lines:
        if line[:1] in (" ", "\t"):
            if key is not None:
                cont = line.strip()
                out[key] += "\n" + ("" if cont == "." else cont)
            continue
        if line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z][A-Za-z0-9-]*)\s*:(.*)$", line)
        if m is None:
            key = None
            continue
        key = m.group(1).lower()
        out[key] = m.group(2).strip()
    return out


def parse_copyright(text: str) -> dict:
    """Parse a Debian copyright file.

    Returns ``{"dep5": bool, "stanzas": [{"files": [...], "license": short,
    "license_text": str, "copyright": str}], "licenses": {short: text},
    "text": text}``.  ``stanzas`` is empty when the file is not DEP-5.
    """
    paras = [_fields(p) for p in _paragraphs(text)]
    dep5 = bool(paras) and "format" in paras[0] and (
        "copyright-format" in paras[0]["format"] or "dep5" in paras[0]["format"].lower())
    stanzas, licenses = [], {}
    if dep5:
        for f in paras[1:]:
            lic = f.get("license", "")
            short, _, body = lic.partition("\n")
            short = short.strip()
            if "files" in f:
                stanzas.append({
                    "files": f["files"].split(),
                    "license": short,
                    "license_text": body.strip(),
                    "copyright": " ".join(f.get("copyright", "").split()),
                })
            elif short:
                licenses[short] = body.strip()
    return {"dep5": dep5, "stanzas": stanzas, "licenses": licenses, "text": text}


def _glob_regex(pattern: str):
    """DEP-5 ``Files:`` glob: only ``*`` (anything, including ``/``) and
    ``?`` (one character) are special; ``\\`` escapes."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else "." if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def glob_match(pattern: str, path: str) -> bool:
    if pattern.startswith("./"):
        pattern = pattern[2:]
    return _glob_regex(pattern.lstrip("/")).match(path.lstrip("/")) is not None


def find_stanza(stanzas: list, path: str):
    """The DEP-5 stanza for a source-tree ``path``: the last one whose
    ``Files:`` patterns match (DEP-5 rule), or None."""
    found = None
    for st in stanzas:
        if any(glob_match(p, path) for p in st["files"]):
            found = st
    return found


def find_stanza_by_suffix(stanzas: list, install_path: str):
    """Fallback when the install -> source mapping is unknown: score each
    stanza by how many trailing path components its pattern matches (a bare
    ``*`` last component must be backed by a matching folder); highest score
    wins, ties go to the later stanza; ``Files: *`` is the last resort."""
    parts = install_path.strip("/").split("/")
    best, best_score, generic = None, 0, None
    for st in stanzas:
        for pat in st["files"]:
            if pat == "*":
                generic = st
                continue
            pparts = pat.strip("/").split("/")
            score = 0
            for k in range(1, min(len(pparts), len(parts)) + 1):
                if glob_match("/".join(pparts[-k:]), "/".join(parts[-k:])):
                    score = k
                else:
                    break
            if score < 2 and len(pparts) > 1 and ("*" in pparts[-1] or "?" in pparts[-1]):
                score = 0  # "dir/*.jpg" must match the folder too, not just any file
            if score and score >= best_score:
                best, best_score = st, score
    return best if best is not None else generic


_FREEFORM = [
    (r"creative\s+commons\s+attribution[-\s]+non-?commercial|\bcc[-\s]by[-\s]nc", "CC-BY-NC"),
    (r"creative\s+commons\s+attribution[-\s]+no-?deriv|\bcc[-\s]by[-\s]nd", "CC-BY-ND"),
    (r"creative\s+commons\s+attribution[-\s]+share[-\s]?alike|\bcc[-\s]by[-\s]sa", "CC-BY-SA"),
    (r"creative\s+commons\s+attribution(?![-\s]+(share|non|no))|\bcc[-\s]by\b(?![-\s](sa|nc|nd))", "CC-BY"),
    (r"\bcc0\b|creative\s+commons\s+zero", "CC0"),
    (r"gnu\s+(lesser|library)\s+general\s+public\s+licen[cs]e|\blgpl", "LGPL"),
    (r"gnu\s+affero\s+general\s+public|\bagpl", "AGPL"),
    (r"gnu\s+general\s+public\s+licen[cs]e|\bgpl\b", "GPL"),
    (r"apache\s+licen[cs]e", "Apache"),
    (r"artistic\s+licen[cs]e", "Artistic"),
    (r"\bbsd\b", "BSD"),
    (r"permission\s+is\s+hereby\s+granted,\s+free\s+of\s+charge|\bexpat\b|\bmit\s+licen", "MIT"),
    (r"public\s+domain", "public-domain"),
]


def licenses_in_text(text: str) -> list[str]:
    """Licence families a free-form (non-DEP-5) copyright file names, in order
    of first mention, each at most once (``CC-BY-SA 3.0`` style versions kept)."""
    hits = []
    low = text.lower()
    for rx, name in _FREEFORM:
        for m in re.finditer(rx, low):
            tail = low[m.end():m.end() + 40]
            ver = re.match(r"[^0-9\n]{0,25}?(\d\.\d)", tail) if name.startswith("CC-") else None
            label = "%s-%s" % (name, ver.group(1)) if ver else name
            hits.append((m.start(), label))
    seen, out = set(), []
    for _, label in sorted(hits):
        if label not in seen:
            seen.add(label)
            out.append(label)
    return out


_NONFREE_RX = re.compile(
    r"(^|[-\s_(/])(nc|nd)([-\s_.)/]|$)|non-?commercial|no-?deriv|proprietary|"
    r"all\s+rights\s+reserved|not\s+free", re.I)
_FREE_RX = re.compile(
    r"(cc-?by(-?sa)?|cc0|l?gpl|agpl|gfdl-niv|bsd|mit|expat|x11|apache|artistic|isc|"
    r"zlib|public[-\s]?domain|pd|unlicense|ofl|sil-ofl|wtfpl|"
    r"creative\s+commons\s+attribution(-?share-?alike)?)(?![a-z])", re.I)


def is_free_license(lic: str) -> bool:
    """Is a licence expression clearly free (CC-BY, CC-BY-SA, CC0, GPL, LGPL,
    BSD, MIT/Expat, public domain, Apache, Artistic, ISC, zlib, OFL)?
    ``A or B``: one free alternative suffices; ``A and B`` / ``A, B``: all
    must be free.  Anything unknown, empty, NC or ND is not free."""
    s = (lic or "").strip()
    for alt in re.split(r"\s+or\s+|\s*\|\s*", s, flags=re.I):
        atoms = [a.strip(" ()") for a in re.split(r"\s+and\s+|\s*[,;&]\s*", alt, flags=re.I)]
        atoms = [a for a in atoms if a]
        if atoms and all(_FREE_RX.match(a) and not _NONFREE_RX.search(a) for a in atoms):
            return True
    return False


def license_for(cr: dict | None, install_path: str, src_map: dict) -> tuple[str, str]:
    """(licence, how-found) for a picture at ``install_path`` (relative to
    the package root) given the parsed copyright file ``cr``."""
    if cr is None:
        return "", "no copyright file"
    if cr["dep5"]:
        st = None
        for inst, src in src_map.items():
            if install_path.startswith(inst):
                st = find_stanza(cr["stanzas"], src + install_path[len(inst):])
                how = "DEP-5 stanza (Files: %s)"
                break
        else:
            st = find_stanza_by_suffix(cr["stanzas"], install_path)
            how = "DEP-5 stanza by path suffix (Files: %s)"
        if st is None:
            return "", "DEP-5 file without a matching stanza"
        lic = st["license"]
        if not lic:  # licence text without a short name
            lic = " and ".join(licenses_in_text(st["license_text"]))
        return lic, how % " ".join(st["files"])[:120]
    found = licenses_in_text(cr["text"])
    return ", ".join(found), "package licence (copyright file is not DEP-5)"


def is_free_package_licence(lic: str, how: str) -> bool:
    """For the non-DEP-5 case every licence named must be free."""
    if how.startswith("package licence"):
        parts = [p.strip() for p in lic.split(",") if p.strip()]
        return bool(parts) and all(is_free_license(p) for p in parts)
    return is_free_license(lic)


# --------------------------------------------------------------------------
# Near-duplicate detection
# --------------------------------------------------------------------------

SIG_SIZE = 32


def signature(img: np.ndarray) -> tuple[float, np.ndarray]:
    """(aspect ratio, unit-norm zero-mean 32x32 grey thumbnail)."""
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    h, w = img.shape[:2]
    small = img
    if max(h, w) > 256:  # two-step area resize: same result at every source size
        s = 256.0 / max(h, w)
        small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                           interpolation=cv2.INTER_AREA)
    t = cv2.resize(small, (SIG_SIZE, SIG_SIZE), interpolation=cv2.INTER_AREA)
    t = t.astype(np.float64).ravel()
    t -= t.mean()
    n = float(np.linalg.norm(t))
    return w / float(h), (t / n if n > 1e-9 else t)


def is_near_duplicate(a, b, aspect_tol: float = 0.04, min_corr: float = 0.96) -> bool:
    (ar_a, t_a), (ar_b, t_b) = a, b
    if abs(math.log(ar_a / ar_b)) > aspect_tol:
        return False
    return float(np.dot(t_a, t_b)) >= min_corr


# --------------------------------------------------------------------------
# Debian package handling
# --------------------------------------------------------------------------

def run(cmd, **kw):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise FetchError("%s not found (needs a Debian/Ubuntu system)" % cmd[0]) from None
    except subprocess.TimeoutExpired:
        raise FetchError("%s timed out" % " ".join(cmd)) from None


def _last_error(proc) -> str:
    lines = [l.strip() for l in (proc.stderr or proc.stdout or "").splitlines() if l.strip()]
    errs = [l for l in lines if l.startswith("E:")] or lines
    return errs[-1] if errs else "exit status %d" % proc.returncode


def candidate_version(pkg: str) -> str | None:
    proc = run(["apt-cache", "show", "--no-all-versions", pkg], timeout=120)
    if proc.returncode != 0:
        return None
    m = re.search(r"^Version:\s*(\S+)", proc.stdout, re.M)
    return m.group(1) if m else None


class Downloader:
    def __init__(self):
        self.updated = False

    def _can_update(self) -> bool:
        return hasattr(os, "geteuid") and os.geteuid() == 0 and not self.updated

    def _update(self) -> None:
        self.updated = True
        upd = run(["apt-get", "update", "-q"], timeout=1800)
        if upd.returncode != 0:
            raise FetchError("apt-get update failed: %s" % _last_error(upd))

    def version(self, pkg: str) -> str | None:
        """Candidate version; refreshes the package lists once (root only)
        when the package is unknown."""
        ver = candidate_version(pkg)
        if ver is None and self._can_update():
            self._update()
            ver = candidate_version(pkg)
        return ver

    def download(self, pkg: str, dest: Path) -> Path:
        for attempt in range(2):
            proc = run(["apt-get", "download", "-q", pkg], cwd=dest, timeout=1800)
            debs = sorted(dest.glob("%s_*.deb" % pkg))
            if proc.returncode == 0 and debs:
                return debs[-1]
            err = _last_error(proc)
            if attempt == 0 and self._can_update():
                self._update()
                continue
            raise FetchError("apt-get download %s failed: %s" % (pkg, err))
        raise AssertionError("unreachable")


def deb_version(deb: Path) -> str:
    """Version from a ``name_version_arch.deb`` file name (apt URL-quotes ':')."""
    parts = deb.name[:-4].split("_")
    return urllib.parse.unquote(parts[1]) if len(parts) >= 3 else "?"


def _ar_members(data: bytes):
    if not data.startswith(b"!<arch>\n"):
        raise FetchError("not an ar archive")
    pos = 8
    while pos + 60 <= len(data):
        hdr = data[pos:pos + 60]
        name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(hdr[48:58].decode("ascii").strip())
        yield name, data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)


def extract_deb(deb: Path, dest: Path) -> None:
    """``dpkg-deb -x``; falls back to a pure-Python ar reader + tarfile."""
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb"):
        proc = run(["dpkg-deb", "-x", str(deb), str(dest)], timeout=1800)
        if proc.returncode == 0:
            return
    for name, blob in _ar_members(deb.read_bytes()):
        if not name.startswith("data.tar"):
            continue
        if name.endswith(".zst"):
            if not shutil.which("zstd"):
                raise FetchError("%s: data.tar.zst needs dpkg-deb or zstd" % deb.name)
            blob = subprocess.run(["zstd", "-dc"], input=blob, capture_output=True,
                                  check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
            members = [m for m in tf.getmembers()
                       if (m.isfile() or m.isdir() or m.issym())
                       and not m.name.startswith("/") and ".." not in Path(m.name).parts]
            tf.extractall(dest, members=members)
        return
    raise FetchError("%s: no data.tar member" % deb.name)


# --------------------------------------------------------------------------
# Picture selection and writing
# --------------------------------------------------------------------------

def read_copyright(root: Path, pkg: str):
    p = root / "usr/share/doc" / pkg / "copyright"
    if not p.is_file():
        return None
    return parse_copyright(p.read_text(encoding="utf-8", errors="replace"))


def list_pictures(root: Path, spec: PackageSpec) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            full = Path(dirpath) / f
            if full.is_symlink() or not f.lower().endswith(PICTURE_EXTS):
                continue
            rel = full.relative_to(root).as_posix()
            if any(glob_match(p, rel) for p in spec.include) and not any(
                    glob_match(p, rel) for p in spec.exclude):
                out.append(rel)
    return sorted(out)


def load_picture(path: Path):
    """8-bit BGR picture, or (None, reason)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        return None, "unreadable"
    if raw.ndim == 3 and raw.shape[2] == 4:
        alpha = raw[..., 3]
        if alpha.dtype != np.uint8:
            alpha = (alpha / 257).astype(np.uint8)
        if np.mean(alpha < 250) > 0.01:
            return None, "transparent"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # 8-bit BGR, EXIF-rotated
    if img is None:
        return None, "unreadable"
    return img, ""


def resize_long_side(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / float(max(h, w))
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


def output_stem(rel: str) -> str:
    p = Path(rel)
    stem = p.stem
    if re.fullmatch(r"\d+x\d+|screenshot|background|image", stem, re.I):
        for parent in reversed(p.parent.parts):
            if parent not in ("images", "images_dark", "contents"):
                stem = parent if stem.lower() != "background" else parent + "-background"
                break
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "picture"


def write_picture(img: np.ndarray, path: Path) -> None:
    if path.suffix == ".jpg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    else:
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise FetchError("could not encode %s" % path.name)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def load_sources(out: Path) -> dict:
    p = out / SOURCES_NAME
    if not p.exists():
        return {"packages": {}, "pictures": []}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        assert isinstance(data.get("pictures"), list) and isinstance(data.get("packages"), dict)
        return data
    except Exception:
        raise FetchError("%s is not a valid %s (delete it to start over)" % (p, SOURCES_NAME)) from None


def save_sources(out: Path, data: dict) -> None:
    data["pictures"].sort(key=lambda r: r["file"])
    data["total_bytes"] = sum(r.get("bytes", 0) for r in data["pictures"])
    tmp = out / (SOURCES_NAME + ".part")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / SOURCES_NAME)


def process_package(spec: PackageSpec, root: Path, version: str, out: Path, args,
                    kept_sigs: list, taken_names: set) -> tuple[list, dict]:
    cr = read_copyright(root, spec.name)
    skipped: dict[str, int] = {}

    def skip(reason):
        skipped[reason] = skipped.get(reason, 0) + 1

    cands = []
    for rel in list_pictures(root, spec):
        lic, how = license_for(cr, rel, spec.src_map)
        if not is_free_package_licence(lic, how):
            skip("non-free or unknown licence")
            continue
        img, why = load_picture(root / rel)
        if img is None:
            skip(why)
            continue
        h, w = img.shape[:2]
        if min(h, w) < args.min_side:
            skip("small")
            continue
        if float(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).std()) < 4.0:
            skip("flat")
            continue
        cands.append({"rel": rel, "lic": lic, "how": how, "w": w, "h": h, "img": img})

    if spec.one_per_dir:
        best: dict[str, dict] = {}
        for c in cands:
            d = str(Path(c["rel"]).parent)
            if d not in best or c["w"] * c["h"] > best[d]["w"] * best[d]["h"]:
                best[d] = c
        skip_n = len(cands) - len(best)
        if skip_n:
            skipped["other resolution"] = skip_n
        cands = list(best.values())

    records = []
    for c in sorted(cands, key=lambda c: -c["w"] * c["h"]):  # largest first
        img = resize_long_side(c.pop("img"), args.max_side)
        sig = signature(img)
        if any(is_near_duplicate(sig, s) for s in kept_sigs):
            skip("near-duplicate")
            continue
        ext = ".jpg" if Path(c["rel"]).suffix.lower() in (".jpg", ".jpeg") else ".png"
        base = "%s_%s" % (spec.short or spec.name, output_stem(c["rel"]))
        name, i = base + ext, 2
        while name in taken_names:
            name, i = "%s-%d%s" % (base, i, ext), i + 1
        taken_names.add(name)
        path = out / name
        write_picture(img, path)
        kept_sigs.append(sig)
        records.append({
            "file": name, "package": spec.name, "version": version,
            "path": "/" + c["rel"], "license": c["lic"], "license_source": c["how"],
            "kind": spec.kind, "source_size": [c["w"], c["h"]],
            "size": [int(img.shape[1]), int(img.shape[0])],
            "bytes": path.stat().st_size, **({"note": spec.note} if spec.note else {}),
        })
    return records, skipped


def existing_signatures(out: Path, records: list) -> list:
    sigs = []
    for r in records:
        img = cv2.imread(str(out / r["file"]), cv2.IMREAD_COLOR)
        if img is not None:
            sigs.append(signature(img))
    return sigs


def print_table(records: list, verbose: bool = False) -> None:
    if not records:
        return
    byp: dict[str, list] = {}
    for r in records:
        byp.setdefault(r["package"], []).append(r)
    p = max(len(k) for k in byp)
    print("\n%-*s  %-14s  %8s  %7s  %s" % (p, "package", "version", "pictures", "MB", "licences"))
    for pkg, rs in sorted(byp.items()):
        lics = sorted({r["license"] for r in rs})
        print("%-*s  %-14s  %8d  %7.1f  %s" % (p, pkg, rs[0]["version"], len(rs),
                                           sum(r.get("bytes", 0) for r in rs) / 1e6,
                                           "; ".join(lics)))
    if verbose:
        _print_pictures(records)
    total = sum(r.get("bytes", 0) for r in records)
    print("%d pictures, %.1f MB in all" % (len(records), total / 1e6))


def _print_pictures(records: list) -> None:
    w = max(len(r["file"]) for r in records)
    p = max(len(r["package"]) for r in records)
    print("\n%-*s  %-*s  %-9s  %s" % (w, "file", p, "package", "size", "licence"))
    for r in sorted(records, key=lambda r: (r["package"], r["file"])):
        print("%-*s  %-*s  %-9s  %s" % (w, r["file"], p, r["package"],
                                        "%dx%d" % tuple(r["size"]), r["license"]))
    print()


def fetch(args) -> int:
    if cv2 is None:
        raise FetchError("opencv-python (cv2) is not installed")
    for tool in ("apt-get", "apt-cache"):
        if not shutil.which(tool):
            raise FetchError("%s not found (needs a Debian/Ubuntu system)" % tool)
    specs = {s.name: s for s in PACKAGES}
    if args.packages:
        names = [n for n in re.split(r"[,\s]+", args.packages) if n]
        selected = [specs.get(n) or PackageSpec(n, short=n) for n in names]
    else:
        selected = list(PACKAGES)

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError("cannot create output folder %s: %s" % (out, e.strerror or e)) from None
    data = load_sources(out)
    downloader = Downloader()
    failures = []

    with tempfile.TemporaryDirectory(prefix="fetch_pictures_") as tmpdir:
        tmp = Path(tmpdir)
        for spec in selected:
            ver = downloader.version(spec.name)
            if ver is None:
                print("%-28s FAILED: not in the apt package lists" % spec.name, flush=True)
                failures.append(spec.name)
                continue
            mine = [r for r in data["pictures"] if r["package"] == spec.name]
            rec = data["packages"].get(spec.name)
            if (not args.force and rec and rec.get("version") == ver
                    and all((out / r["file"]).exists() for r in mine)):
                print("%-28s %s: up to date, %d pictures" % (spec.name, ver, len(mine)),
                      flush=True)
                continue
            try:
                pdir = tmp / spec.name
                pdir.mkdir()
                deb = downloader.download(spec.name, pdir)
                version = deb_version(deb)
                root = pdir / "root"
                extract_deb(deb, root)
                deb.unlink()
                others = [r for r in data["pictures"] if r["package"] != spec.name]
                sigs = existing_signatures(out, others)
                names = {r["file"] for r in others}
                records, skipped = process_package(spec, root, version, out, args, sigs, names)
            except FetchError as e:
                print("%-28s FAILED: %s" % (spec.name, e), flush=True)
                failures.append(spec.name)
                continue
            finally:
                shutil.rmtree(tmp / spec.name, ignore_errors=True)
            new_names = {r["file"] for r in records}
            for r in mine:  # outputs of an older version that are gone now
                if r["file"] not in new_names:
                    (out / r["file"]).unlink(missing_ok=True)
            data["pictures"] = [r for r in data["pictures"] if r["package"] != spec.name] + records
            data["packages"][spec.name] = {"version": version, "pictures": len(records)}
            save_sources(out, data)
            sk = ", ".join("%d %s" % (n, k) for k, n in sorted(skipped.items()))
            print("%-28s %s: %d pictures%s" % (spec.name, version, len(records),
                                              " (skipped %s)" % sk if sk else ""), flush=True)

    save_sources(out, data)
    print_table(data["pictures"], args.verbose)
    if failures:
        raise FetchError("%d package(s) failed: %s" % (len(failures), ", ".join(failures)))
    if not data["pictures"]:
        raise FetchError("no pictures were written")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/pictures", help="output folder (default: %(default)s)")
    ap.add_argument("--max-side", type=int, default=1024,
                    help="resize so the long side is at most this (default: %(default)s)")
    ap.add_argument("--min-side", type=int, default=256,
                    help="skip pictures whose short side is below this (default: %(default)s)")
    ap.add_argument("--packages", default="",
                    help="comma-separated packages instead of the curated list")
    ap.add_argument("--force", action="store_true", help="reprocess packages that are up to date")
    ap.add_argument("-v", "--verbose", action="store_true", help="print one line per picture too")
    args = ap.parse_args(argv)
    try:
        if args.max_side < 16 or args.min_side < 1:
            raise FetchError("--max-side must be >= 16 and --min-side >= 1")
        return fetch(args)
    except FetchError as e:
        print("fetch_pictures: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fetch_pictures: error: interrupted", file=sys.stderr)
        return 2
    except Exception as e:  # no traceback, one line
        print("fetch_pictures: error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
