"""Strict loading and dumping of small frozen config dataclasses.

Every config object in rlrs (a ``Plan``, a model or data config, a run config) is a frozen
dataclass whose defaults live on its fields. This module turns them into plain dicts and back,
rejecting unknown keys (with the closest valid name) and wrongly typed values::

    >>> from rlrs.plan import Plan
    >>> plan = from_dict(Plan, {"base_lr": 3e-3})
    >>> from_dict(Plan, {"base_lr": 3e-3, "warmpu": 0.01})
    Traceback (most recent call last):
    ...
    rlrs.config.ConfigError: plan.warmpu: unknown key; did you mean 'warmup'? ...

Imports only the standard library: it belongs to the core.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong. The message names the field and the fix."""


class MissingExtra(ImportError):
    """An optional dependency is missing; the message names the pip extra that brings it."""


def require(module: str, extra: str):
    """Import an optional dependency or raise ``MissingExtra`` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtra(
            f"{module} is needed for this feature: pip install 'rlrs[{extra}]'"
        ) from err


def closest(name: str, valid) -> str:
    """A hint sentence naming the valid choice closest to ``name`` (or listing all)."""
    valid = list(valid)
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if match:
        return f"did you mean {match[0]!r}? (valid: {', '.join(valid)})"
    return f"valid: {', '.join(valid)}"


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed; give a {_type_name(inner)}")
    tp = inner
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not allowed; {closest(str(value), choices)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config field type {tp!r}")  # a bug in rlrs, not input


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Build the dataclass ``cls`` from ``data``, strictly.

    Missing keys take the field defaults; unknown keys and wrong types raise ``ConfigError``
    naming the dotted path of the field (``plan.router.start``) and the fix.
    """
    where = where or _snake(cls.__name__)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{where}.{k}: unknown key; {closest(str(k), types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # __post_init__ messages start with the field name: make it the dotted path.
        raise ConfigError(f"{where}.{err}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err


def to_dict(obj) -> dict[str, Any]:
    """Dump a config dataclass to plain dicts, lists and scalars (JSON and TOML ready)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def replace(obj: T, overrides: Mapping[str, Any]) -> T:
    """Apply dotted-key overrides (``{"router.start": 0.5}``) strictly, returning a new object."""
    data = to_dict(obj)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                valid = list(node) if isinstance(node, dict) else []
                path = ".".join(parts[: i + 1])
                raise ConfigError(f"{path}: unknown key; {closest(part, valid)}")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return from_dict(type(obj), data)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --- files --------------------------------------------------------------------------------------


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` file into a dict (the format follows the suffix)."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: unsupported config file type; use .toml or .json")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML: {err}") from err
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: invalid JSON: {err}") from err


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Write nested dicts of scalars and lists as TOML (scalars first, then one table per dict).

    Only the shapes rlrs configs produce are supported; ``None`` values are omitted because TOML has
    no null (loading restores the field default, which is ``None`` for every optional field).
    """
    lines: list[str] = []

    def emit(table: Mapping[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not tables):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            if v is not None:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if scalars and tables:
            lines.append("")
        for k, v in tables.items():
            emit(v, f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k))
            lines.append("")

    emit(data, "")
    return "\n".join(lines).rstrip() + "\n"


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(data: Mapping[str, Any], suffix: str) -> str:
    """Serialise a dict as ``.toml`` or ``.json`` text."""
    if suffix == ".toml":
        return dumps_toml(data)
    if suffix == ".json":
        return json.dumps(data, indent=2) + "\n"
    raise ConfigError(f"unsupported config file type {suffix!r}; use .toml or .json")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that a crash leaves either the old file or the new one, never half of one."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
