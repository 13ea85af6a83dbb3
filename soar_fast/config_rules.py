"""Value rules of config fields, declared beside each field in config.py and checked at load.

A field opts in with `ruled(default, RULE)` (a dataclass field whose metadata holds the rule).
`config_io.load_config` runs every rule once the file and the overrides are applied, before any
command touches a model, data or an encoder, and reports every violation as one line
`<key>: <value> is not allowed (<what is>)`. A rule may read other fields (the whole config is
passed), so "a multiple of the model's patch × VAE factor" is declared on `model.resolution` itself;
rules that concern several fields at once without one being at fault live in `CROSS_RULES`.

Each rule also lists boundary values, `edges(cfg) -> (valid, invalid)`, from which the property test
(tests/test_config_rules.py) draws, so a new field is covered by declaring its rule. Nothing here
imports torch: a bad value fails in milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RULE = "rule"  # the metadata key of a field's rule


def ruled(default: Any = dataclasses.MISSING, rule: Any = None, *,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying `rule` (see the module docstring)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={RULE: rule})


def rule_of(f: dataclasses.Field) -> Any:
    return f.metadata.get(RULE)


@dataclass(frozen=True)
class Range:
    """A number in [lo, hi] (either end open, either end absent); floats must be finite. Applied to
    each element of a tuple field; None (an unset Optional) is always allowed."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def allowed(self, cfg: Any = None) -> str:
        lo = None if self.lo is None else (">" if self.lo_open else ">=") + f" {_num(self.lo)}"
        hi = None if self.hi is None else ("<" if self.hi_open else "<=") + f" {_num(self.hi)}"
        return " and ".join(p for p in (lo, hi) if p) or "a finite number"

    def ok(self, value: Any) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def check(self, value: Any, cfg: Any) -> str | None:
        values = value if isinstance(value, (tuple, list)) else (value,)
        return None if all(v is None or self.ok(v) for v in values) else self.allowed()

    def edges(self, cfg: Any, kind: type) -> tuple[list, list]:
        step = 1 if kind is int else 1e-3
        valid, invalid = [], []
        for end, is_open, sign in ((self.lo, self.lo_open, 1), (self.hi, self.hi_open, -1)):
            if end is None:
                continue
            valid.append(end + sign * step if is_open else end)
            invalid.append(end - sign * step)
            if is_open:
                invalid.append(end)
        if kind is float:
            invalid += [math.nan, math.inf] if self.hi is None else [math.nan]
        return [kind(v) for v in valid], invalid


def at_least(lo: float) -> Range:
    return Range(lo=lo)


def above(lo: float) -> Range:
    return Range(lo=lo, lo_open=True)


def between(lo: float, hi: float, *, hi_open: bool = False) -> Range:
    return Range(lo=lo, hi=hi, hi_open=hi_open)


FINITE = Range()


@dataclass(frozen=True)
class Check:
    """A rule that reads other fields: `test(value, cfg)` is True when allowed, `allowed(cfg)` says
    what is, `edges(cfg) -> (valid, invalid)` are its boundary values."""

    test: Callable[[Any, Any], bool]
    allowed: Callable[[Any], str]
    edges_fn: Callable[[Any], tuple[list, list]] = lambda cfg: ([], [])

    def check(self, value: Any, cfg: Any) -> str | None:
        return None if self.test(value, cfg) else self.allowed(cfg)

    def edges(self, cfg: Any, kind: type) -> tuple[list, list]:
        return self.edges_fn(cfg)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


# ----------------------------------------------------------------------------------------- image sides

def _geometry(cfg: Any) -> Any:
    from soar_fast.models.presets import model_geometry

    return model_geometry(cfg.model.preset, cfg.model.path, cfg.model.vae)


