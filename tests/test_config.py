from pathlib import Path

import pytest

from cgan.core.config import Config, ConfigError, load_config
from conftest import ROOT


def test_shipped_configs_load():
    for path in (ROOT / "configs").glob("*.yaml"):  # configs for a folder get theirs on the command line
        config = load_config(path, ["data.path=folder"] if "name: folder" in path.read_text() else [])
        assert config.data.resolution in (32, 64, 128, 256), path


def test_overrides_apply_and_parse_numbers():
    config = load_config(ROOT / "configs" / "tiny.yaml", ["train.lr_g=2e-4", "model.generator.attn_resolutions=[8,16]",
                                                          "data.resolution=32"])
    assert config.train.lr_g == pytest.approx(2e-4)
    assert config.model.generator.attn_resolutions == [8, 16]


def test_flat_model_keys_of_earlier_configs_are_translated(tmp_path):
    """Configs, runs and exported models from before the nested model section still load."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("model:\n  cond_dim: 32\n  attn_heads: 2\n  g_channel_max: 48\n  d_pool_first: true\n"
                    "  discriminator: projected\n  g_output: tanh\n")
    config = load_config(flat, ["model.d_channel_max=24", "model.generator.z_dim=16"])
    m = config.model
    assert (m.conditioner.cond_dim, m.generator.attn_heads, m.discriminator.attn_heads) == (32, 2, 2)
    assert (m.generator.channel_max, m.generator.output, m.generator.z_dim) == (48, "tanh", 16)
    assert (m.discriminator.type, m.discriminator.pool_first, m.discriminator.channel_max) == ("projected", True, 24)
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.g_channel_maximum'"):
        load_config(None, ["model.g_channel_maximum=3"])


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lr'; did you mean 'train\.lr_g'"):
        load_config(None, ["train.lr=0.1"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'train\.batchsize'; did you mean 'train\.batch_size'"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("data.resolution=48", "data.resolution: expected one of 32, 64, 128, 256"),
    ("train.batch_size=abc", "train.batch_size expected int"),
    ("model.conditioner.fusion=film", "model.conditioner.fusion: expected one of cross_attention, concat"),
    ("model.fusion=film", "model.conditioner.fusion: expected one of"),  # an earlier config's flat key
    ("train.drop_prompt=1.5", "train.drop_prompt: expected a probability"),
    ("model.generator.attn_resolutions=[128]", "model.generator.attn_resolutions: 128 is not a power of two"),
    ("model.conditioner.text_positions=true text.max_length=300", "text_positions: learns one embedding per token"),
    ("model.conditioner.text_positions=true model.conditioner.fusion=concat", "text_positions: positions are read"),
    ("model.conditioner.text_layers=2 model.conditioner.fusion=concat", "text_layers: the text blocks feed the"),
    ("model.conditioner.text_layers=-1", "model.conditioner.text_layers: expected a number >= 0, got -1"),
    ("model.discriminator.word_match=true model.conditioner.fusion=concat",
     "model.discriminator.word_match: the residual discriminator of the cross"),
    ("model.discriminator.top_full_res=true", "model.discriminator.top_full_res: .*pool_first, which is off"),
    ("data.path=my_folder", "data.path=my_folder: given, but data.name is 'shapes'.*set data.name=folder"),
    ("data.hflip=true", "data.hflip: true is refused: cgan never flips images.*'left of'"),
    ("train.mixed_precision=none", "train.mixed_precision: expected one of no, bf16, fp16, got 'none'"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override.split())


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_caches_default_to_the_user_cache_folder(monkeypatch, tmp_path):
    from cgan.core.config import DataConfig, data_cache_dir, user_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_cache_dir(DataConfig()) == user_cache_dir() == tmp_path / "xdg" / "cgan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == Path.home() / ".cache" / "cgan"
    assert data_cache_dir(DataConfig(cache_dir="runs/c")) == Path("runs/c")


@pytest.mark.parametrize("override, key", [("model.generator.mapping_lr_mul=0", "model.generator.mapping_lr_mul"),
                                           ("model.discriminator.type=big", "model.discriminator.type"),
                                           ("model.generator.output=relu", "model.generator.output"),
                                           ("loss.hard_negative=-0.5", "loss.hard_negative"),
                                           ("loss.g_hard_negative=-1", "loss.g_hard_negative")])
def test_recipe_switches_are_checked(override, key):
    from cgan.train.build import check_run_settings

    with pytest.raises(ConfigError, match=key):  # the D type is checked against the registry of D types
        check_run_settings(load_config(ROOT / "configs" / "tiny.yaml", [override]))


@pytest.mark.parametrize("override, message", [
    ("train.betas=[0.5]", "train.betas: expected two numbers in [0, 1)"),
    ("model.generator.attn_resolutions=[x]", "model.generator.attn_resolutions[0] expected int, got 'x'"),
    ("train.lr_g=-1", "train.lr_g: expected a number > 0, got -1.0"),
    ("train.r1_gamma=-1", "train.r1_gamma: expected a number >= 0"),
    ("train.ema_kimg=-5", "train.ema_kimg: expected a number >= 0"),
    ("train.lr_d=.nan", "train.lr_d: expected a number > 0, got nan"),
    ("sample.truncation=0", "sample.truncation: expected a number in (0, 1]"),
    ("data.num_workers=-1", "data.num_workers: expected a number >= 0"),
])
def test_every_numeric_setting_has_its_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "tiny.yaml", [override])
    assert message in str(err.value)



def test_print_config_lists_every_setting_with_help(capsys):
    from cgan.cli import train_main
    from cgan.core.config import _all_keys

    assert train_main(["--print-config", "train.lr_g=1e-3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[")]
    every = _all_keys(Config)
    keys = [k for k in every if "." in k and not any(other.startswith(k + ".") for other in every)]  # no sections
    assert [line.split(" = ")[0] for line in lines] == keys
    assert all("  # " in line for line in lines)  # every setting has its line of help
    assert "train.lr_g = 0.001  # generator learning rate (Adam)" in lines


def test_yaml_1_1_words_keep_their_meaning(tmp_path):
    # "no" is the documented value of train.mixed_precision; YAML 1.1 would read it as False
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n  channels_last: off\n  compile: yes\n")
    config = load_config(path)
    assert (config.train.mixed_precision, config.train.channels_last, config.train.compile) == ("no", False, True)
    assert load_config(None, ["train.export_d=true"]).train.export_d is True
