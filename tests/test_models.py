"""Shapes through every module, the conditioning contracts, and matching-aware negatives."""
import pytest
import torch

from cgan.condition.attributes import AttributeEmbedder, AttributeSchema, InvalidAttributeError
from cgan.condition.fusion import ConditionInput, Conditioner
from cgan.nets.discriminator import Discriminator
from cgan.nets.generator import Generator
from cgan.train.losses import mismatched_attributes, mismatched_prompt_index
from conftest import fake_text, tiny_d_kwargs, tiny_model_kwargs

B = 4


def conditions(schema, batch=B):
    attrs = [{"style": "flat", "background": "dark", "size": 0.2}, {"style": "outline"}, {}, {"size": 1.0}]
    return schema.encode((attrs * batch)[:batch])


def inputs(schema, text, present):
    return ConditionInput(text, present, *conditions(schema, len(present)))


@pytest.mark.parametrize("fusion", ["cross_attention", "concat"])
@pytest.mark.parametrize("resolution", [32, 64])
def test_generator_and_discriminator_shapes(shapes_schema, fusion, resolution):
    torch.manual_seed(0)
    G = Generator(schema=shapes_schema, **tiny_model_kwargs(resolution=resolution, fusion=fusion))
    D = Discriminator(schema=shapes_schema, **tiny_d_kwargs(resolution=resolution, fusion=fusion))
    text = fake_text(B)
    present = torch.ones(B, dtype=torch.bool)
    images = G(torch.randn(B, 16), inputs(shapes_schema, text, present))
    assert images.shape == (B, 3, resolution, resolution)
    out = D(images, inputs(shapes_schema, text, present))
    logits = out.scores()
    assert [m.shape for m in out.logits] == [(B,)] and logits.shape == (B,) and out.plain is None
    logits.sum().backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad and p.grad is not None)


def test_pool_first_discriminator_same_weights_half_resolution_conv(shapes_schema):
    """model.discriminator.pool_first: the same parameters (a state dict loads either way); each block's second
    convolution sees r/2 instead of r."""
    kwargs = tiny_d_kwargs()
    torch.manual_seed(0)
    D = Discriminator(schema=shapes_schema, **kwargs)
    D_fast = Discriminator(schema=shapes_schema, pool_first=True, **kwargs)
    D_fast.load_state_dict(D.state_dict())
    sizes = {}
    for name, model in (("default", D), ("pool_first", D_fast)):
        model.blocks[0].conv1.register_forward_pre_hook(lambda m, args, name=name: sizes.update({name: args[0].shape[-1]}))
    images, text, present = torch.randn(B, 3, 32, 32), fake_text(B), torch.ones(B, dtype=torch.bool)
    a = D(images, inputs(shapes_schema, text, present)).scores()
    b = D_fast(images, inputs(shapes_schema, text, present)).scores()
    assert sizes == {"default": 32, "pool_first": 16}
    assert b.shape == (B,) and torch.isfinite(b).all() and not torch.allclose(a, b)


def test_top_full_res_discriminator_keeps_the_top_block_at_the_image_resolution(shapes_schema):
    """model.discriminator.top_full_res with pool_first: the top block convolves at R, the lower blocks at
    r/2; the parameters are the same (a pool_first D's state dict loads)."""
    kwargs = tiny_d_kwargs()
    torch.manual_seed(0)
    D_fast = Discriminator(schema=shapes_schema, pool_first=True, **kwargs)
    D_top = Discriminator(schema=shapes_schema, pool_first=True, top_full_res=True, **kwargs)
    D_top.load_state_dict(D_fast.state_dict())
    sizes = {}
    for index, block in enumerate(D_top.blocks[:2]):
        block.conv1.register_forward_pre_hook(lambda m, args, index=index: sizes.update({index: args[0].shape[-1]}))
    images, text, present = torch.randn(B, 3, 32, 32), fake_text(B), torch.ones(B, dtype=torch.bool)
    scores = D_top(images, inputs(shapes_schema, text, present)).scores()
    assert sizes == {0: 32, 1: 8}  # the top block at 32 px, the next (16 px in) after its pooling
    assert scores.shape == (B,) and torch.isfinite(scores).all()


