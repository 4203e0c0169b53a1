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
    order = torch.randperm(batch, generator=generator)
    ids: dict[str, int] = {}
    caption_id = torch.tensor([ids.setdefault(c, len(ids)) for c in captions], dtype=torch.long)  # (B,)
    # row i scans order[i], order[i + 1], ... (wrapping): a random start, so partners differ from step to step
    candidates = order[(torch.arange(batch)[:, None] + torch.arange(batch)[None]) % batch]  # (B, B)
    differs = caption_id[candidates] != caption_id[:, None]  # (B, B)
    valid = differs.any(dim=1)
    first = differs.int().argmax(dim=1)  # the first True of each row (0 where there is none)
    index = torch.where(valid, candidates.gather(1, first[:, None])[:, 0], torch.zeros_like(first))
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
    sizes = torch.tensor(num_values, dtype=torch.long).reshape(1, num_attrs)  # (1, A): 0 = continuous
    rand = torch.rand(batch, 3, generator=generator)
    if num_attrs == 0:  # a data set without attributes: nothing to change
        return attr_index.clone(), attr_value.clone(), torch.zeros(batch, dtype=torch.bool)
    options = attr_present.bool() & (sizes != 1)  # (B, A) attributes that can be changed
    count = options.sum(dim=1)  # (B,)
    valid = count > 0
    # the k-th option in attribute order, k = int(rand * count) % count
    k = (rand[:, 0] * count.float()).floor().long() % count.clamp(min=1)
    a = (options.long().cumsum(dim=1) > k[:, None]).int().argmax(dim=1)  # (B,)
    rows = torch.arange(batch)
    n = sizes[0, a]  # (B,) values of the chosen attribute
    categorical = valid & (n >= 2)
    steps = (n - 1).clamp(min=1)
    shift = 1 + (rand[:, 1] * steps.float()).floor().long() % steps
    new_index, new_value = attr_index.clone(), attr_value.clone()
    new_index[rows[categorical], a[categorical]] = ((attr_index[rows, a] + shift) % n.clamp(min=1))[categorical]
    continuous = valid & (n < 2)  # normalised to [0, 1]: move 0.25..0.75 of the range, wrapping inside it
    target = (attr_value[rows, a].double() + 0.25 + 0.5 * rand[:, 2].double()) % 1.0  # in float64, as it was
    new_value[rows[continuous], a[continuous]] = target[continuous].to(attr_value.dtype)
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
