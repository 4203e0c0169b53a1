"""Every caption's text embedding as one table on the training device, indexed by caption id.

A batch's text is then one gather on the device (`table(ids)`), instead of rows stacked on the host
and copied for every batch. The rows are the TextEmbeddingCache's (tokens kept in float16 as there),
so a lookup gives the same numbers as the cache does.
"""
from __future__ import annotations

import torch

from cgan.condition.text_encoder import TextEmbeddingCache, TextEncoding


class CaptionTable:
    """captions (list of C strings, id = position) -> text_tokens (C, T, D) float16, text_mask (C, T) bool and
    text_pooled (C, D) on `device`; `table(ids)` with ids (B,) long on that device -> TextEncoding (B rows,
    tokens in float32)."""

    def __init__(self, captions: list[str], text_cache: TextEmbeddingCache, device: torch.device | str,
                 chunk: int = 1024):
        self.captions = list(captions)
        self.ids = {c: i for i, c in enumerate(self.captions)}
        parts = []
        for start in range(0, len(self.captions), chunk):
            enc = text_cache(self.captions[start:start + chunk])  # float32 of the cache's float16 rows: exact
            parts.append((enc.text_tokens.half(), enc.text_mask, enc.text_pooled))
        self.text_tokens, self.text_mask, self.text_pooled = (torch.cat(t).to(device) for t in zip(*parts))
        self.empty_id = self.ids.get("")  # the id of "" (a record without a contradicting caption), if any

    def __len__(self) -> int:
        return len(self.captions)

    def __call__(self, ids: torch.Tensor) -> TextEncoding:
        # index_select: whole rows at once (advanced indexing gathers element by element, ~5x slower on a CPU)
        return TextEncoding(self.text_tokens.index_select(0, ids).float(), self.text_mask.index_select(0, ids),
                            self.text_pooled.index_select(0, ids))

    def strings(self, ids: torch.Tensor) -> list[str]:
        return [self.captions[i] for i in ids.tolist()]
