"""Tests for the offline emoji data set builder (cgan.data.emoji)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, features

from cgan.data import emoji
from cgan.data.emoji import MissingPackageError, find_sources, parse_skin_tone, prepare_emoji


def _require_sources() -> None:
    """Skip when the Debian packages are absent, except in CI where that is a failure."""
    try:
        src = find_sources()
        if src.tmp_dir is not None:  # the caller owns the unpacked .deb
            shutil.rmtree(src.tmp_dir, ignore_errors=True)
        if not features.check("raqm"):
            raise MissingPackageError("Pillow was built without raqm")
    except MissingPackageError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"emoji sources missing in CI: {err}")
        pytest.skip(f"emoji sources missing: {err}")


@pytest.mark.parametrize("name, tone", [
    ("waving hand: medium-dark skin tone", "medium-dark"),
    ("waving hand", "none"),
    ("woman technologist: light skin tone", "light"),
    ("person: medium-light skin tone, curly hair", "medium-light"),
    ("kiss: woman, man, dark skin tone, medium skin tone", "dark"),  # first tone wins
    ("men holding hands: medium skin tone, medium-dark skin tone", "medium"),
    ("flag: United States", "none"),
    ("keycap: #", "none"),
])
def test_parse_skin_tone(name: str, tone: str) -> None:
    assert parse_skin_tone(name) == tone


def test_prepare_emoji_small(tmp_path: Path) -> None:
    _require_sources()
    out = tmp_path / "emoji"
    counts = prepare_emoji(out, size=32, limit=40)
    assert out.is_dir() and not list(tmp_path.glob("emoji.tmp-*"))  # atomic: temp dir gone

    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text("utf-8").splitlines()]
    assert len(rows) == sum(counts["style"].values()) == len(list((out / "images").iterdir()))
    names = [e.name for e in emoji.parse_emoji_test(find_sources(styles=()).emoji_test)[:40]]
    for row in rows:
        assert set(row) == {"file_name", "text", "style", "skin_tone", "group"}
        with Image.open(out / row["file_name"]) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 32))
        assert row["text"] in names  # captions are the official Unicode names
        assert row["skin_tone"] == "none" and row["group"] == "Smileys & Emotion"

    # The first 40 entries are smileys: Noto has all, EmojiOne 2.x and Symbola most.
    assert counts["style"]["noto"] == 40
    assert set(counts["style"]) == {"noto", "emojione", "symbola"}
    assert {r["text"] for r in rows if r["file_name"] == "images/noto_1f600.png"} == {"grinning face"}
    assert counts["group"] == {"Smileys & Emotion": len(rows)}

    # A second run must not clobber an existing data set unless asked to.
    with pytest.raises(FileExistsError):
        prepare_emoji(out, size=32, limit=2)
    assert prepare_emoji(out, size=32, limit=2, styles=("noto",), overwrite=True) == {
        "style": {"noto": 2}, "skin_tone": {"none": 2}, "group": {"Smileys & Emotion": 2}}


def test_missing_package_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Point every search location at an empty folder: nothing can be found.
    monkeypatch.setattr(emoji, "SHARE_DIRS", [tmp_path])
    monkeypatch.setattr(emoji, "DEB_SEARCH_DIRS", [tmp_path])
    monkeypatch.setattr(emoji, "_installed_gemojione", lambda: None)
    monkeypatch.delenv("CGAN_GEMOJIONE_DEB", raising=False)
    with pytest.raises(MissingPackageError) as info:
        find_sources()
    msg = str(info.value)
    assert "apt-get install -y unicode-data fonts-noto-color-emoji fonts-symbola" in msg
    assert "emoji-test.txt" in msg and "apt-get download ruby-gemojione" in msg
    with pytest.raises(MissingPackageError, match="apt-get download ruby-gemojione"):
        find_sources(gemojione_deb=str(tmp_path / "nope.deb"))