def test_fusion_attention_over_text_and_attributes(shapes_schema):
    cond = Conditioner(schema=shapes_schema, text_dim=384, cond_dim=32, num_queries=4, num_layers=2, num_heads=2)
    text = fake_text(B, tokens=8)
    prompt_present = torch.tensor([True, True, False, True])
    out = cond(inputs(shapes_schema, text, prompt_present), return_attention=True)
    weights = out.fusion_attention  # (B, heads, Q, 1 + T + A)
    assert weights.shape == (B, 2, 4, 1 + 8 + 3)
    assert torch.allclose(weights.sum(-1), torch.ones(B, 2, 4), atol=1e-5)
    assert weights[0, :, :, 1 + 4:1 + 8].abs().max() == 0  # padding tokens get no weight
    assert weights[0, :, :, 0].abs().max() == 0  # the null-prompt slot is off when the prompt is there
    assert weights[2, :, :, 1:1 + 8].abs().max() == 0  # a dropped prompt: no weight on its words
    assert weights[2, :, :, 0].min() > 0
    assert out.cond_vector.shape == (B, 32)
    assert out.attn_tokens.shape[:2] == out.attn_mask.shape == (B, 4 + 1 + 8 + 3)


def test_text_positions_start_silent_then_tell_word_order_apart(shapes_schema):
    from cgan.condition.text_encoder import TextEncoding

    torch.manual_seed(0)
    plain = Conditioner(schema=shapes_schema, text_dim=384, cond_dim=32, num_queries=4, zero_init=False)
    torch.manual_seed(0)
    positioned = Conditioner(schema=shapes_schema, text_dim=384, cond_dim=32, num_queries=4, zero_init=False,
                             text_positions=True)
    text = fake_text(B, tokens=8)
    text.text_mask[:] = True
    swapped = TextEncoding(text.text_tokens.flip(1), text.text_mask, text.text_pooled)  # same words, reversed
    present = torch.ones(B, dtype=torch.bool)
    assert torch.equal(positioned(inputs(shapes_schema, text, present)).cond_vector,
                       plain(inputs(shapes_schema, text, present)).cond_vector)  # zero at the start: no change
    # attention is blind to order: the same words in reverse give the same condition ...
    torch.testing.assert_close(plain(inputs(shapes_schema, swapped, present)).cond_vector,
                               plain(inputs(shapes_schema, text, present)).cond_vector)
    with torch.no_grad():
        positioned.text_position.normal_()
    # ... unless each token knows its position
    assert not torch.allclose(positioned(inputs(shapes_schema, swapped, present)).cond_vector,
                              positioned(inputs(shapes_schema, text, present)).cond_vector, atol=1e-3)


def test_attention_positions_start_silent_then_let_a_location_choose_its_words(shapes_schema):
    from cgan.core.layers import SpatialCrossAttention

    torch.manual_seed(0)
    kwargs = dict(schema=shapes_schema, **tiny_model_kwargs(attn_resolutions=(4, 8)))
    plain, positioned = Generator(**kwargs), Generator(**kwargs, attn_positions=True)
    missing = positioned.load_state_dict(plain.state_dict(), strict=False).missing_keys  # as train.init_from does
    assert sorted(missing) == ["blocks.0.attn.position", "blocks.1.attn.position"]
    cond = inputs(shapes_schema, fake_text(B), torch.tensor([True, True, False, True]))
    z = torch.randn(B, plain.z_dim)
    assert torch.equal(positioned(z, cond), plain(z, cond))  # a warm start keeps its images
    # once learned, the locations of one image attend differently to the same words
    attention = SpatialCrossAttention(16, 8, num_heads=2, position_size=4)
    tokens, mask = torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.bool)
    uniform = torch.ones(1, 16, 4, 4)  # every location holds the same features
    _, before = attention(uniform, tokens, mask, return_weights=True)  # (1, heads, 16, 5)
    assert torch.allclose(before, before[:, :, :1].expand_as(before))
    with torch.no_grad():
        attention.position.normal_()
    _, after = attention(uniform, tokens, mask, return_weights=True)
    assert not torch.allclose(after[:, :, 0], after[:, :, 15], atol=1e-3)


