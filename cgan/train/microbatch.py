"""One micro-batch on the device (`Batch`), made from the loader's items with training-time dropout."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cgan.condition.attributes import drop_attributes
from cgan.condition.fusion import ConditionInput
from cgan.condition.text_encoder import TextEmbeddingCache, TextEncoding
from cgan.core.config import Config
from cgan.train.caption_table import CaptionTable
from cgan.train.losses import same_condition


@dataclass
class Batch:
    """One micro-batch on the device; conditions after training-time dropout."""

    images: torch.Tensor  # (B, 3, R, R) in [-1, 1]
    captions: list[str]
    cond: ConditionInput  # after prompt and attribute dropout
    attr_present_full: torch.Tensor  # (B, A) before dropout (for matching-aware negatives)
    # (attr_index, attr_value, attr_present_full) as loaded, on the CPU: the matching-aware negatives are
    # drawn from these, so no device -> host copy (a host sync on a GPU) is needed in the step
    attr_host: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    # loss.hard_negative: per sample a caption that contradicts its image (B rows), and which samples have one
    negative_text: TextEncoding | None = None
    negative_valid: torch.Tensor | None = None  # (B,) bool

    def full_cond(self) -> ConditionInput:
        """The condition without dropout: what a real image shows (prompt and every attribute it has)."""
        return self.cond.replace(prompt_present=torch.ones_like(self.cond.prompt_present),
                                 attr_present=self.attr_present_full)

    def same_condition(self) -> torch.Tensor:
        """(B, B) bool: pairs that ask for the same thing (not contrastive negatives of each other)."""
        c = self.cond
        return same_condition(self.captions, c.prompt_present, c.attr_index, c.attr_value, c.attr_present)


def to_device_batch(raw: dict[str, Any], text_cache: TextEmbeddingCache, config: Config, device,
                    memory_format, negatives: bool = False, table: CaptionTable | None = None) -> Batch:
    """A loader's micro-batch on the device. From the image cache (ArrayBatches): uint8 images, made [-1, 1]
    on the device, and caption ids looked up in `table`; from a DataLoader: images in [-1, 1] and captions.
    negatives: also the data set's contradicting captions (a loss term that is on reads them)."""
    t = config.train
    images = raw["image"].to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.float().div_(127.5).sub_(1.0)  # as cgan.core.images.image_to_tensor; in place: one allocation
    images = images.contiguous(memory_format=memory_format)
    by_id = "caption_id" in raw
    captions = table.strings(raw["caption_id"]) if by_id else list(raw["text"])
    size = images.shape[0]
    prompt_present = torch.rand(size, device=device) >= t.drop_prompt
    attr_present_full = raw["attr_present"].to(device, non_blocking=True)
    negative_text = negative_valid = None
    if negatives and by_id:
        negative_ids = raw["negative_id"].to(device, non_blocking=True)
        negative_text = table(negative_ids)
        negative_valid = negative_ids != (-1 if table.empty_id is None else table.empty_id)
    elif negatives:
        negative_captions = list(raw["negative"])
        negative_text = text_cache(negative_captions, device=device)
        negative_valid = torch.tensor([bool(n) for n in negative_captions]).to(device, non_blocking=True)
    text = table(raw["caption_id"].to(device, non_blocking=True)) if by_id else text_cache(captions, device=device)
    cond = ConditionInput(text, prompt_present,
                          raw["attr_index"].to(device, non_blocking=True), raw["attr_value"].to(device, non_blocking=True),
                          drop_attributes(attr_present_full, t.drop_attr))
    return Batch(images=images, captions=captions, cond=cond, attr_present_full=attr_present_full,
                 attr_host=(raw["attr_index"], raw["attr_value"], raw["attr_present"]), negative_text=negative_text,
                 negative_valid=negative_valid)
