"""Config loading: precedence, value rules, error messages that name the key or file:line, round trip."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from soar_fast.config import Config
from soar_fast.config_io import ConfigError, dump_config, load_config, save_config, split_overrides

CONTRACT_KEYS = ("run.output_dir", "train.max_steps", "train.seed", "train.log_every", "checkpoint.every",
                 "soar.trajectory_length", "soar.num_rollout_paths", "data.batch_size", "model.preset", "model.path")


def write(tmp_path, text: str):
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return str(path)


def test_contract_keys_exist():
    cfg = Config()
    for key in CONTRACT_KEYS:
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key


def test_every_field_has_a_docstring():
    from soar_fast.config_io import _field_docs

    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        docs = _field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, f"[{section.name}] fields without a docstring: {missing}"


def test_precedence_cli_over_file_over_defaults(tmp_path):
    path = write(tmp_path, '[train]\nmax_steps = 7\nseed = 3\n[run]\noutput_dir = "out/x"\n')
    cfg = load_config(path, ["--train.max_steps=9"])
    assert cfg.train.max_steps == 9            # CLI beats the file
    assert cfg.train.seed == 3                 # file beats the default
    assert cfg.run.output_dir == "out/x"
    assert cfg.train.log_every == Config().train.log_every   # default


def test_value_rules():
    cfg = load_config(None, ["--optim.lr=1e-4", "--optim.betas=0.8,0.95", "--eval.scorers=clipscore,pickscore",
                             "--eval.weights.clipscore=/m/clip", "--model.path=/m/sd35", "--model.path=none",
                             "--log.plot=false", "--log.tensorboard", "--checkpoint.total_limit=3",
                             "--soar.sigma_upper_ratio=1.5", "--optim.max_grad_norm=2"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.95)
    assert cfg.eval.scorers == ["clipscore", "pickscore"] and cfg.eval.weights == {"clipscore": "/m/clip"}
    assert cfg.model.path is None and cfg.log.plot is False and cfg.log.tensorboard is True
    assert cfg.checkpoint.total_limit == 3 and cfg.soar.sigma_upper_ratio == 1.5
    assert cfg.optim.max_grad_norm == 2.0 and isinstance(cfg.optim.max_grad_norm, float)


def test_space_separated_override_and_config_positional():
    rest, overrides = split_overrides(["cfg.toml", "--train.max_steps", "20", "--log.plot", "--resume"])
    assert rest == ["cfg.toml", "--resume"]
    assert overrides == ["--train.max_steps=20", "--log.plot"]


@pytest.mark.parametrize("override, needle", [
    ("--train.max_stpes=3", "'train.max_steps'"),
    ("--trian.max_steps=3", "'train.max_steps'"),
    ("--soar.rollout_kind=flowsde", "'flow_sde'"),
])
def test_typo_names_key_and_closest(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert "did you mean" in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("override, needle", [
    ("--train.max_steps=abc", "train.max_steps: expected int"),
    ("--optim.betas=0.9", "optim.betas"),
    ("--log.plot=maybe", "log.plot: expected bool"),
    ("--train.seed", "train.seed: needs a value"),
])
def test_wrong_type_names_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_file_errors_name_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg\.toml: train\.max_steps: expected int, got str"):
        load_config(write(tmp_path, '[train]\nmax_steps = "20"\n'))
    with pytest.raises(ConfigError, match=r"cfg\.toml: unknown key 'train\.max_step' \(did you mean 'train\.max_steps'"):
        load_config(write(tmp_path, "[train]\nmax_step = 20\n"))
    with pytest.raises(ConfigError, match=r"unknown section 'trian' \(did you mean 'train'"):
        load_config(write(tmp_path, "[trian]\nmax_steps = 20\n"))
    with pytest.raises(ConfigError, match="train.seed: expected int, got bool"):
        load_config(write(tmp_path, "[train]\nseed = true\n"))


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "[train]\nmax_steps = 20\nseed = = 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert f"{path}:3:" in str(e.value) and "TOML syntax error" in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"))


def test_round_trip_every_field(tmp_path):
    cfg = load_config(None, ["--eval.weights.clipscore=/m/c \"q\"", "--eval.scorers=a,b", "--model.path=/x",
                             "--checkpoint.total_limit=2", "--optim.lr=3e-05"])
    path = str(tmp_path / "saved.toml")
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert load_config(None, []) == Config()
    text = dump_config(Config())
    assert "[run]" in text and 'path = "none"' in text and "# Optimizer steps to train" in text
