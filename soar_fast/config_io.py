"""TOML file + `--section.key=value` overrides -> `Config`, and `Config` -> TOML.

Precedence: CLI override > TOML file > dataclass default. Every error is a `ConfigError` whose message
names the key path (with the closest valid name for a typo) or the file and line; the CLI prints it
in one line and exits 2. This module imports no torch, so a bad command line fails in milliseconds.

Value rules (file and command line):
- `Optional[...]` fields take the string "none" or "null" (any case) for None. TOML has no null, so
  the writer emits unset fields as `key = "none"` and a saved config loads back unchanged.
- On the command line a list/tuple is a comma-separated string (`--eval.scorers=clipscore,pickscore`),
  a dict entry is one more dotted level (`--eval.weights.clipscore=/models/clip`), a bool is
  true/false/1/0/yes/no/on/off, and a bare `--section.flag` means true.
- An int is accepted where a float is expected; nothing else is converted silently.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import os
import re
import sys
import types
import typing
from typing import Any, Literal, Union

from soar_fast.config import Config
from soar_fast.config_rules import CROSS_RULES, rule_of
from soar_fast.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

_NONE_WORDS = ("none", "null")
_TRUE_WORDS = ("true", "1", "yes", "on")
_FALSE_WORDS = ("false", "0", "no", "off")


class ConfigError(UserError, ValueError):
    """A config problem the user can fix; the message names the key path or file:line (one line per
    problem: `check_values` reports every bad value at once)."""

    exit_code = 2


# ----------------------------------------------------------------------------------------------- schema

def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _fields(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _optional_inner(tp: Any) -> Any | None:
    """X for Optional[X], else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{_type_name(inner)} or none"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _all_key_paths() -> list[str]:
    return [f"{s}.{k}" for s, cls in _sections().items() for k in _fields(cls)]


# ----------------------------------------------------------------------------------------------- values

