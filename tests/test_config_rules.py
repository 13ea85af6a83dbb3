"""The declared value rules, tested from the declarations themselves (a new field with a rule is covered
without new test code): out-of-range values exit 2 with one line naming the key, never a traceback;
boundary values load; the lower boundaries of every field together run a 1-step train and a sample."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soar_fast import cli
from soar_fast.config import Config
from soar_fast.config_io import (
    ConfigError,
    _fields,
    _optional_inner,
    _sections,
    _toml_value,
    check_values,
    load_config,
)
from soar_fast.config_rules import CROSS_RULES, Range, rule_of


@dataclasses.dataclass(frozen=True)
class Ruled:
    key: str
    kind: type
    """int or float: the number type of the value (of each element for a tuple)."""
    arity: int
    """1, or the length of a tuple field."""
    rule: typing.Any


def _ruled_fields() -> list[Ruled]:
    out = []
    for sname, cls in _sections().items():
        types = _fields(cls)
        for f in dataclasses.fields(cls):
            rule = rule_of(f)
            if rule is None:
                continue
            tp = _optional_inner(types[f.name]) or types[f.name]
            args = typing.get_args(tp)
            kind, arity = (args[0], len(args)) if typing.get_origin(tp) is tuple else (tp, 1)
            out.append(Ruled(f"{sname}.{f.name}", kind, arity, rule))
    return out


RULED = _ruled_fields()


def _override(field: Ruled, value, cfg: Config) -> str:
    if isinstance(value, str):  # a choice such as lora.init: the word itself, unquoted
        return f"--{field.key}={value}"
    if field.arity == 1:
        return f"--{field.key}={value!r}"
    section, name = field.key.split(".")
    elems = list(getattr(getattr(cfg, section), name))
    elems[0] = value  # one element out of range, the others at their (valid) defaults
    return f"--{field.key}=" + ",".join(repr(v) for v in elems)


def _numbers(kind: type, lo: float | None, hi: float | None) -> st.SearchStrategy:
    if kind is int:
        return st.integers(min_value=None if lo is None else math.ceil(lo),
                           max_value=None if hi is None else math.floor(hi))
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


def _outside(field: Ruled, cfg: Config) -> st.SearchStrategy:
    _, invalid = field.rule.edges(cfg, field.kind)
    options = [st.sampled_from(invalid)] if invalid else []
    r = field.rule
    if isinstance(r, Range):
        step = 1 if field.kind is int else 0
        if r.lo is not None:
            top = r.lo - step if field.kind is int or not r.lo_open else r.lo
            options.append(_numbers(field.kind, None, top).filter(lambda v: not r.ok(v)))
        if r.hi is not None:
            bottom = r.hi + step if field.kind is int or not r.hi_open else r.hi
            options.append(_numbers(field.kind, bottom, None).filter(lambda v: not r.ok(v)))
    return st.one_of(options)


def _inside(field: Ruled, cfg: Config) -> st.SearchStrategy:
    valid, _ = field.rule.edges(cfg, field.kind)
    options = [st.sampled_from(valid)] if valid else []
    r = field.rule
    if isinstance(r, Range):
        options.append(_numbers(field.kind, r.lo, r.hi).filter(r.ok))
    return st.one_of(options)


def _cli_errors(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)  # an unexpected exception propagates: the test fails with its traceback
    return code, err.getvalue().strip().splitlines()


def test_every_number_field_declares_a_rule():
    """Counts, sizes, rates and scales all have limits: a new numeric field must say which."""
    ruled = {f.key for f in RULED}
    for sname, cls in _sections().items():
        for name, tp in _fields(cls).items():
            tp = _optional_inner(tp) or tp
            numeric = tp in (int, float) or (typing.get_origin(tp) is tuple and typing.get_args(tp)[0] in (int, float))
            if numeric:
                assert f"{sname}.{name}" in ruled, f"{sname}.{name} declares no value rule (config_rules.ruled)"


def test_defaults_obey_every_rule():
    check_values(Config())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_out_of_range_values_exit_2_with_one_line_naming_the_key(data):
    cfg = Config()
    field = data.draw(st.sampled_from(RULED), label="field")
    value = data.draw(_outside(field, cfg), label="value")
    code, lines = _cli_errors(["train", "--print-config", _override(field, value, cfg)])
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(f"soar-fast: error: {field.key} = "), lines
    assert "must be" in lines[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_in_range_and_boundary_values_load(data):
    cfg = Config()
    field = data.draw(st.sampled_from(RULED), label="field")
    value = data.draw(_inside(field, cfg), label="value")
    try:
        loaded = load_config(None, [_override(field, value, cfg)])
    except ConfigError as e:
        # Another field's rule may read this one (data.demo_size reads data.batch_size): that field is named.
        assert not any(line.startswith(f"{field.key} = ") for line in str(e).splitlines()), str(e)
        return
    section, name = field.key.split(".")
    got = getattr(getattr(loaded, section), name)
    assert (got[0] if field.arity > 1 else got) == (value if isinstance(value, str) else pytest.approx(value))


def test_cross_field_rules_name_their_key():
    for rule in CROSS_RULES:
        section, name = rule.key.split(".")
        assert name in _fields(_sections()[section]), rule.key
    code, lines = _cli_errors(["train", "--print-config", "--accel.fuse_main_into_aux=true"])
    expected = f"soar-fast: error: accel.fuse_main_into_aux = true: must be {CROSS_RULES[0].allowed}"
    assert code == 2 and lines == [expected]


def test_every_violation_is_its_own_line():
    code, lines = _cli_errors(["train", "--print-config", "--train.max_steps=0", "--optim.lr=0"])
    assert code == 2 and [line.split(" = ")[0] for line in lines] == ["soar-fast: error: optim.lr",
                                                                       "soar-fast: error: train.max_steps"]


def _lower_boundaries() -> list[str]:
    """Every ruled field at its lowest valid value, set in field order (a rule may read earlier fields)."""
    overrides: list[str] = []
    for field in RULED:
        cfg = load_config(None, overrides)
        valid, _ = field.rule.edges(cfg, field.kind)
        if valid:
            overrides.append(_override(field, min(valid), cfg))
    return overrides


def test_lowest_boundaries_run_a_step_and_a_sample(tmp_path):
    """The loader's verdict holds: values it accepts at the lower edge of every rule really run."""
    edges = _lower_boundaries()
    cfg = load_config(None, edges)
    assert cfg.train.max_steps == 1 and cfg.soar.trajectory_length == 1 and cfg.model.resolution == 4  # toy VAE x patch
    quiet = ["--log.progress=false", "--log.tensorboard=false", "--log.plot=false", "--run.device=cpu",
             "--run.cpu_threads=1"]
    code, lines = _cli_errors(["train", *edges, *quiet, f"--run.output_dir={tmp_path / 'train'}"])
    assert code == 0, lines
    assert (tmp_path / "train" / "transformer").is_dir()
    code, lines = _cli_errors(["sample", *edges, *quiet, "--eval.prompt_list=a red circle",
                               f"--run.output_dir={tmp_path / 'sample'}"])
    assert code == 0, lines
    assert (tmp_path / "sample" / "index.jsonl").is_file()


def test_saved_config_is_what_ran(tmp_path):
    """Boundary values are written back unchanged (nothing rounded on the way)."""
    cfg = load_config(None, _lower_boundaries())
    path = tmp_path / "c.toml"
    from soar_fast.config_io import save_config

    save_config(cfg, str(path))
    assert load_config(str(path)) == cfg
    assert f"resolution = {_toml_value(cfg.model.resolution)}" in path.read_text()
