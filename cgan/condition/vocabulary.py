"""The words of a model's training captions, kept in its folder (`vocabulary.json`), so a prompt with
a word the model never saw ("a pink hexagon", "a red cirle") is named instead of drawn as a plausible
blob. A model exported before this file existed has none; it still loads, and prompts go unchecked."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from cgan.core.errors import CganError

VOCABULARY_FILE = "vocabulary.json"
# Letters and digits of any script; "don't" and "skin-tone" split as a reader would ("don't", "skin", "tone").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


class VocabularyError(CganError, ValueError):
    """vocabulary.json is unreadable or not a {"words": [...]} object."""


def caption_words(text: str) -> list[str]:
    """'A red circle, left of a blue square' -> ['a', 'red', 'circle', 'left', 'of', 'a', 'blue', 'square']."""
    return _WORD.findall(text.lower())


def build_vocabulary(captions: Iterable[str]) -> list[str]:
    """Every word of the captions, sorted, once each."""
    return sorted({word for caption in captions for word in caption_words(caption)})


def unknown_words(prompt: str, vocabulary: frozenset[str] | set[str]) -> list[str]:
    """The prompt's words outside the vocabulary, in prompt order, once each."""
    return list(dict.fromkeys(w for w in caption_words(prompt) if w not in vocabulary))


def write_vocabulary(folder: Path, words: Iterable[str], source: str) -> None:
    """vocabulary.json in a model folder being built (the folder is published whole by its writer)."""
    words = sorted(set(words))
    (Path(folder) / VOCABULARY_FILE).write_text(json.dumps({"source": source, "num_words": len(words),
                                                            "words": words}, indent=1) + "\n")


def read_vocabulary(model_dir: str | Path) -> frozenset[str] | None:
    """The model's vocabulary, or None for a model exported without one."""
    path = Path(model_dir) / VOCABULARY_FILE
    if not path.is_file():
        return None
    try:
        words = json.loads(path.read_text()).get("words")
    except (json.JSONDecodeError, AttributeError) as err:
        raise VocabularyError(f"{path}: expected a JSON object with a 'words' list ({err})") from None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise VocabularyError(f"{path}: 'words': expected a list of strings")
    return frozenset(words)