def _convert(value: Any, tp: Any, key: str, *, from_cli: bool) -> Any:
    """`value` (TOML-typed, or a str when `from_cli`) as type `tp`, or ConfigError naming `key`."""
    def bad(extra: str = "") -> ConfigError:
        return ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}{extra}")

    inner = _optional_inner(tp)
    if inner is not None:
        if isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            return None
        return _convert(value, inner, key, from_cli=from_cli)

    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = _closest(str(value), [str(c) for c in choices])
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_cli and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin in (list, tuple):
        items = value
        if from_cli and isinstance(value, str):
            items = [v.strip() for v in value.split(",")] if value.strip() else []
        if not isinstance(items, (list, tuple)):
            raise bad()
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise bad(f" ({len(args)} values needed)")
            return tuple(_convert(v, a, f"{key}[{i}]", from_cli=from_cli) for i, (v, a) in
                         enumerate(zip(items, args)))
        elem = args[0] if args else Any
        out = [_convert(v, elem, f"{key}[{i}]", from_cli=from_cli) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{key}.{k}", from_cli=from_cli) for k, v in value.items()}
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported field type {tp}")  # a schema bug, not a user error


# ----------------------------------------------------------------------------------------------- loading

def read_toml(path: str) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes `ConfigError("<file>:<line>: <message>")`."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        # tomllib puts the position only in the message ("... (at line 3, column 8)") before 3.14.
        m = re.search(r"^(.*?) \(at line (\d+), column (\d+)\)$", str(e))
        if m:
            return _raise(f"{path}:{m.group(2)}:{m.group(3)}: TOML syntax error: {m.group(1)}")
        return _raise(f"{path}: TOML syntax error: {e}")
    except UnicodeDecodeError as e:
        return _raise(f"{path}: not UTF-8 text ({e.reason})")


def _raise(msg: str) -> Any:
    raise ConfigError(msg)


def _apply_table(cfg: Config, data: dict[str, Any], source: str) -> None:
    sections = _sections()
    for sname, table in data.items():
        if sname not in sections:
            raise ConfigError(f"{source}: unknown section '{sname}'{_closest(sname, list(sections))}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: '{sname}' must be a table ([{sname}])")
        fields = _fields(sections[sname])
        section = getattr(cfg, sname)
        for key, value in table.items():
            path = f"{sname}.{key}"
            if key not in fields:
                raise ConfigError(f"{source}: unknown key '{path}'{_closest(path, _all_key_paths())}")
            try:
                setattr(section, key, _convert(value, fields[key], path, from_cli=False))
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None


def parse_override(item: str) -> tuple[list[str], str | None]:
    """'--a.b.c=v' or 'a.b.c=v' -> (['a','b','c'], 'v'); no '=' -> value None (a bare flag)."""
    body = item.removeprefix("--")
    name, sep, value = body.partition("=")
    return name.split("."), (value if sep else None)


def _apply_override(cfg: Config, item: str) -> None:
    parts, value = parse_override(item)
    sections = _sections()
    dotted = ".".join(parts)
    if len(parts) < 2 or parts[0] not in sections:
        raise ConfigError(f"unknown option '--{dotted}'{_closest(dotted, _all_key_paths())}")
    sname, key = parts[0], parts[1]
    fields = _fields(sections[sname])
    if key not in fields:
        path = f"{sname}.{key}"
        raise ConfigError(f"unknown key '{path}'{_closest(path, _all_key_paths())}")
    tp = fields[key]
    section = getattr(cfg, sname)
    path = f"{sname}.{key}"
    if typing.get_origin(tp) is dict:
        if len(parts) != 3 or value is None:
            raise ConfigError(f"{path}: set one entry as --{path}.NAME=VALUE")
        _, vt = typing.get_args(tp)
        entries = dict(getattr(section, key))
        entries[parts[2]] = _convert(value, vt, f"{path}.{parts[2]}", from_cli=True)
        setattr(section, key, entries)
        return
    if len(parts) != 2:
        raise ConfigError(f"unknown key '{dotted}'{_closest(dotted, _all_key_paths())}")
    if value is None:
        if tp is not bool:
            raise ConfigError(f"{path}: needs a value (--{path}=VALUE)")
        value = "true"
    setattr(section, key, _convert(value, tp, path, from_cli=True))


def load_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the TOML file at `path` (if any), then each `--section.key=value` override;
    then every value rule (`check_values`)."""
    cfg = Config()
    if path is not None:
        _apply_table(cfg, read_toml(path), path)
    for item in overrides:
        _apply_override(cfg, item)
    check_values(cfg)
    return cfg


def load_sections(path: str, sections: tuple[str, ...]) -> Config:
    """The defaults with only the tables `sections` of the TOML file at `path` applied, and no value
    rules run: the parts of a saved run's config.toml that sampling the run reads, whatever its other
    tables say (the caller checks the config it builds from them)."""
    data = read_toml(path)
    cfg = Config()
    _apply_table(cfg, {name: table for name, table in data.items() if name in sections}, path)
    return cfg


def violations(cfg: Config) -> list[str]:
    """One line per value that breaks its field's rule (config.py) or a cross-field rule, in field order:
    `<key> = <value>: must be <what is allowed>`."""
    lines = []
    for sname in _sections():
        section = getattr(cfg, sname)
        for f in dataclasses.fields(section):
            rule = rule_of(f)
            value = getattr(section, f.name)
            allowed = rule.check(value, cfg) if rule is not None else None
            if allowed is not None:
                lines.append(f"{sname}.{f.name} = {_toml_value(value)}: must be {allowed}")
    for cross in CROSS_RULES:
        if not cross.test(cfg):
            sname, key = cross.key.split(".")
            lines.append(f"{cross.key} = {_toml_value(getattr(getattr(cfg, sname), key))}: must be {cross.allowed}")
    return lines


def check_values(cfg: Config) -> None:
    """ConfigError listing every violation (see `violations`), or nothing."""
    lines = violations(cfg)
    if lines:
        raise ConfigError("\n".join(lines))


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--section.key[=value]` items (also `--section.key VALUE`) from the other arguments.

    Done before argparse so an override value is never taken for the positional CONFIG.
    """
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].partition("=")[0]
        if arg.startswith("--") and "." in name and not name.startswith("."):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--") \
                    and not _is_bool_key(name):
                overrides.append(f"{arg}={argv[i + 1]}")
                i += 2
                continue
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _is_bool_key(dotted: str) -> bool:
    parts = dotted.split(".")
    cls = _sections().get(parts[0])
    return cls is not None and len(parts) == 2 and _fields(cls).get(parts[1]) is bool


# ----------------------------------------------------------------------------------------------- writing

def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field (the convention of config.py)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(text, text)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key)
    return key if bare else _toml_value(key)


def dump_config(cfg: Config, *, comments: bool = True) -> str:
    """The whole config as TOML text (every field, field docstrings as comments)."""
    lines: list[str] = []
    for sname in _sections():
        section = getattr(cfg, sname)
        docs = _field_docs(type(section)) if comments else {}
        if lines:
            lines.append("")
        lines.append(f"[{sname}]")
        for f in dataclasses.fields(section):
            if f.name in docs:
                lines.append(f"# {docs[f.name]}")
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"


def save_config(cfg: Config, path: str) -> None:
    """Write `cfg` as TOML to `path` (via a temporary file, so a crash never leaves half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dump_config(cfg))
    os.replace(tmp, path)