def test_text_layers_start_as_identity_then_let_words_see_each_other(shapes_schema):
    from cgan.condition.text_encoder import TextEncoding

    torch.manual_seed(0)
    plain = Conditioner(schema=shapes_schema, text_dim=384, cond_dim=32, num_queries=4, zero_init=False,
                        text_positions=True)
    torch.manual_seed(0)
    layered = Conditioner(schema=shapes_schema, text_dim=384, cond_dim=32, num_queries=4, zero_init=False,
                          text_positions=True, text_layers=2)
    missing = layered.load_state_dict(plain.state_dict(), strict=False).missing_keys  # as train.init_from does
    assert missing and all(key.startswith("text_blocks.") for key in missing)
    text = fake_text(B, tokens=8)
    present = torch.tensor([True, True, False, True])  # a dropped prompt must not make NaNs
    plain_out = plain(inputs(shapes_schema, text, present))
    layered_out = layered(inputs(shapes_schema, text, present))
    # a warm start from a run without text layers keeps its behaviour
    assert torch.equal(layered_out.cond_vector, plain_out.cond_vector)
    assert torch.equal(layered_out.attn_tokens, plain_out.attn_tokens)
    with torch.no_grad():
        for block in layered.text_blocks:
            block.attn.to_out.weight.normal_()
    # once trained, the token at position 1 reads the other (unpadded) words: change word 2 only
    changed_tokens = text.text_tokens.clone()
    changed_tokens[:, 2] += 1.0
    changed = TextEncoding(changed_tokens, text.text_mask, text.text_pooled)
    first_text = 1 + 4 + 1  # after the fused queries and the null-prompt slot
    before = layered(inputs(shapes_schema, text, present)).attn_tokens[:, first_text + 1]
    after = layered(inputs(shapes_schema, changed, present)).attn_tokens[:, first_text + 1]
    assert torch.isfinite(before).all()
    assert not torch.allclose(before[0], after[0], atol=1e-4)


def test_word_region_match_knows_where_and_ignores_dropped_prompts(shapes_schema):
    torch.manual_seed(0)
    kwargs = tiny_d_kwargs(resolution=32)
    D = Discriminator(schema=shapes_schema, word_match=True, text_positions=True, text_layers=1, **kwargs)
    assert D.word_match.gain == 0  # silent at the start, as a warm start needs
    with torch.no_grad():
        D.word_match.gain.fill_(1.0)
    images = torch.randn(B, 3, 32, 32)
    text = fake_text(B)
    present = torch.tensor([True, True, True, False])
    cond = D.condition(inputs(shapes_schema, text, present))
    features, _, match = D.features(images, cond)
    assert match.shape == (B,) and torch.isfinite(match).all()
    assert match[3] == 0  # no prompt, no words to match: the logit is the projection head's alone
    torch.testing.assert_close(D(images, inputs(shapes_schema, text, present)).scores(), D.logits(features, cond, match))
    # the regions know where they are: the same image mirrored scores otherwise
    mirrored = D.features(images.flip(-1), cond)[2]
    assert not torch.allclose(match[:3], mirrored[:3], atol=1e-4)
    D(images, inputs(shapes_schema, text, present)).scores().sum().backward()
    assert D.word_match.region_position.grad.abs().sum() > 0
    assert D.conditioner.text_blocks[0].attn.to_out.weight.grad.abs().sum() > 0


def test_missing_attribute_is_its_null_token(shapes_schema):
    embedder = AttributeEmbedder(schema=shapes_schema, dim=8)
    index, value, present = shapes_schema.encode([{}, {"style": "flat"}])
    tokens = embedder(index, value, present)
    expected = embedder.null_token + embedder.attr_identity
    assert torch.allclose(tokens[0], expected)
    assert not torch.allclose(tokens[1, 0], expected[0])
    assert torch.allclose(tokens[1, 1:], expected[1:])


