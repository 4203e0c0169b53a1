"""Fusion of the prompt and the attributes into one condition (the heart of cgan's design).

`concat` (the baseline): pooled text concatenated with the attribute tokens, then an MLP,
gives the condition vector (B, D); its only token is that vector itself.

`cross_attention`: the same pooled path, plus learned condition queries that attend over the
context [null-prompt slot; text tokens; attribute tokens] through a few blocks of
(cross-attention, MLP), each with a residual. The result is `cond_tokens` (B, Q, D), whose
mean (through a zero-initialised layer) is added to the condition vector. The generator and
discriminator attend over [cond_tokens; context tokens], so each image location can read the
fused summary and the individual words and attributes. At initialisation it is the baseline
plus token-level attention that starts as the identity: what it adds is what it learns.
With zero_init=False (model.fusion_zero_init=false) the fused tokens count from the first step.
With text_positions (model.text_positions), a learned embedding of each token's position (zero at
the start) is added to the text tokens: attention alone is blind to word order, and a frozen
encoder's contextual tokens carry little of it (a D trained without it scored "A left of B" and
"B left of A" the same on real images: condition vectors at cosine 0.997).
With text_layers (model.text_layers), that many trainable self-attention blocks run over the text
tokens (after the positions) before anything reads them, each starting as the identity: a word can
then learn from its neighbours and its place which object it belongs to and on which side it is
("red" in "a red circle left of a blue square" vs "a blue square right of a red circle").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
from einops import rearrange, repeat

from cgan.condition.attributes import AttributeEmbedder, AttributeSchema
from cgan.core.model_config import MAX_TEXT_POSITIONS
from cgan.core.layers import Attention, EqualLinear, FeedForward
from cgan.condition.text_encoder import TextEncoding


@dataclass
class ConditionInput:
    """What is asked for, before fusion: the one object G, D and the training steps take.

    text: the prompts' encodings (B rows); prompt_present (B,) bool: False where the prompt is
    dropped or empty (a learned null token stands in); attr_index, attr_value, attr_present (B, A):
    the attributes as AttributeSchema.encode gives them (a missing one takes its null token).
    """

    text: TextEncoding
    prompt_present: torch.Tensor
    attr_index: torch.Tensor
    attr_value: torch.Tensor
    attr_present: torch.Tensor

    def __len__(self) -> int:
        return self.prompt_present.shape[0]

    def index(self, idx: torch.Tensor | slice | list[int]) -> "ConditionInput":
        return ConditionInput(self.text.index(idx), self.prompt_present[idx], self.attr_index[idx],
                              self.attr_value[idx], self.attr_present[idx])

    def replace(self, **changes: torch.Tensor | TextEncoding) -> "ConditionInput":
        return dataclasses.replace(self, **changes)

    @staticmethod
    def cat(parts: list["ConditionInput"]) -> "ConditionInput":
        text = TextEncoding(*(torch.cat([getattr(p.text, f) for p in parts])
                              for f in ("text_tokens", "text_mask", "text_pooled")))
        return ConditionInput(text, *(torch.cat([getattr(p, f) for p in parts])
                                      for f in ("prompt_present", "attr_index", "attr_value", "attr_present")))


@dataclass
class Condition:
    """What G and D are conditioned on.

    cond_vector (B, D): pooled condition (modulates G's mapping network; D's projection).
    attn_tokens (B, M, D) and attn_mask (B, M): what G's and D's spatial cross-attention read.
    fusion_attention (B, heads, Q, 1 + T + A) or None: the fusion module's attention weights
    over [null-prompt slot; text tokens; attribute tokens].
    word_tokens (B, T, D) and word_mask (B, T), cross_attention only: the prompt's own tokens as
    the fusion reads them (after the positions and the text blocks); the mask is False on padding
    and on dropped prompts (D's word-region matching reads them).
    """

    cond_vector: torch.Tensor
    attn_tokens: torch.Tensor
    attn_mask: torch.Tensor
    fusion_attention: torch.Tensor | None = None
    word_tokens: torch.Tensor | None = None
    word_mask: torch.Tensor | None = None

    def slice(self, start: int, stop: int) -> "Condition":
        """Rows start..stop of every tensor (the fusion weights, if any, are dropped)."""
        has_words = self.word_tokens is not None
        words = (self.word_tokens[start:stop], self.word_mask[start:stop]) if has_words else (None, None)
        return Condition(self.cond_vector[start:stop], self.attn_tokens[start:stop], self.attn_mask[start:stop],
                         None, *words)


class FusionBlock(nn.Module):
    """queries (B, Q, D) attend over context (B, M, D); pre-norm, residual attention and MLP.
    zero_init: both residual branches start at zero (the block starts as the identity)."""

    def __init__(self, dim: int, num_heads: int, zero_init: bool = False):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = Attention(dim, dim, num_heads=num_heads, zero_init_out=zero_init)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim)
        if zero_init:
            nn.init.zeros_(self.mlp.net[-1].weight)

    def forward(self, queries, context, context_mask, return_weights=False):
        out, weights = self.attn(self.norm_q(queries), self.norm_context(context), context_mask, return_weights)
        queries = queries + out
        queries = queries + self.mlp(self.norm_mlp(queries))
        return queries, weights


class Conditioner(nn.Module):
    """ConditionInput -> Condition. A learned null-prompt token stands in where the prompt is absent;
    missing attributes take their null tokens."""

    def __init__(self, *, schema: AttributeSchema, text_dim: int, cond_dim: int, fusion: str = "cross_attention",
                 num_queries: int = 8, num_layers: int = 2, num_heads: int = 4, zero_init: bool = True,
                 text_positions: bool = False, text_layers: int = 0):
        super().__init__()
        if fusion not in ("cross_attention", "concat"):
            raise ValueError(f"fusion: expected cross_attention or concat, got {fusion!r}")
        self.fusion = fusion
        self.num_attrs = len(schema)
        self.num_queries = num_queries if fusion == "cross_attention" else 0  # fused tokens G and D attend to
        self.attr_embedder = AttributeEmbedder(schema=schema, dim=cond_dim)
        self.null_prompt = nn.Parameter(torch.randn(cond_dim))
        # The pooled path, shared by both fusions: pooled text and attribute tokens -> MLP.
        self.pooled_proj = EqualLinear(text_dim, cond_dim)
        self.mlp = nn.Sequential(EqualLinear((1 + self.num_attrs) * cond_dim, cond_dim, activation=True),
                                 EqualLinear(cond_dim, cond_dim))
        if fusion == "cross_attention":
            self.text_proj = EqualLinear(text_dim, cond_dim)
            self.type_embedding = nn.Parameter(torch.randn(3, cond_dim))  # null-prompt, text, attribute
            # (MAX_TEXT_POSITIONS, D), zero at the start: the model begins as it was without it
            self.text_position = nn.Parameter(torch.zeros(MAX_TEXT_POSITIONS, cond_dim)) if text_positions else None
            # self-attention over the text tokens, identity at the start (warm starts keep their behaviour)
            self.text_blocks = nn.ModuleList(FusionBlock(cond_dim, num_heads, zero_init=True)
                                             for _ in range(text_layers))
            self.queries = nn.Parameter(torch.randn(num_queries, cond_dim))
            self.blocks = nn.ModuleList(FusionBlock(cond_dim, num_heads) for _ in range(num_layers))
            self.norm_out = nn.LayerNorm(cond_dim)
            self.pool = EqualLinear(cond_dim, cond_dim)
            if zero_init:  # starts as the pooled path alone; learns what fusion adds
                nn.init.zeros_(self.pool.weight)

    def forward(self, inputs: ConditionInput, return_attention: bool = False) -> Condition:
        text = inputs.text
        attr_tokens = self.attr_embedder(inputs.attr_index, inputs.attr_value, inputs.attr_present)  # (B, A, D)
        batch = attr_tokens.shape[0]
        prompt_present = inputs.prompt_present.to(torch.bool)
        null_prompt = repeat(self.null_prompt, "d -> b 1 d", b=batch)
        pooled = torch.where(prompt_present[:, None], self.pooled_proj(text.text_pooled), null_prompt[:, 0])  # (B, D)
        flat = torch.cat([pooled, rearrange(attr_tokens, "b a d -> b (a d)")], dim=-1)  # (B, (1 + A) * D)
        cond_vector = self.mlp(flat)  # (B, D)
        if self.fusion == "concat":
            tokens = cond_vector[:, None]  # (B, 1, D)
            return Condition(cond_vector, tokens, torch.ones(batch, 1, dtype=torch.bool, device=tokens.device))

        text_tokens = self.text_proj(text.text_tokens)  # (B, T, D)
        if self.text_position is not None:
            text_tokens = text_tokens + self.text_position[:text_tokens.shape[1]]  # (T, D) broadcast over B
        if len(self.text_blocks):
            # the first token ([CLS]) always counts, so a row never attends over nothing
            own_mask = text.text_mask.clone()
            own_mask[:, 0] = True  # (B, T)
            for block in self.text_blocks:
                text_tokens, _ = block(text_tokens, text_tokens, own_mask)
        context = torch.cat([null_prompt + self.type_embedding[0], text_tokens + self.type_embedding[1],
                             attr_tokens + self.type_embedding[2]], dim=1)  # (B, 1 + T + A, D)
        attr_mask = torch.ones(batch, self.num_attrs, dtype=torch.bool, device=context.device)
        context_mask = torch.cat([~prompt_present[:, None], text.text_mask & prompt_present[:, None], attr_mask],
                                 dim=1)  # (B, 1 + T + A): never all False, the null slot or attributes remain
        queries = repeat(self.queries, "q d -> b q d", b=batch)
        weights = None
        for block in self.blocks:
            queries, weights = block(queries, context, context_mask, return_attention)
        cond_tokens = self.norm_out(queries)  # (B, Q, D)
        # The pooled path plus the fused tokens: the condition differs between prompts from the
        # first step, before the queries have learned to attend.
        cond_vector = cond_vector + self.pool(cond_tokens.mean(dim=1))  # (B, D)
        attn_tokens = torch.cat([cond_tokens, context], dim=1)  # (B, Q + 1 + T + A, D)
        attn_mask = torch.cat([torch.ones_like(cond_tokens[..., 0], dtype=torch.bool), context_mask], dim=1)
        word_mask = text.text_mask & prompt_present[:, None]  # (B, T)
        return Condition(cond_vector, attn_tokens, attn_mask, weights, text_tokens, word_mask)
