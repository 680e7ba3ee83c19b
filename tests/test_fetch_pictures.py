"""tools/fetch_pictures.py: DEP-5 parsing, licence decisions, near-duplicates (no network, no apt)."""
from __future__ import annotations

import io
import tarfile

import cv2
import numpy as np
import pytest
from conftest import load_script


def _tool():
    return load_script("tools/fetch_pictures.py", "keyprop_fetch_pictures")


DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: some-wallpapers
Source: https://example.org/some-wallpapers

Files: *
Copyright: 2014 Some Team
License: GPL-2+

Files: nature/*.jpg
       nature/Special-?.png
Copyright: 2008, A Photographer <a@example.org>
License: CC-BY-SA-3.0

Files: nature/Dune.jpg
Copyright: 2007, Another One
License: CC0-1.0

Files: private/*
Copyright: 2020, A Studio
License: CC-BY-NC-4.0

Files: debian/*
Copyright: 2020, A Packager
License: GPL-2+

License: GPL-2+
 This program is free software; you can redistribute it
 .
 On Debian systems, see /usr/share/common-licenses/GPL-2.

License: CC-BY-SA-3.0
 Creative Commons Attribution-ShareAlike 3.0 Unported
"""


def test_dep5_parsing_and_last_matching_stanza_wins():
    tool = _tool()
    cr = tool.parse_copyright(DEP5)
    assert cr["dep5"]
    assert [s["license"] for s in cr["stanzas"]] == ["GPL-2+", "CC-BY-SA-3.0", "CC0-1.0",
                                                      "CC-BY-NC-4.0", "GPL-2+"]
    assert cr["stanzas"][1]["files"] == ["nature/*.jpg", "nature/Special-?.png"]
    assert set(cr["licenses"]) == {"GPL-2+", "CC-BY-SA-3.0"}
    assert "\n\n" in cr["licenses"]["GPL-2+"]  # " ." continuation = empty line

    def lic(path):
        return tool.find_stanza(cr["stanzas"], path)["license"]

    assert lic("nature/Garden.jpg") == "CC-BY-SA-3.0"
    assert lic("nature/Dune.jpg") == "CC0-1.0"           # later, more specific stanza
    assert lic("nature/Special-1.png") == "CC-BY-SA-3.0"
    assert lic("nature/Special-12.png") == "GPL-2+"      # ? is one character
    assert lic("nature/deeper/Leaf.jpg") == "CC-BY-SA-3.0"  # DEP-5 * also matches /
    assert lic("abstract/Flow.png") == "GPL-2+"
    assert lic("private/x.jpg") == "CC-BY-NC-4.0"


def test_install_paths_map_to_source_paths_or_match_by_suffix():
    tool = _tool()
    cr = tool.parse_copyright(DEP5)
    src_map = {"usr/share/backgrounds/some/": ""}
    lic, how = tool.license_for(cr, "usr/share/backgrounds/some/nature/Dune.jpg", src_map)
    assert lic == "CC0-1.0" and how.startswith("DEP-5 stanza")
    # without a mapping: trailing path components decide; a bare "dir/*" needs its folder
    lic, _ = tool.license_for(cr, "usr/share/backgrounds/nature/Dune.jpg", {})
    assert lic == "CC0-1.0"
    lic, _ = tool.license_for(cr, "usr/share/backgrounds/elsewhere/Garden.jpg", {})
    assert lic == "GPL-2+"  # "nature/*.jpg" and "private/*" must not match another folder
    assert tool.license_for(None, "usr/share/x.jpg", {}) == ("", "no copyright file")


def test_non_dep5_copyright_gives_the_package_licences():
    tool = _tool()
    text = ("This package was debianized by someone.\n\n - Stones.jpg:\n"
            "   Licensed under Creative Commons Attribution-ShareAlike 3.0 License.\n\n"
            "   This package is free software; you can redistribute it under the terms of\n"
            "   the GNU General Public License as published by the Free Software Foundation.\n")
    cr = tool.parse_copyright(text)
    assert not cr["dep5"] and cr["stanzas"] == []
    lic, how = tool.license_for(cr, "usr/share/backgrounds/Stones.jpg", {})
    assert lic == "CC-BY-SA-3.0, GPL" and how.startswith("package licence")
    assert tool.is_free_package_licence(lic, how)
    nc = tool.parse_copyright("Licensed under Creative Commons Attribution-NonCommercial 4.0.\n"
                              "Other parts: GNU General Public License.\n")
    assert not tool.is_free_package_licence(*tool.license_for(nc, "x.jpg", {}))


@pytest.mark.parametrize("lic", [
    "CC-BY-4.0", "CC-BY-SA-3.0", "CC0-1.0", "GPL-2+", "LGPL-2.1+", "GPL-3.0-or-later",
    "BSD-3-clause", "Expat", "MIT", "public-domain", "PD", "Apache-2.0", "Artistic-2.0",
    "Apache-2.0 AND BSD-3-Clause", "GPL-2+ or CC-BY-NC-4.0 or Artistic", "ISC", "Zlib",
])
def test_free_licences(lic):
    assert _tool().is_free_license(lic)


@pytest.mark.parametrize("lic", [
    "", "CC-BY-NC-4.0", "CC-BY-NC-SA-3.0", "CC-BY-ND-4.0", "proprietary", "same as upstream",
    "GPL-2+ and non-commercial", "Apache-2.0 AND Custom-Eula", "unknown", "All rights reserved",
])
def test_non_free_or_unknown_licences(lic):
    assert not _tool().is_free_license(lic)


def _smooth_picture(seed, h=300, w=400):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), 3)


def test_near_duplicates_same_picture_at_another_resolution():
    tool = _tool()
    a = _smooth_picture(0, 600, 800)
    sig = tool.signature(a)
    half = cv2.resize(a, (400, 300), interpolation=cv2.INTER_AREA)
    jpeg = cv2.imdecode(cv2.imencode(".jpg", half, [cv2.IMWRITE_JPEG_QUALITY, 70])[1], 1)
    assert tool.is_near_duplicate(sig, tool.signature(half))
    assert tool.is_near_duplicate(sig, tool.signature(jpeg))
    assert tool.is_near_duplicate(sig, tool.signature(np.clip(a * 0.8 + 20, 0, 255).astype(np.uint8)))
    assert not tool.is_near_duplicate(sig, tool.signature(_smooth_picture(1, 600, 800)))
    assert not tool.is_near_duplicate(sig, tool.signature(a[:, ::-1].copy()))   # mirrored
    assert not tool.is_near_duplicate(sig, tool.signature(a[:, :600].copy()))   # other aspect


def test_output_names_and_deb_versions(tmp_path):
    tool = _tool()
    assert tool.output_stem("usr/share/wallpapers/Path/contents/images/2560x1600.jpg") == "Path"
    assert tool.output_stem("usr/share/sddm/themes/maldives/background.jpg") == "maldives-background"
    assert tool.output_stem("usr/share/backgrounds/mate/nature/Dune.jpg") == "Dune"
    assert tool.deb_version(tmp_path / "gimp-data-extras_1%3a2.0.2-1.1_all.deb") == "1:2.0.2-1.1"


def test_ar_and_tar_fallback_extracts_a_deb(tmp_path, monkeypatch):
    tool = _tool()
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as tf:
        data = b"hello"
        info = tarfile.TarInfo("./usr/share/doc/pkg/copyright")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    members = [("debian-binary", b"2.0\n"), ("data.tar.xz", payload.getvalue())]
    blob = b"!<arch>\n"
    for name, body in members:
        hdr = "%-16s%-12s%-6s%-6s%-8s%-10d`\n" % (name, 0, 0, 0, 100644, len(body))
        blob += hdr.encode() + body + (b"\n" if len(body) % 2 else b"")
    deb = tmp_path / "pkg_1.0_all.deb"
    deb.write_bytes(blob)
    monkeypatch.setattr(tool.shutil, "which", lambda name: None)  # no dpkg-deb
    tool.extract_deb(deb, tmp_path / "root")
    assert (tmp_path / "root/usr/share/doc/pkg/copyright").read_bytes() == b"hello"