def image_side(*, widest_aspect: float = 1.0) -> Check:
    """A pixel side the model can take: a multiple of VAE factor × patch, at least one patch, and,
    stretched by `widest_aspect` (the demo set's landscape bucket), within the positional table."""
    def limits(cfg: Any) -> tuple[int, int] | None:
        g = _geometry(cfg)
        if g is None:
            return None  # no transformer config to read: model.path's own check says so
        m, top = g.size_multiple, g.max_side
        return m, max(m, int(top / widest_aspect) // m * m)

    def test(value: int | None, cfg: Any) -> bool:
        lim = None if value is None else limits(cfg)  # None: an Optional side left unset
        return lim is None or (value % lim[0] == 0 and lim[0] <= value <= lim[1])

    def allowed(cfg: Any) -> str:
        m, top = limits(cfg)  # type: ignore[misc]
        g = _geometry(cfg)
        return (f"a multiple of {m} (VAE factor {g.vae_factor} x patch {g.patch_size} of "
                f"{g.source}) from {m} to {top}")

    def edges(cfg: Any) -> tuple[list, list]:
        lim = limits(cfg)
        if lim is None:
            return [], []
        m, top = lim
        return [m, top], [0, m - 1, m + 1, top + m, -m]

    return Check(test, allowed, edges)


# ----------------------------------------------------------------------------------------- demo data

# The demo set's landscape bucket is this much wider than `model.resolution` (data/demo.py).
DEMO_WIDEST_ASPECT = 1.25


def _uses_demo(cfg: Any) -> bool:
    return cfg.data.jsonl is None and cfg.data.cache is None


def _demo_minimum(batch_size: int) -> int:
    # ¾ of the demo images are square (data/demo.py: every 4th is landscape), so that bucket holds
    # n - n // 4 = ceil(3n / 4) images; the least n with ceil(3n / 4) >= batch_size:
    return max(4 * (int(batch_size) - 1) // 3 + 1, 1)


def demo_fills_a_batch() -> Check:
    """`data.demo_size`: at least one image, and (when the demo set is used) enough for one batch."""
    def test(value: int, cfg: Any) -> bool:
        return value >= 1 and (not _uses_demo(cfg) or value >= _demo_minimum(cfg.data.batch_size))

    def allowed(cfg: Any) -> str:
        n = _demo_minimum(cfg.data.batch_size) if _uses_demo(cfg) else 1
        return f">= {n} (3/4 of the demo images form the square bucket, which must fill one " \
               f"data.batch_size = {cfg.data.batch_size} batch)" if n > 1 else ">= 1"

    def edges(cfg: Any) -> tuple[list, list]:
        n = _demo_minimum(cfg.data.batch_size) if _uses_demo(cfg) else 1
        return [n], [n - 1, 0]

    return Check(test, allowed, edges)


# ----------------------------------------------------------------------------------------- LoRA

# peft's `init_lora_weights` values that need nothing but the base weights (eva, corda, lora_ga need
# calibration data, loftq a quantization config, mica a LoRA variant diffusers cannot load).
LORA_INITS = ("true", "false", "gaussian", "orthogonal", "pissa", "pissa_niter_N", "olora")


def _lora_init_ok(value: str) -> bool:
    if value.startswith("pissa_niter_"):
        return value[len("pissa_niter_"):].isdigit()
    return value in LORA_INITS and value != "pissa_niter_N"


def lora_init() -> Check:
    """`lora.init`: one of LORA_INITS (N a count of subspace iterations); `orthogonal` needs an even rank."""
    def test(value: str, cfg: Any) -> bool:
        return _lora_init_ok(value) and not (value == "orthogonal" and int(cfg.lora.rank) % 2)

    def allowed(cfg: Any) -> str:
        if cfg.lora.init == "orthogonal" and int(cfg.lora.rank) % 2:
            return f"used with an even lora.rank (orthogonal init splits the rank in halves; rank = {cfg.lora.rank})"
        return "one of " + ", ".join(LORA_INITS) + " (N >= 0 subspace iterations)"

    return Check(test, allowed, lambda cfg: (["true", "gaussian", "pissa_niter_4"],
                                             ["eva", "loftq", "pissa_niter_x", "True"]))


# ----------------------------------------------------------------------------------------- cross-field

@dataclass(frozen=True)
class CrossRule:
    """A rule on several fields; `key` is the one named in the error, `test(cfg)` True when allowed."""

    key: str
    test: Callable[[Any], bool]
    allowed: str


CROSS_RULES: tuple[CrossRule, ...] = (
    CrossRule("accel.fuse_main_into_aux",
              lambda c: not (c.accel.mode == "fast" and c.accel.fuse_main_into_aux and c.accel.rollout_reuse_cond),
              "false while accel.rollout_reuse_cond = true (the main output is then the conditional CFG "
              "branch, needed before the aux rows exist)"),
    CrossRule("accel.fuse_main_into_aux",
              lambda c: not (c.accel.mode == "fast" and c.accel.fuse_main_into_aux and not c.accel.batched_aux),
              "false while accel.batched_aux = false (there is no single aux forward to fuse into)"),
    # Which names exist is checked against the model itself before training (`models.lora.check_targets`).
    CrossRule("lora.target_modules",
              lambda c: c.lora.rank == 0 or (len(c.lora.target_modules) > 0
                                             and all(str(v).strip() for v in c.lora.target_modules)),
              "a non-empty list of module names or presets (attention, mlp, attention+mlp) while lora.rank > 0"),
    CrossRule("eval.preview_ema", lambda c: not (c.eval.preview_ema and c.ema.decay == 0),
              "false while ema.decay = 0 (no EMA is kept to preview)"),
)
