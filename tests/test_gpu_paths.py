"""What runs differently on a GPU, checked without one: the launcher's mixed precision, one fp16 grad
scaler per phase, attention maps on another device than the CPU, the GPU math switches."""
import types

import pytest
import torch

from cgan.nets.attention_maps import _heat, token_attention
from cgan.core.config import ConfigError, load_config
from cgan.train.precision import fast_gpu_math, phase_scalers, resolve_mixed_precision, use_scaler
from conftest import TINY


@pytest.mark.parametrize("configured, launcher, expected", [
    ("no", "bf16", "bf16"), ("no", "fp16", "fp16"), ("bf16", "no", "bf16"), ("bf16", "bf16", "bf16"),
    ("no", None, "no"), ("fp16", None, "fp16")])
def test_the_launchers_low_precision_wins_over_the_configs_no(configured, launcher, expected):
    config = load_config(TINY, [f"train.mixed_precision={configured}"] if configured != "no" else [])
    note = resolve_mixed_precision(config, {} if launcher is None else {"ACCELERATE_MIXED_PRECISION": launcher})
    assert config.train.mixed_precision == expected
    assert (note is not None) == (configured == "no" and expected != "no")
    if note:
        assert "accelerate launch --mixed_precision" in note


def test_two_different_low_precisions_are_refused_by_name():
    config = load_config(TINY, ["train.mixed_precision=bf16"])
    with pytest.raises(ConfigError, match=r"train.mixed_precision=bf16, but accelerate launch asks for "
                                          r"--mixed_precision fp16"):
        resolve_mixed_precision(config, {"ACCELERATE_MIXED_PRECISION": "fp16"})
    with pytest.raises(ConfigError, match="--mixed_precision fp8"):
        resolve_mixed_precision(load_config(TINY), {"ACCELERATE_MIXED_PRECISION": "fp8"})


def test_each_phase_gets_its_own_scaler_and_an_overflow_in_one_leaves_the_others():
    shared = torch.amp.GradScaler("cpu", init_scale=1024.0)
    accelerator = types.SimpleNamespace(scaler=shared)
    scalers = phase_scalers(accelerator, ("d_step", "r1_step", "g_step"))
    assert len({id(s) for s in scalers.values()} | {id(shared)}) == 4
    assert phase_scalers(types.SimpleNamespace(scaler=None), ("d_step",)) == {}
    optimizer = types.SimpleNamespace(scaler=shared)
    use_scaler(accelerator, optimizer, scalers["d_step"])
    assert accelerator.scaler is optimizer.scaler is scalers["d_step"]
    # D overflows: only D's scale backs off
    weight = torch.nn.Parameter(torch.ones(2))
    inner = torch.optim.SGD([weight], lr=0.1)
    scalers["d_step"].scale(weight.sum() * float("inf")).backward()
    scalers["d_step"].step(inner)
    scalers["d_step"].update()
    assert scalers["d_step"].get_scale() == 512.0 and scalers["g_step"].get_scale() == 1024.0
    assert torch.equal(weight.detach(), torch.ones(2))  # the overflowing step was skipped


def test_attention_maps_stay_on_the_device_of_the_attention():
    values = torch.rand(4, 4, device="meta")  # any device but the CPU: CPU-made indices or lookups fail on it
    assert _heat(values).device.type == "meta" and _heat(values).shape == (3, 4, 4)
    weights = {8: torch.rand(1, 2, 64, 4 + 1 + 3 + 1, device="meta")}  # (B, heads, r*r, Q + 1 + T + A)
    maps = token_attention(weights, torch.rand(1, 2, 4, 1 + 3 + 1, device="meta"), 0, num_queries=4,
                           text_labels=["[CLS]", "red", "[SEP]"], text_keep=[False, True, False],
                           attr_labels=["style=flat"], attr_keep=[True], resolution=32)
    assert maps.labels == ["red", "style=flat"] and maps.maps.device.type == "meta"
    assert maps.fusion is not None and maps.fusion.device.type == "meta"


def test_gpu_math_switches_are_left_alone_on_the_cpu():
    before = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
    assert fast_gpu_math(torch.device("cpu")) is False
    assert (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32) == before


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_diff_augment_keeps_channels_last_and_its_values(policy):
    from cgan.train.augment import diff_augment, parse_policy

    images = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    plain = diff_augment(images, parse_policy(policy))
    torch.manual_seed(0)
    nhwc = diff_augment(images.contiguous(memory_format=torch.channels_last), parse_policy(policy))
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and plain.is_contiguous()
    if "color" in policy:  # its means over channels add in another order in NHWC: equal to rounding
        torch.testing.assert_close(plain, nhwc, rtol=0, atol=1e-6)
    else:
        assert torch.equal(plain, nhwc)
