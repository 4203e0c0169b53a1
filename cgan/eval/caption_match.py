"""Caption R-precision for free-form captions: a small image-text matcher trained on a folder's real pairs.

CLIP / DAMSM style. A small CNN embeds the image; the frozen text encoder's token features are pooled
by a learned attention query (so that a single word can outweigh the sentence mean), joined with the
pooled sentence vector and projected. Both sides are trained with a symmetric InfoNCE on the folder's
real (image, caption) pairs, only on the records the evaluation does not use.

R-precision (AttnGAN): each held-out image's own caption is ranked against NUM_DISTRACTORS captions of
other records (never a caption of the same record); the score is the fraction of images whose own
caption ranks first. Real held-out images give the ceiling; 1 / (1 + distractors) is chance.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import einsum

from cgan.condition.text_encoder import TextEncoding
from cgan.eval.faithfulness import ShapesReader, augment, to_input, train_steps

EMBED_DIM = 64
NUM_DISTRACTORS = 99


class TextHead(nn.Module):
    """Frozen text features -> a unit embedding (B, E): attention-pooled tokens + the pooled vector."""

    def __init__(self, text_dim: int, embed_dim: int = EMBED_DIM, hidden: int = 256):
        super().__init__()
        self.key = nn.Linear(text_dim, text_dim)
        self.query = nn.Parameter(torch.zeros(text_dim))  # starts as a mean over the tokens
        self.out = nn.Sequential(nn.Linear(2 * text_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim))

    def forward(self, text: TextEncoding) -> torch.Tensor:
        tokens = text.text_tokens.float()  # (B, T, D)
        scores = einsum(self.key(tokens), self.query, "b t d, d -> b t") / math.sqrt(tokens.shape[-1])
        weights = scores.masked_fill(~text.text_mask, float("-inf")).softmax(dim=1)  # (B, T)
        attended = einsum(weights, tokens, "b t, b t d -> b d")
        return F.normalize(self.out(torch.cat([attended, text.text_pooled.float()], dim=1)), dim=1)


class CaptionMatcher(nn.Module):
    """image (B, 3, S, S) in [-1, 1] and text -> unit embeddings in one space; cosine = match."""

    def __init__(self, text_dim: int, size: int, width: int = 24, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.size = size
        self.image = ShapesReader({"embedding": embed_dim}, width)
        self.text = TextHead(text_dim, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # 1 / temperature, learned (CLIP)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(to_input(images, self.size))["embedding"], dim=1)

    @torch.no_grad()
    def embed_images_eval(self, images: torch.Tensor) -> torch.Tensor:
        self.eval()
        return torch.cat([self.embed_images(chunk) for chunk in images.split(256)])

    @torch.no_grad()
    def embed_texts_eval(self, text: TextEncoding) -> torch.Tensor:
        self.eval()
        return self.text(text)


def fit_matcher(matcher: CaptionMatcher, images: torch.Tensor, caption_ids: list[list[int]],
                encode: Callable[[list[int]], TextEncoding], steps: int, batch_size: int = 64, seed: int = 0,
                lr: float = 2e-3, log: Callable[[str], None] | None = None) -> None:
    """Symmetric InfoNCE on real pairs: images (N, 3, R, R) uint8; caption_ids[i], the caption rows
    that describe image i (one is drawn per step); encode(rows) -> their frozen text features. A
    caption that also describes another image of the batch is not that image's negative. Dropout
    and batch norm follow the global RNG: callers fork it."""
    def batch_loss(gen: torch.Generator) -> torch.Tensor:
        idx = torch.randperm(len(images), generator=gen)[:batch_size]  # distinct records
        picks = [caption_ids[i][int(torch.randint(len(caption_ids[i]), (1,), generator=gen))] for i in idx.tolist()]
        image_embeds = F.normalize(matcher.image(augment(to_input(images[idx], matcher.size), gen))["embedding"], dim=1)
        text_embeds = matcher.text(encode(picks))  # (B, E)
        logits = matcher.log_scale.exp().clamp(max=100) * image_embeds @ text_embeds.T  # (B images, B captions)
        # not negatives: a caption that also describes the other image (the same text, or one of the
        # other record's own captions), as the evaluation never ranks a record's own captions
        describes = torch.tensor([[pick in caption_ids[i] for pick in picks] for i in idx.tolist()])  # (B, B)
        logits = logits.masked_fill(describes & ~torch.eye(len(picks), dtype=torch.bool), float("-inf"))
        labels = torch.arange(len(picks))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    train_steps(matcher, batch_loss, steps, seed, lr, log, name="caption matcher step")


def distractor_sets(true_rows: Sequence[int], own_rows: Sequence[set[int]], num_captions: int, seed: int,
                    num: int = NUM_DISTRACTORS) -> list[torch.Tensor]:
    """Per image, `num` rows of the caption bank (fewer when the bank is small) that are none of its
    record's own captions; the same for every call with the same seed, so real and generated images
    are ranked against the same captions."""
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for true, own in zip(true_rows, own_rows):
        order = torch.randperm(num_captions, generator=gen)
        others = order[~torch.isin(order, torch.tensor(sorted(own | {true})))]
        sets.append(others[:num])
    return sets


def r_precision(image_embeds: torch.Tensor, caption_embeds: torch.Tensor, true_rows: Sequence[int],
                distractors: Sequence[torch.Tensor]) -> float:
    """Fraction of images (N, E) whose own caption (a row of caption_embeds (C, E)) scores above every
    one of its distractors."""
    similarity = image_embeds @ caption_embeds.T  # (N, C)
    hits = [bool(similarity[i, true] > similarity[i, others].max()) if len(others) else True
            for i, (true, others) in enumerate(zip(true_rows, distractors))]
    return round(sum(hits) / max(len(hits), 1), 4)
