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
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

INT_LIMIT = 2**63 - 1  # what torch and numpy hold in an int64; larger integers are never meaningful here


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
    """Each key a file may give for ``cls`` and its type, in field order: a :func:`flat` field's
    keys stand in for the field."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        keys = f.metadata.get("flat")
        out.update(keys.types() if keys else {f.name: hints[f.name]})
    return out


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    if tp is typing.Any:  # a free-form record (what a result says its target was), kept as JSON gives it
        return value
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
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return origin(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:  # a table keyed by name (a result's arms): str keys, values of one type
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        key, item = typing.get_args(tp)
        if key is not str or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a table with text keys, got {value!r}")
        return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if abs(value) > INT_LIMIT:
            raise ConfigError(f"{where}: {value} is too large (an integer must fit in 64 bits)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{where}: {value} is too large for a float") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}"
                              + (" (a number this large overflows to inf)" if math.isinf(value) else ""))
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value  # an object built by the caller (a search's run spec), not read from a file
    raise TypeError(f"{where}: unsupported config field type {tp!r}")  # a bug in rlrs, not input


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Build the dataclass ``cls`` from ``data``, strictly.

    Missing keys take the field defaults; unknown keys, wrong types and a missing key without a
    default raise ``ConfigError`` naming the dotted path of the field (``plan.router.start``) and the fix.
    """
    where = _snake(cls.__name__) if where is None else where
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, got {data!r}")
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{_join(where, k)}: unknown key; {closest(str(k), types_)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing {', '.join(missing)}: it has no default; give it a value")
    values = {k: _coerce(v, types_[k], _join(where, k)) for k, v in data.items()}
    flats = {f.name: (f.metadata["flat"], set(f.metadata["flat"].types()))
             for f in dataclasses.fields(cls) if f.init and "flat" in f.metadata}
    kwargs = {k: v for k, v in values.items() if not any(k in owned for _, owned in flats.values())}
    try:
        for name, (keys, owned) in flats.items():
            kwargs[name] = keys.load({k: v for k, v in values.items() if k in owned})
        return cls(**kwargs)
    except ConfigError as err:
        # __post_init__ messages start with the field name: make it the dotted path.
        raise ConfigError(_join(where, str(err))) from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from err


def load_typed(cls: type[T], path: str | Path, file: str, command: str, what: str,
                upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> T:
    """The typed result ``cls`` in the JSON ``file`` that ``command`` writes, from ``path`` (the
    file, or the directory holding it): what every experiment's ``load`` does. ``upgrade`` turns
    a file of an earlier version into the current layout (e.g. drops keys now derived), or raises
    ``ConfigError`` for a file it cannot read (the message gets the path). A missing file raises
    ``FileNotFoundError`` ("no ``what`` here", naming the command that writes it); a file that is
    not JSON, or whose fields do not fit ``cls``, a ``ConfigError`` naming the file (and the field).

        load_typed(GridResult, "runs/bench", "grid.json", "rlrs lr-grid", "grid result")
    """
    path = Path(path)
    if path.is_dir():
        path = path / file
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {what} here; run `{command} --out DIR` first")
    not_one = f"{path}: not {'an' if file[0] in 'aeiou' else 'a'} {file} written by `{command}`"
    try:
        data = load_file(path)
    except ConfigError as err:  # not UTF-8, not JSON, a key twice, not a table: it names the file
        raise ConfigError(f"{not_one}; {str(err).removeprefix(f'{path}: ')}") from None
    if upgrade is not None:
        try:
            data = upgrade(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{not_one}: {err}") from None


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every key whose values differ, nested tables
    walked, keys sorted: what error messages list when two configs or plans disagree.

    >>> differences({"train": {"steps": 200, "seed": 0}}, {"train": {"steps": 300, "seed": 0}})
    [('train.steps', 200, 300)]
    """
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append((f"{prefix}{k}", va, vb))
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def to_dict(obj) -> dict[str, Any]:
    """Dump a config dataclass to plain dicts, lists and scalars (JSON and TOML ready)."""
    return _dump(obj, skip_added_defaults=False)


ADDED = {"added": True}
"""Field metadata of a setting added after runs already existed: ``field(default=..., metadata=ADDED)``.
While it holds its default it is left out of :func:`identity`, so the run directories and
checkpoints made before it existed still match the configs that now carry it."""


def flat(keys) -> dict[str, Any]:
    """Field metadata of a field written as several top-level keys of its dataclass's table
    (``Plan.factors``: ``lora_plus = 16.0``, ``depth_decay = 0.8``). ``keys`` says how:
    ``types()`` (each key and its type), ``dump(value, identity)`` (the keys; for :func:`identity`
    only those that name a run) and ``load(values)`` (the field's value from the keys given)."""
    return {"flat": keys}


def identity(obj) -> dict[str, Any]:
    """What names a run: :func:`to_dict` without the added fields (``metadata=ADDED``) that hold
    their default. Hash this, not ``to_dict``, for content-addressed directories."""
    return _dump(obj, skip_added_defaults=True)


def _dump(obj, skip_added_defaults: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if "flat" in f.metadata:
            out.update(f.metadata["flat"].dump(v, identity=skip_added_defaults))
            continue
        if skip_added_defaults and f.metadata.get("added") and v == f.default:
            continue
        out[f.name] = _dump_value(v, skip_added_defaults)
    return out


def _dump_value(v, skip_added_defaults: bool):
    if dataclasses.is_dataclass(v):
        return _dump(v, skip_added_defaults)
    if isinstance(v, (tuple, list)):
        return [_dump_value(x, skip_added_defaults) for x in v]
    if isinstance(v, dict):
        return {k: _dump_value(x, skip_added_defaults) for k, x in v.items()}
    return v


def replace(obj: T, overrides: Mapping[str, Any], where: str | None = None) -> T:
    """Apply dotted-key overrides (``{"router.start": 0.5}``) strictly, returning a new object.
    ``where`` prefixes error paths (default: the class name, ``plan``; ``""`` for none)."""
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
    return from_dict(type(obj), data, where)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --- files --------------------------------------------------------------------------------------


MAX_DEPTH = 16  # rlrs configs nest 3 deep; anything deeper is not a config (and could exhaust the stack)


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` file into a dict (the format follows the suffix).

    Errors name the file: not UTF-8, invalid syntax, a JSON key given twice (JSON would silently
    keep the last), nesting deeper than any config, or a top level that is not a table.
    """
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: unsupported config file type; use .toml or .json")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: invalid TOML: {err}") from None
        else:
            try:
                data = json.loads(text, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: invalid JSON: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except ConfigError as err:
        if str(err).startswith(str(path)):
            raise
        raise ConfigError(f"{path}: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of settings, got {type(data).__name__}")
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"{path}: nested more than {MAX_DEPTH} deep; not a config")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ConfigError(f"key {k!r} appears twice; keep one")
        out[k] = v
    return out


def _depth(obj: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(obj, Mapping):
        return max((_depth(v, level + 1) for v in obj.values()), default=level + 1)
    if isinstance(obj, list):
        return max((_depth(v, level + 1) for v in obj), default=level + 1)
    return level


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


def json_safe(obj: Any) -> Any:
    """JSON-ready data: NaN and inf become null (strict JSON has neither), arrays and numpy
    scalars plain lists and numbers, paths text. The one place results are made JSON-safe.

    >>> json_safe({"loss": float("nan"), "steps": (1, 2), "out": Path("runs/a")})
    {'loss': None, 'steps': [1, 2], 'out': 'runs/a'}
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):  # numpy's float64 too
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy arrays and scalars
        return json_safe(obj.tolist())
    return obj
