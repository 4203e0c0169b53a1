"""Build a real, offline emoji image data set from Debian packages.

Sources (all installable without network access to model hubs):

* ``unicode-data``: ``emoji-test.txt`` gives each fully-qualified emoji's official
  name (the caption), its ``# group:`` heading and, inside the name, its skin tone.
* ``fonts-noto-color-emoji``: colour bitmaps, rendered with Pillow (style ``noto``).
* ``fonts-symbola``: black line art for single code points (style ``symbola``).
* ``ruby-gemojione``: EmojiOne 2.x PNGs (style ``emojione``); fetched with
  ``apt-get download`` and unpacked with ``dpkg-deb -x`` so Ruby is never installed.

The output is cgan's custom format (Hugging Face "imagefolder"): ``OUT/images/*.png``
plus ``OUT/metadata.jsonl`` with ``file_name``, ``text``, ``style``, ``skin_tone``
and ``group`` per line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image, ImageDraw, ImageFont, features

from cgan.core.errors import CganError

STYLES: tuple[str, ...] = ("noto", "emojione", "symbola")
SKIN_TONES: tuple[str, ...] = ("light", "medium-light", "medium", "medium-dark", "dark")
# Module-level so tests (and unusual installs) can point the search elsewhere.
SHARE_DIRS: list[Path] = [Path("/usr/share"), Path("/usr/local/share")]
DEB_SEARCH_DIRS: list[Path] = [Path("."), Path("/tmp")]
NOTO_SIZE = 109  # CBDT bitmap font: FreeType only accepts its one strike size
SYMBOLA_SIZE = 128  # vector font: render large, then downscale like the others
_LINE = re.compile(r"^([0-9A-Fa-f ]+?)\s*;\s*([\w-]+)\s*#\s*\S+\s+(?:E\d+\.\d+\s+)?(.+?)\s*$")


class MissingPackageError(CganError, RuntimeError):
    """A Debian package providing an emoji source is not installed / downloaded."""


@dataclass
class EmojiSources:
    """Paths of the source files; ``None`` for a style that was not requested."""

    emoji_test: Path
    noto_font: Path | None = None
    symbola_font: Path | None = None
    gemojione_png_dir: Path | None = None
    tmp_dir: Path | None = None  # unpacked .deb: the caller removes it (prepare_emoji does)


@dataclass(frozen=True)
class EmojiEntry:
    codepoints: tuple[int, ...]
    name: str
    group: str

    @property
    def text(self) -> str:
        return "".join(map(chr, self.codepoints))

    @property
    def key(self) -> str:
        """File-name stem, e.g. ``1f469-1f3fe-200d-1f4bb``."""
        return "-".join(f"{cp:x}" for cp in self.codepoints)


def parse_skin_tone(name: str) -> str:
    """Skin tone from an emoji name (``"waving hand: medium-dark skin tone"``).

    Multi-person emoji list one tone per person; the first one is used.
    """
    if ":" not in name:
        return "none"
    for part in name.split(":", 1)[1].split(","):
        tone = part.strip().removesuffix(" skin tone")
        if tone != part.strip() and tone in SKIN_TONES:
            return tone
    return "none"


def parse_emoji_test(path: str | Path) -> list[EmojiEntry]:
    """Fully-qualified entries of ``emoji-test.txt`` in file order."""
    entries: list[EmojiEntry] = []
    group = ""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        m = _LINE.match(line)
        if m and m.group(2) == "fully-qualified":
            cps = tuple(int(h, 16) for h in m.group(1).split())
            entries.append(EmojiEntry(cps, m.group(3), group))
    return entries


def _glob_first(pattern: str) -> Path | None:
    for root in SHARE_DIRS:
        hits = sorted(root.glob(pattern)) if root.is_dir() else []
        if hits:
            return hits[0]
    return None


def _png_dir_in(root: Path) -> Path | None:
    hits = sorted(root.glob("**/gemojione-*/assets/png"))
    return hits[-1] if hits else None  # newest version if several are unpacked


def _unpack_deb(deb: Path) -> tuple[Path, Path]:
    """Unpack a .deb into a fresh temp dir; returns (tmp_dir, png_dir)."""
    if shutil.which("dpkg-deb") is None:
        raise MissingPackageError(f"dpkg-deb is needed to unpack {deb}: apt-get install -y dpkg")
    tmp = Path(tempfile.mkdtemp(prefix="cgan-gemojione-"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True, capture_output=True)
    png_dir = _png_dir_in(tmp)
    if png_dir is None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MissingPackageError(f"{deb} holds no gemojione-*/assets/png folder; "
                                  "re-download it: cd /tmp && apt-get download ruby-gemojione")
    return tmp, png_dir


def _installed_gemojione() -> Path | None:
    """PNG folder of an installed ruby-gemojione package (via ``dpkg -L``), if any."""
    if shutil.which("dpkg") is None:
        return None
    res = subprocess.run(["dpkg", "-L", "ruby-gemojione"], capture_output=True, text=True)
    for line in res.stdout.splitlines() if res.returncode == 0 else []:
        if line.rstrip("/").endswith("/assets/png") and Path(line).is_dir():
            return Path(line)
    return None


def _find_gemojione_deb(explicit: str | None) -> Path | None:
    if explicit:
        if not Path(explicit).is_file():
            raise MissingPackageError(f"gemojione .deb not found: {explicit}; "
                                      "get it with: cd /tmp && apt-get download ruby-gemojione")
        return Path(explicit)
    env = os.environ.get("CGAN_GEMOJIONE_DEB")
    if env and Path(env).is_file():
        return Path(env)
    for d in DEB_SEARCH_DIRS:
        hits = sorted(d.glob("ruby-gemojione_*.deb")) if d.is_dir() else []
        if hits:
            return hits[-1]
    return None


def find_sources(gemojione_deb: str | None = None,
                 styles: Sequence[str] = STYLES) -> EmojiSources:
    """Locate the source files for ``styles``; raise one error listing everything missing."""
    unknown = set(styles) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown emoji styles {sorted(unknown)}; choose from {STYLES}")
    missing: list[tuple[str, str]] = []  # (apt package, what was not found)
    emoji_test = _glob_first("unicode/**/emoji-test.txt")
    if emoji_test is None:
        missing.append(("unicode-data", "emoji-test.txt under /usr/share/unicode"))
    src = EmojiSources(emoji_test=emoji_test or Path())
    if "noto" in styles:
        src.noto_font = _glob_first("fonts/**/NotoColorEmoji.ttf")
        if src.noto_font is None:
            missing.append(("fonts-noto-color-emoji", "NotoColorEmoji.ttf under /usr/share/fonts"))
    if "symbola" in styles:
        src.symbola_font = _glob_first("fonts/**/Symbola*.ttf")
        if src.symbola_font is None:
            missing.append(("fonts-symbola", "Symbola*.ttf under /usr/share/fonts"))
    gem_hint = ""
    if "emojione" in styles:
        # Order: explicit .deb, installed package, $CGAN_GEMOJIONE_DEB, ./ or /tmp .deb.
        deb = Path(gemojione_deb) if gemojione_deb else None
        if deb is None:
            src.gemojione_png_dir = _installed_gemojione()
        if src.gemojione_png_dir is None:
            deb = _find_gemojione_deb(gemojione_deb)
            if deb is not None and not missing:  # don't unpack if we fail anyway
                src.tmp_dir, src.gemojione_png_dir = _unpack_deb(deb)
            elif deb is None:
                gem_hint = ("\nruby-gemojione: no installed package, no $CGAN_GEMOJIONE_DEB and no "
                            "ruby-gemojione_*.deb in ./ or /tmp; fetch it (without installing "
                            "Ruby) with: cd /tmp && apt-get download ruby-gemojione")
    if missing or gem_hint:
        lines = [f"{pkg}: not found: {what}" for pkg, what in missing]
        cmd = f"\ninstall with: apt-get install -y {' '.join(p for p, _ in missing)}" if missing else ""
        raise MissingPackageError("emoji data sources missing:\n" + "\n".join(lines) + cmd + gem_hint)
    return src


def _render(font: ImageFont.FreeTypeFont, text: str, color: bool) -> Image.Image:
    """Draw ``text`` on a transparent canvas big enough for overhanging glyphs."""
    left, top, right, bottom = font.getbbox(text)
    pad = 24
    canvas = Image.new("RGBA", (right - left + 2 * pad, max(bottom - top, 1) + 2 * pad))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font,
                                fill=(0, 0, 0, 255), embedded_color=color)
    return canvas


def _fit(rgba: Image.Image, size: int) -> Image.Image | None:
    """Crop to visible pixels, put on white, scale into ``size`` with a margin (aspect kept)."""
    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        return None  # nothing drawn: the font has no glyph
    crop = rgba.crop(bbox)
    # Composite before resizing so transparent pixels' (arbitrary) colour can't bleed in.
    flat = Image.alpha_composite(Image.new("RGBA", crop.size, "white"), crop).convert("RGB")
    inner = size - 2 * max(1, round(size / 16))
    scale = min(inner / flat.width, inner / flat.height)
    w, h = max(1, round(flat.width * scale)), max(1, round(flat.height * scale))
    out = Image.new("RGB", (size, size), "white")
    out.paste(flat.resize((w, h), Image.Resampling.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return out


def _strip_fe0f(cps: Sequence[int]) -> tuple[int, ...]:
    return tuple(cp for cp in cps if cp != 0xFE0F)


def _match_key(cps: Sequence[int]) -> tuple[int, ...]:
    """gemojione names drop FE0F, and ZWJ too (``1F468-2764-1F468`` = couple with heart)."""
    return tuple(cp for cp in cps if cp not in (0xFE0F, 0x200D))


def _symbola_cmap(path: Path) -> set[int] | None:
    try:  # optional: exact answer from the font's cmap
        from fontTools.ttLib import TTFont
    except ImportError:
        return None
    return set(TTFont(str(path), lazy=True).getBestCmap())


def _images(entries: Sequence[EmojiEntry], style: str, src: EmojiSources,
            size: int) -> Iterator[tuple[EmojiEntry, Image.Image]]:
    """Yield (entry, image) for every entry that ``style`` can draw."""
    if style == "noto":
        assert src.noto_font is not None  # find_sources(styles=...) guarantees these
        if not features.check("raqm"):
            raise RuntimeError("Pillow lacks the raqm layout engine (needed to shape emoji "
                               "sequences); install an official Pillow wheel: pip install -U pillow")
        font = ImageFont.truetype(str(src.noto_font), NOTO_SIZE,
                                  layout_engine=ImageFont.Layout.RAQM)
        advance = font.getlength("\U0001F600")
        for e in entries:
            # An unsupported sequence shapes into several glyphs, i.e. a wider string.
            if font.getlength(e.text) <= 1.5 * advance:
                img = _fit(_render(font, e.text, True), size)
                if img is not None:
                    yield e, img
    elif style == "symbola":
        assert src.symbola_font is not None
        font = ImageFont.truetype(str(src.symbola_font), SYMBOLA_SIZE)
        cmap = _symbola_cmap(src.symbola_font)
        # Without fontTools: a missing glyph renders as .notdef, same as a non-character.
        notdef = _render(font, "\U0010FFFD", False).tobytes()
        for e in entries:
            cps = _strip_fe0f(e.codepoints)
            if len(cps) != 1 or (cmap is not None and cps[0] not in cmap):
                continue
            rgba = _render(font, chr(cps[0]), False)
            if cmap is None and rgba.tobytes() == notdef:
                continue
            img = _fit(rgba, size)
            if img is not None:
                yield e, img
    elif style == "emojione":
        assert src.gemojione_png_dir is not None
        files: dict[tuple[int, ...], Path] = {}
        for p in src.gemojione_png_dir.glob("*.png"):
            try:
                files[_match_key([int(h, 16) for h in p.stem.split("-")])] = p
            except ValueError:
                continue  # not a code-point file name
        for e in entries:
            p = files.get(_match_key(e.codepoints))
            if p is not None:
                with Image.open(p) as im:
                    img = _fit(im.convert("RGBA"), size)
                if img is not None:
                    yield e, img


def prepare_emoji(out_dir: str | Path, size: int = 64, limit: int | None = None,
                  styles: Sequence[str] = STYLES, gemojione_deb: str | None = None,
                  overwrite: bool = False) -> dict[str, dict[str, int]]:
    """Write the emoji data set to ``out_dir`` atomically; return counts per attribute.

    ``limit`` keeps only the first N fully-qualified emoji (file order). Everything is
    built in a sibling ``OUT.tmp-<pid>`` and renamed into place, so an interrupted run
    never leaves a half-written data set behind.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    src = find_sources(gemojione_deb, styles)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    try:
        entries = parse_emoji_test(src.emoji_test)[:limit]
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        counts: dict[str, Counter[str]] = {k: Counter() for k in ("style", "skin_tone", "group")}
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for style in styles:
                for e, img in _images(entries, style, src, size):
                    row = {"file_name": f"images/{style}_{e.key}.png", "text": e.name,
                           "style": style, "skin_tone": parse_skin_tone(e.name), "group": e.group}
                    img.save(tmp / row["file_name"])
                    meta.write(json.dumps(row, ensure_ascii=False) + "\n")
                    for k in counts:
                        counts[k][row[k]] += 1
        if out.exists():
            # rename() only replaces an empty directory; move a full one aside first.
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if src.tmp_dir is not None:
            shutil.rmtree(src.tmp_dir, ignore_errors=True)
    return {k: dict(c) for k, c in counts.items()}