def test_schema_errors_name_the_valid_values(shapes_schema):
    with pytest.raises(InvalidAttributeError, match="unknown attribute 'stlye' \\(did you mean 'style'\\?\\)"):
        shapes_schema.validate({"stlye": "flat"})
    with pytest.raises(InvalidAttributeError, match="expected one of flat, outline, shaded"):
        shapes_schema.validate({"style": "wavy"})
    with pytest.raises(InvalidAttributeError, match=r"outside its range \[0, 1\]"):
        shapes_schema.validate({"size": 1.5})
    assert shapes_schema.validate({"size": "0.5", "style": None}) == {"size": 0.5}
    assert AttributeSchema.from_dict(shapes_schema.to_dict()) == shapes_schema


def test_mismatched_prompts_never_match_even_with_duplicates():
    captions = ["a red circle", "a red circle", "a red circle", "a blue square", "a red circle", "a blue square"]
    for seed in range(20):
        index, valid = mismatched_prompt_index(captions, torch.Generator().manual_seed(seed))
        assert valid.all()
        assert all(captions[int(j)] != captions[i] for i, j in enumerate(index))
    index, valid = mismatched_prompt_index(["same"] * 4)
    assert not valid.any()  # no possible negative: left out rather than paired with itself


def test_mismatched_attributes_always_differ(shapes_schema):
    embedder = AttributeEmbedder(schema=shapes_schema, dim=4)
    index, value, present = shapes_schema.encode([{"style": "flat", "size": 0.1}, {"size": 0.9}, {},
                                                  {"background": "dark"}] * 8)
    new_index, new_value, valid = mismatched_attributes(index, value, present, embedder.num_values,
                                                        torch.Generator().manual_seed(0))
    assert valid.tolist() == [True, True, False, True] * 8
    for i in range(len(valid)):
        if valid[i]:
            changed = (new_index[i] != index[i]) | ((new_value[i] - value[i]).abs() >= 0.25 - 1e-6)
            assert (changed & present[i]).any()


def test_truncation_zero_gives_the_condition_average(shapes_schema):
    torch.manual_seed(0)
    G = Generator(schema=shapes_schema, **tiny_model_kwargs()).eval()
    text = fake_text(1).index([0, 0])
    present = torch.ones(2, dtype=torch.bool)
    attrs = shapes_schema.encode([{"style": "flat"}, {"style": "flat"}])
    z = torch.randn(2, 16)
    with torch.no_grad():
        free = G(z, ConditionInput(text, present, *attrs))
        truncated = G(z, ConditionInput(text, present, *attrs), truncation=0.0)
    assert not torch.allclose(free[0], free[1])
    assert torch.allclose(truncated[0], truncated[1], atol=1e-5)  # z no longer matters, the condition does


def test_tanh_output_stays_inside_the_image_range(shapes_schema):
    torch.manual_seed(0)
    G = Generator(schema=shapes_schema, output="tanh", **tiny_model_kwargs())
    with torch.no_grad():
        for block in G.blocks:  # a large output layer: linear images would leave [-1, 1] by far
            block.to_rgb.weight.mul_(100)
        cond = inputs(shapes_schema, fake_text(B), torch.ones(B, dtype=torch.bool))
        images = G(torch.randn(B, 16), cond)
        linear = G.synthesize(torch.zeros(B, 32), G.condition(cond))[0]
        G.output = "linear"
        unbounded = G.synthesize(torch.zeros(B, 32), G.condition(cond))[0]
    assert images.abs().max() <= 1 and linear.abs().max() <= 1 < unbounded.abs().max()
    with pytest.raises(ValueError, match="output"):
        Generator(schema=shapes_schema, output="sigmoid", **tiny_model_kwargs())


