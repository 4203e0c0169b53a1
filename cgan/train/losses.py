"""GAN losses, lazy R1, and the matching-aware negatives of the discriminator."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def d_real_term(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample D loss that pushes logits of real, matching pairs up."""
    return F.relu(1 - logits) if kind == "hinge" else F.softplus(-logits)  # softplus: stable log(1 + exp(.))


def d_fake_term(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample D loss that pushes logits of fakes and mismatched pairs down."""
    return F.relu(1 + logits) if kind == "hinge" else F.softplus(logits)


def g_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()  # non-saturating


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||d logit / d image||^2 (in fp32; call outside autocast)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().square().sum(dim=(1, 2, 3)).mean()


def mismatched_prompt_index(captions: list[str], generator: torch.Generator | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample i, another sample j whose caption differs from caption i.

    Returns (index (B,) long, valid (B,) bool). A batch position whose caption equals every
    other caption in the batch has no mismatch and is marked invalid; it is never paired with
    itself or with an identical caption (a shifted batch would do exactly that on duplicates).
    """
    batch = len(captions)
    index = torch.zeros(batch, dtype=torch.long)
    valid = torch.zeros(batch, dtype=torch.bool)
    order = torch.randperm(batch, generator=generator).tolist()
    for i in range(batch):
        for j in order[i:] + order[:i]:  # a random start, so partners differ from step to step
            if captions[j] != captions[i]:
                index[i], valid[i] = j, True
                break
    return index, valid


def mismatched_attributes(attr_index: torch.Tensor, attr_value: torch.Tensor, attr_present: torch.Tensor,
                          num_values: list[int], generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Change one attribute per sample to a value it does not have.

    A categorical attribute takes a different value (needs >= 2 values); a continuous one
    moves by at least a quarter of its range. Samples with no present attribute that can be
    changed are marked invalid. Returns (attr_index, attr_value, valid (B,) bool).
    """
    batch, num_attrs = attr_index.shape
    new_index, new_value = attr_index.clone(), attr_value.clone()
    valid = torch.zeros(batch, dtype=torch.bool)
    changeable = [a for a in range(num_attrs) if num_values[a] != 1]
    rand = torch.rand(batch, 3, generator=generator)
    for i in range(batch):
        options = [a for a in changeable if bool(attr_present[i, a])]
        if not options:
            continue
        a = options[int(rand[i, 0] * len(options)) % len(options)]
        if num_values[a] >= 2:  # categorical: a uniformly chosen different value
            shift = 1 + int(rand[i, 1] * (num_values[a] - 1)) % (num_values[a] - 1)
            new_index[i, a] = (attr_index[i, a] + shift) % num_values[a]
        else:  # continuous, normalised to [0, 1]: move 0.25..0.75 of the range, wrapping inside it
            v = float(attr_value[i, a])
            target = (v + 0.25 + 0.5 * float(rand[i, 2])) % 1.0
            new_value[i, a] = target
        valid[i] = True
    return new_index, new_value, valid


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B,) or (B, N) (then averaged over N first) over the samples where mask (B,) holds."""
    if values.dim() > 1:
        values = values.flatten(1).mean(dim=1)
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def same_condition(captions: list[str], prompt_present: torch.Tensor, attr_index: torch.Tensor,
                   attr_value: torch.Tensor, attr_present: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: True where samples i and j ask for the same thing (same prompt, or both without one,
    and the same attributes given with the same values). Such pairs are not negatives of each other."""
    ids: dict[str, int] = {}
    caption_id = torch.tensor([ids.setdefault(c, len(ids)) for c in captions]).to(prompt_present.device)  # (B,)
    present = prompt_present.bool()
    same_prompt = (present[:, None] & present[None] & (caption_id[:, None] == caption_id[None])) | \
                  (~present[:, None] & ~present[None])  # (B, B)
    given = attr_present.bool()
    same_attr = (given[:, None] == given[None]) & (
        ~given[:, None] | ((attr_index[:, None] == attr_index[None]) & (attr_value[:, None] == attr_value[None])))
    return same_prompt & same_attr.all(dim=-1)  # (B, B)
