"""The frozen text encoder: offline MiniLM and a tiny random CLIP, frozen, cached, truncating."""
import warnings

import pytest
import torch

from cgan.nets.generator import Generator
from cgan.condition.text_encoder import FrozenTextEncoder, TextEmbeddingCache
from conftest import tiny_model_kwargs


def test_minilm_outputs(minilm):
    enc = minilm(["a red circle", "a blue square left of a green triangle"])
    assert enc.text_tokens.shape == (2, 16, 384)
    assert enc.text_mask.shape == (2, 16) and enc.text_mask.dtype == torch.bool
    assert enc.text_mask[0].sum() < enc.text_mask[1].sum()
    assert enc.text_pooled.shape == (2, 384)
    again = minilm(["a red circle"])
    assert torch.allclose(again.text_tokens[0], enc.text_tokens[0], atol=1e-5)  # eval: deterministic


def test_encoder_is_frozen_and_outside_the_models(minilm, shapes_schema):
    assert all(not p.requires_grad for p in minilm.parameters())
    G = Generator(schema=shapes_schema, **tiny_model_kwargs())
    encoder_params = {id(p) for p in minilm.parameters()}
    assert not encoder_params & {id(p) for p in G.parameters()}
    assert not any("embeddings.word_embeddings" in k for k in G.state_dict())
    text = minilm(["a red circle"])
    assert not text.text_tokens.requires_grad
    minilm.train()
    assert not minilm.model.training  # stays in eval mode


def test_long_prompts_are_truncated_with_a_warning(minilm):
    with pytest.warns(UserWarning, match="longer than the text encoder's limit of 16 tokens were truncated"):
        enc = minilm(["a red circle " * 20])
    assert enc.text_tokens.shape[1] == 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm(["a red circle"])


def test_words_the_encoder_cannot_represent_are_named(minilm):
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) hold words the text encoder cannot represent .*"
                                         r"'🐱' in 'a 🐱 on a mat'"):
        minilm(["a 🐱 on a mat", "a red circle"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm(["a red circle left of a blue square"])


def test_cache_encodes_each_caption_once_and_persists(minilm, tmp_path):
    cache = TextEmbeddingCache(minilm, tmp_path)
    cache.precompute(["a", "b", "a"])
    assert cache.num_encoded == 2
    out = cache(["a", "b", "a", "c"])
    assert cache.num_encoded == 3 and out.text_tokens.shape == (4, 16, 384)
    fresh = TextEmbeddingCache(minilm, tmp_path)
    fresh.precompute(["b", "a"])
    assert fresh.num_encoded == 0  # read from disk
    assert torch.equal(fresh(["a"]).text_tokens, cache(["a"]).text_tokens)


def test_tiny_clip_text_tower_from_a_folder(tmp_path, minilm):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=102),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=16))
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    minilm.tokenizer.save_pretrained(tmp_path / "clip")  # any tokenizer with the vocabulary will do offline
    clip = FrozenTextEncoder(str(tmp_path / "clip"), max_length=16)
    assert type(clip.model).__name__ == "CLIPTextModel" and clip.is_clip and clip.dim == 32
    enc = clip(["a red circle", "a blue square"])
    assert enc.text_tokens.shape == (2, 16, 32) and enc.text_pooled.shape == (2, 32)
    assert all(not p.requires_grad for p in clip.parameters())


def test_a_bounded_cache_keeps_the_most_recent_prompts(minilm):
    cache = TextEmbeddingCache(minilm, max_entries=3)
    first = cache(["a red circle"]).text_pooled
    for k in range(5):
        cache([f"prompt {k}"])
    assert len(cache.memory) == 3 and "a red circle" not in cache.memory
    cache(["prompt 2"])  # a hit moves it to the end; the oldest goes next
    cache(["a red circle"])
    assert list(cache.memory) == ["prompt 4", "prompt 2", "a red circle"]
    torch.testing.assert_close(cache(["a red circle"]).text_pooled, first)  # re-encoded, same embedding
    assert len(cache(["a", "b", "c", "d"]).text_pooled) == 4  # a batch larger than the bound still works