def test_channel_min_widens_top_blocks_and_init_from_keeps_the_images(shapes_schema):
    from cgan.train.warm_start import transfer

    torch.manual_seed(0)
    narrow = Generator(schema=shapes_schema, **tiny_model_kwargs())  # 16 px: 16 channels, 32 px: 8
    wide = Generator(schema=shapes_schema, **tiny_model_kwargs(channel_min=24))  # 16 and 32 px: 24
    assert [b.conv1.weight.shape[0] for b in wide.blocks] == [32, 32, 24, 24]
    left = transfer(wide, narrow.state_dict())
    assert "blocks.3.conv1.weight" in left and "blocks.0.conv1.weight" not in left  # widened, not whole
    cond = inputs(shapes_schema, fake_text(B), torch.ones(B, dtype=torch.bool))
    z = torch.randn(B, 16)
    with torch.no_grad():
        torch.testing.assert_close(wide(z, cond), narrow(z, cond), atol=1e-5, rtol=1e-4)
    # the new channels are live: trained, they change the image
    wide.blocks[3].to_rgb.weight.data[:, 8:] = 1.0
    with torch.no_grad():
        assert (wide(z, cond) - narrow(z, cond)).abs().max() > 1e-2


def test_d_channel_min_widens_first_blocks_and_init_from_keeps_the_logits(shapes_schema):
    from cgan.train.warm_start import transfer

    kwargs = tiny_d_kwargs()
    torch.manual_seed(0)
    narrow = Discriminator(schema=shapes_schema, **kwargs)  # 32 px: 8 channels, 16 px: 16
    wide = Discriminator(schema=shapes_schema, channel_min=24, **kwargs)
    assert [wide.from_rgb.weight.shape[0]] + [b.conv1.weight.shape[0] for b in wide.blocks] == [24, 24, 32, 32]
    assert [narrow.from_rgb.weight.shape[0]] + [b.conv1.weight.shape[0] for b in narrow.blocks] == [8, 16, 32, 32]
    left = transfer(wide, narrow.state_dict())
    assert "from_rgb.weight" in left and "blocks.0.conv1.weight" in left  # widened, not whole
    images, cond = torch.randn(B, 3, 32, 32), inputs(shapes_schema, fake_text(B), torch.ones(B, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(wide(images, cond).scores(), narrow(images, cond).scores(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("extra", [{"attn_resolutions": (16, 8)}, {"word_match": True}, {"attn_resolutions": ()},
                                   {"mbstd_group": 2, "contrastive_dim": 8}])
def test_discriminator_shared_images_score_as_if_repeated(shapes_schema, extra):
    """The matching-aware pairs reuse the batch's images: through image_index, the blocks before the
    condition enters run once per image; scores, unconditioned features and gradients must be those of
    the repeated images, and bitwise the same from run to run."""
    torch.manual_seed(0)
    kwargs = tiny_d_kwargs(resolution=32)
    D = Discriminator(schema=shapes_schema, **{**kwargs, **extra})
    if D.word_match is not None:
        with torch.no_grad():
            D.word_match.gain.fill_(1.0)
    images = torch.randn(3, 3, 32, 32, requires_grad=True)
    index = torch.tensor([0, 1, 2, 0, 0, 1])
    cond = inputs(shapes_schema, fake_text(6), torch.tensor([True, True, False, True, True, True]))
    shared = D(images, cond, image_index=index)
    repeated = D(images[index], cond)
    torch.testing.assert_close(shared.scores(), repeated.scores(), atol=1e-5, rtol=1e-4)
    if repeated.plain is not None:
        torch.testing.assert_close(shared.plain, repeated.plain, atol=1e-5, rtol=1e-4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        grad_shared, = torch.autograd.grad(shared.scores().sum(), images)
    grad_repeated, = torch.autograd.grad(repeated.scores().sum(), images)
    torch.testing.assert_close(grad_shared, grad_repeated, atol=1e-5, rtol=1e-4)
    # an image's rows are summed in a fixed order (index_add_), not by advanced indexing's atomic adds,
    # whose order follows thread timing: on a busy machine a resume then drifted from the straight run
    ops = {event.name for event in profile.events()}
    assert "aten::index_add_" in ops and "aten::_index_put_impl_" not in ops
