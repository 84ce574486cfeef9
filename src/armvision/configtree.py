"""Generic config trees: nested dataclasses filled from YAML, dotted overrides and flags.

Nothing here knows a particular schema (armvision's training schema is :mod:`armvision.train.config`).
A schema is a tree of dataclasses whose fields are made with :func:`option` (a default and a help
text) and annotated with plain types: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]``,
``Union[X, None]``, ``tuple[...]``, ``dict[str, Any]`` (free-form: any keys below it) or another
dataclass (a section). Values are checked against the annotations and converted where that is
lossless (``5e-4`` read by YAML 1.1 as text -> float, ``3.0`` -> 3); an unknown key is a
:class:`~armvision.errors.ConfigError` naming the key, the allowed keys and the closest ones.

The one override syntax (:func:`parse_overrides`), used by the command line and by Python callers
passing a list of strings; a ``{dotted key: value}`` dict (:func:`apply_overrides`) is its parsed form:

* ``--section.key VALUE``, ``--section.key=VALUE`` or ``section.key=VALUE``;
* ``-`` in a key reads as ``_`` (``--output-dir`` = ``--output_dir``);
* a boolean key alone (``--data.pin_memory``) means true;
* VALUE is YAML (``1e-3``, ``true``, ``[0.9, 0.95]``, ``null``), except for a string-typed key,
  where it stays text (``--data.root 123`` is the string "123");
* below a free-form dict field any key can be set (``--model.args.embed_dim 128``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import field
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from .errors import ConfigError

__all__ = ["env_json_object", "option", "read_yaml", "from_dict", "apply_overrides", "parse_overrides", "parse_value", "key_type",
           "to_dict", "to_yaml", "describe_keys"]

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, help: str = "", factory=None):  # noqa: A002 - "help" reads best
    """A dataclass field with a help text (shown by :func:`describe_keys`)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def read_yaml(text: str, source: str) -> dict:
    """The mapping a YAML text holds (empty text: {}); ``source`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # its text spans several lines; the message keeps the place and the problem
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(key: str, allowed: Sequence[str], where: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], allowed, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"unknown config key {key!r} in {source}{hint}; allowed keys{where}: {', '.join(allowed)}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0])}"
        return f"a list of {len(args)} {_type_name(args[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; converts where it is lossless (5e-4 -> float)."""
    def bad() -> ConfigError:
        return ConfigError(f"bad value for {key!r} in {source}: {value!r}; expected {_type_name(tp)}")

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except ConfigError as e:
                errors.append(e)
        raise bad()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"bad value for {key!r} in {source}: {value!r}; allowed: "
                              f"{', '.join(repr(c) for c in choices)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise bad()
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise bad() from None
                if f.is_integer():
                    return int(f)
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad()
    raise TypeError(f"unsupported config annotation {tp} for {key}")  # a bug, not user input


def _assign(obj: Any, data: Mapping[str, Any], prefix: str, source: str) -> None:
    fields = _fields(type(obj))
    hints = _hints(type(obj))
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields:
            where = f" in {prefix[:-1]!r}" if prefix else ""
            raise _unknown_key(key, list(fields), where, source)
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, Mapping):
                raise ConfigError(f"{key!r} in {source} must be a mapping of its keys "
                                  f"({', '.join(_fields(tp))}), got {v!r}")
            _assign(getattr(obj, k), v, f"{key}.", source)
        else:
            setattr(obj, k, _coerce(v, tp, key, source))


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """An instance of the dataclass ``cls`` from a nested mapping (a YAML file's content): defaults,
    then ``data``; unknown keys and bad values are errors."""
    obj = cls()
    _assign(obj, data, "", source)
    return obj


def key_type(cls, key: str, source: str):
    """The annotation of a dotted key of the dataclass ``cls``; below a dict field (``model.args.X``)
    any value."""
    obj_cls, parts = cls, key.split(".")
    for i, part in enumerate(parts):
        fields = _fields(obj_cls)
        if part not in fields:
            prefix = ".".join(parts[:i])
            raise _unknown_key(key, list(fields), f" in {prefix!r}" if prefix else "", source)
        tp = _hints(obj_cls)[part]
        if dataclasses.is_dataclass(tp):
            obj_cls = tp
            continue
        if typing.get_origin(tp) is dict and i < len(parts) - 1:
            return Any
        if i != len(parts) - 1:
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is a value, not a section; "
                              f"{key!r} does not exist")
        return tp
    return obj_cls


def apply_overrides(obj: T, overrides: Mapping[str, Any], source: str = "overrides") -> T:
    """Set dotted keys (``optim.lr``, ``model.args.embed_dim``; ``-`` read as ``_``) on a copy of the
    dataclass tree ``obj``; values are coerced to the keys' types."""
    root = type(obj)
    cfg = from_dict(root, to_dict(obj), source)
    for key, value in overrides.items():
        key = key.replace("-", "_")
        tp = key_type(root, key, source)
        parts = key.split(".")
        obj = cfg
        for i, part in enumerate(parts):
            attr = getattr(obj, part)
            if dataclasses.is_dataclass(attr) and i < len(parts) - 1:
                obj = attr
                continue
            if isinstance(attr, dict) and i < len(parts) - 1:  # model.args.X = value
                sub = attr
                for p in parts[i + 1: -1]:
                    sub = sub.setdefault(p, {})
                sub[parts[-1]] = value
                break
            if dataclasses.is_dataclass(tp):
                if not isinstance(value, Mapping):
                    raise _section_error(key, tp)
                _assign(attr, value, f"{key}.", source)
            else:
                setattr(obj, part, _coerce(value, tp, key, source))
            break
    return cfg


def _section_error(key: str, tp: Any) -> ConfigError:
    """A whole section given one value (``--optim 3``, ``--checkpoint`` alone): its keys are set one by one."""
    return ConfigError(f"{key!r} is a section; set its keys ({', '.join(_fields(tp))}) one by one, "
                       f"e.g. {key}.{next(iter(_fields(tp)))}=...")


def parse_value(text: str, tp: Any) -> Any:
    """A value given as text (a flag): strings stay strings; anything else is read as YAML."""
    base = tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        non_none = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.strip().lower() in ("null", "none", "~"):
            return None
        base = non_none[0] if len(non_none) == 1 else tp
    if base is str or (typing.get_origin(base) is Literal and all(isinstance(a, str) for a in typing.get_args(base))):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and base is float:
        try:
            return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
        except ValueError:
            pass
    return value


def parse_overrides(cls, tokens: Sequence[str], source: str = "the command line") -> dict[str, Any]:
    """The one override syntax (see the module docstring) -> ``{dotted key: typed value}``.

    ``["--optim.lr", "1e-3", "--data.pin_memory", "--seed=3", "output_dir=runs/x"]`` ->
    ``{"optim.lr": 0.001, "data.pin_memory": True, "seed": 3, "output_dir": "runs/x"}``.
    """
    out: dict[str, Any] = {}
    i = 0
    tokens = list(tokens)
    while i < len(tokens):
        tok = str(tokens[i])
        if not tok.startswith("--") and "=" in tok and not tok.startswith("-"):
            tok = "--" + tok  # KEY=VALUE
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected argument {tok!r}; config overrides look like --section.key VALUE "
                              "(e.g. --optim.lr 1e-3, or section.key=VALUE); see --help for the keys")
        key, eq, value = tok[2:].partition("=")
        key = key.strip().replace("-", "_")
        tp = key_type(cls, key, source)
        if not eq:
            has_value = i + 1 < len(tokens) and not (tokens[i + 1].startswith("--") and len(tokens[i + 1]) > 2)
            if tp is bool and not has_value:
                out[key] = True
                i += 1
                continue
            if dataclasses.is_dataclass(tp):
                raise _section_error(key, tp)
            if not has_value:
                raise ConfigError(f"--{key} needs a value ({_type_name(tp)})")
            value = tokens[i + 1]
            i += 2
        else:
            i += 1
        out[key] = parse_value(value, tp)
    return out


def to_dict(obj: Any) -> dict:
    """A dataclass tree as a plain nested dict (tuples as lists), ready for YAML/JSON."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(obj))


def to_yaml(obj: Any) -> str:
    """A dataclass tree as YAML (keys in field order)."""
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


def describe_keys(cls, prefix: str = "", skip: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """(dotted key, default as YAML, help) of every leaf key of the dataclass ``cls``, for ``--help``;
    ``skip``: top-level fields left out."""
    out = []
    default = cls()
    hints = _hints(cls)
    for name, f in _fields(cls).items():
        if name in skip:
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            out += describe_keys(tp, f"{prefix}{name}.")
        else:
            value = getattr(default, name)
            out.append((f"{prefix}{name}", yaml.safe_dump(value if not isinstance(value, tuple) else list(value),
                                                          default_flow_style=True).strip().removesuffix("\n..."),
                        f.metadata.get("help", "")))
    return out


def env_json_object(variable: str, what: str, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The JSON object in environment variable ``variable`` (None when it is unset or empty); anything else is a
    :class:`ConfigError` (a ``ValueError`` too) saying it must be a JSON object of ``what``."""
    text = (os.environ if environ is None else environ).get(variable, "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{variable} must be a JSON object of {what}, got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{variable} must be a JSON object of {what}, got {text!r}")
    return value
