"""What ``rlrs inspect`` shows: each component's share of a model, which schedule each tensor
follows, and the plan's LRs over time. In Python, :func:`inspect` prints the same report::

    rlrs.inspect(model, "paper-dense", total_steps=10_000)   # any nn.Module, or a model spec

    >>> from rlrs.inspection import load_model, component_table
    >>> model = load_model("tiny-moe")
    >>> [row["component"] for row in component_table(model)][:3]
    ['embedding', 'unembedding', 'attention']

A model is one of rlrs's model sizes, a Hugging Face ``config.json`` or model directory, or your own
``nn.Module`` as ``MODULE:ATTR`` (see :func:`load_model`). Model sizes and Hugging Face configs are
built on the ``meta`` device: no memory is allocated, so the 5.67B-parameter ``moe-906m``
model size or a large Hugging Face config inspects instantly.

One module (about 630 lines): loading a model (size, Hugging Face, ``MODULE:ATTR``) and the
report on it are one command's two halves; the report's tables read the loader's guesses and
warnings, which a split would have to pass across modules.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import inspect as _pyinspect
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import config as _config
from .components import COMPONENTS, Rule, classify, component_names, tied_parameters
from .config import ConfigError, closest, require
from .plan import Plan

DEFAULT_AT = "0,1%,25%,50%,75%,100%"


# --- loading a model ---------------------------------------------------------------------------------


def model_kind(spec: str) -> str:
    """What a model spec names: ``"hf"`` (an existing model directory or a ``.json`` file),
    ``"attr"`` (``MODULE:ATTR``, your own model) or ``"size"`` (anything else: one of rlrs's model sizes)."""
    path = Path(spec)
    if path.is_dir() or spec.endswith(".json"):
        return "hf"
    if _ATTR_SPEC.fullmatch(spec) and not path.exists():
        return "attr"
    return "size"


# MODULE:ATTR, where ATTR is a (dotted) Python name: "mypkg.model:GPT", "train.py:make_model".
_ATTR_SPEC = re.compile(r"(?P<module>.+):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


def load_model(spec: str, sets: Mapping[str, Any] | None = None) -> nn.Module:
    """The model a spec names:

    - the name of one of rlrs's model sizes (as ``rlrs train`` builds it; ``sets``: its ``model.*`` settings);
    - a Hugging Face ``config.json``, or a model directory holding one (no weights are read,
      nothing is fetched);
    - ``MODULE:ATTR``, your own model: ``MODULE`` is a dotted import path (importable from the
      current directory, e.g. ``mypkg.model:GPT``) or a path to a ``.py`` file
      (``path/to/train.py:GPT``; imported under its own name, not as ``__main__``, so its
      ``if __name__ == "__main__":`` block does not run; its directory joins ``sys.path`` so its
      own imports work). ``ATTR`` is an ``nn.Module`` class (built with no arguments), a
      function returning an ``nn.Module`` (called with no arguments) or an ``nn.Module`` object.

    Model sizes, Hugging Face configs, classes and functions are built on the ``meta`` device (a
    class or function that cannot be is built again on the CPU).
    """
    kind = model_kind(spec)
    if kind == "hf":
        return _load_hf(spec)
    if kind == "attr":
        return load_attr(spec)
    from . import models
    from .train import run_config

    if spec not in models.SIZES:
        path = Path(spec)
        if "/" in spec or os.sep in spec:
            raise ConfigError(f"model {spec}: no such file or directory; give a Hugging Face model directory or "
                              "config.json, a model size, or MODULE:ATTR (e.g. path/to/train.py:GPT)")
        if path.suffix == ".py" and path.is_file():
            raise ConfigError(f"model {spec}: name the model in it after a colon, e.g. {spec}:GPT (an nn.Module "
                              "class, a function returning one, or an nn.Module object)")
        raise ConfigError(f"model {spec!r}: not an rlrs model size ({closest(spec, models.SIZES)}), nor an existing "
                          "model directory or config.json; give a model size, a Hugging Face config.json or model "
                          "directory, or MODULE:ATTR for your own model (e.g. path/to/train.py:GPT)")
    # The model as rlrs trains it: the vocabulary follows the model size's tokenizer.
    cfg = run_config(spec, sets=sets).model
    with torch.device("meta"):
        return models.build_model(cfg)


# Sizes no model can have below 1; any other integer setting named like a size must not be negative.
_SIZES = {"hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "num_layers", "num_attention_heads",
          "n_head", "vocab_size", "intermediate_size", "n_positions", "max_position_embeddings", "ffn_dim",
          "n_inner", "num_key_value_heads", "head_dim", "d_ff", "d_kv"}
_SIZE_LIKE = re.compile(r"(size|dim|^n_|^num_|layers|heads|positions)")


def _load_hf(spec: str) -> nn.Module:
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{spec}: a directory without config.json; give a Hugging Face model directory "
                              "(one save_pretrained wrote) or its config.json")
        path = path / "config.json"
    shown = str(path)
    if not path.is_file():
        raise ConfigError(f"{shown}: no such Hugging Face config file")
    try:
        config_dict = _config.load_file(path)
    except ConfigError as err:
        raise ConfigError(f"{err}; give a Hugging Face model config (the config.json save_pretrained writes)") from None
    if "model_type" not in config_dict:
        raise ConfigError(f"{shown}: not a Hugging Face model config (it has no 'model_type')")
    transformers = require("transformers", "hf")
    model_type = config_dict["model_type"]
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        match = difflib.get_close_matches(str(model_type), list(transformers.CONFIG_MAPPING.keys()), n=1, cutoff=0.6)
        hint = f"did you mean {match[0]!r}?" if match else ("check its spelling, or upgrade transformers if the "
                                                           "model is newer than it")
        raise ConfigError(f"{shown}: model_type {model_type!r} is unknown to transformers "
                          f"{transformers.__version__}; {hint}")
    for key, value in config_dict.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if (key in _SIZES and value < 1) or (value < 0 and _SIZE_LIKE.search(key)):
            raise ConfigError(f"{shown}: {key} is {value}; a size must be a whole number >= 1, e.g. "
                              f"\"{key}\": {_example_size(key)}")
    try:
        config = transformers.AutoConfig.for_model(**config_dict)
    except Exception as err:  # noqa: BLE001 (transformers' own validation: any error is the file's)
        raise ConfigError(f"{shown}: transformers refuses this {model_type} config: {_first_line(err)}; "
                          "fix config.json") from None
    auto = [transformers.AutoModelForCausalLM, transformers.AutoModelForSeq2SeqLM, transformers.AutoModel]
    for i, cls in enumerate(auto):
        try:
            with torch.device("meta"):
                return cls.from_config(config)
        except ValueError as err:
            if "Unrecognized configuration class" in str(err) and i + 1 < len(auto):
                continue  # not a causal LM (T5): the next kind of model
            raise ConfigError(f"{shown}: transformers could not build a {model_type} model from it: "
                              f"{_first_line(err)}; check its sizes") from None
        except Exception as err:  # noqa: BLE001 (a size that makes no tensor, a head count that divides nothing)
            raise ConfigError(f"{shown}: transformers could not build a {model_type} model from it "
                              f"({type(err).__name__}: {_first_line(err)}); check its sizes (hidden_size, "
                              "num_attention_heads, num_hidden_layers, vocab_size, ...)") from None
    raise AssertionError("unreachable")


def _example_size(key: str) -> int:
    return 12 if "layer" in key or "head" in key else 768


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


def load_attr(spec: str) -> nn.Module:
    """Your own model from ``MODULE:ATTR`` (see :func:`load_model`)."""
    m = _ATTR_SPEC.fullmatch(spec)
    if m is None:
        raise ConfigError(f"model {spec!r}: write MODULE:ATTR, e.g. mypkg.model:GPT or path/to/train.py:GPT")
    module = _import(m["module"], spec)
    obj, owner = module, m["module"]
    for part in m["attr"].split("."):
        if not hasattr(obj, part):
            what = f"module {owner}" if obj is module else owner
            raise ConfigError(f"model {spec}: {what} has no attribute {part!r}; {_attr_hint(obj, part)}")
        obj, owner = getattr(obj, part), f"{owner}:{part}" if owner == m["module"] else f"{owner}.{part}"
    return _build(obj, spec, m["attr"], m["module"])


def _import(module: str, spec: str):
    is_file = module.endswith(".py") or "/" in module or os.sep in module
    if is_file:
        path = Path(module)
        if not path.is_file():
            raise ConfigError(f"model {spec}: no such file {module}; give the path to a .py file "
                              "(path/to/train.py:GPT) or a dotted module name (mypkg.model:GPT)")
        if path.suffix != ".py":
            raise ConfigError(f"model {spec}: {module} is not a .py file; give path/to/file.py:NAME")
        return _import_file(path, spec)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current directory import
    return _guarded(lambda: importlib.import_module(module), spec, module, module)


def _import_file(path: Path, spec: str):
    path = path.resolve()
    name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else f"_rlrs_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # its own imports (from model import GPT) work
    sys.modules[name] = module
    try:
        _guarded(lambda: module_spec.loader.exec_module(module), spec, str(path))
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _guarded(fn, spec: str, what: str, module: str | None = None):
    """Run the user's import; any error it raises becomes a ConfigError naming where."""
    argv = sys.argv
    sys.argv = [what]  # an argparse at the module's top level sees no rlrs arguments
    try:
        return fn()
    except ModuleNotFoundError as err:
        if module is not None and err.name and (module == err.name or module.startswith(err.name + ".")):
            raise ConfigError(f"model {spec}: no module named {module!r} (from {os.getcwd()}); give a dotted "
                              "module name importable from the current directory, or the path to its file: "
                              "path/to/file.py:NAME") from None
        raise ConfigError(f"model {spec}: importing {what} failed: it imports {err.name!r}, which is not installed "
                          f"(or not on the path) ({_where(err)}); install it") from None
    except SystemExit as err:
        raise ConfigError(f"model {spec}: importing {what} exited (sys.exit({err.code!r}); argparse?) before "
                          "the model was defined; put the script's work under if __name__ == \"__main__\": or "
                          "define the model in a module of its own") from None
    except ImportError as err:
        if "relative import" in str(err):
            raise ConfigError(f"model {spec}: {what} uses relative imports (from .x import ...), so it must be "
                              "imported as part of its package: give it as a dotted name from the directory above "
                              "the package, e.g. mypkg.train:GPT") from None
        raise ConfigError(f"model {spec}: importing {what} raised ImportError: {_first_line(err)} ({_where(err)}); "
                          "fix it, or define the model in a module that imports cleanly") from None
    except Exception as err:  # noqa: BLE001 (the user's code: any error at all)
        raise ConfigError(f"model {spec}: importing {what} raised {type(err).__name__}: {_first_line(err)} "
                          f"({_where(err)}); fix it, or define the model in a module that imports cleanly") from None
    finally:
        sys.argv = argv


def _where(err: BaseException) -> str:
    """The innermost frame of the user's code in a traceback (``path:line``)."""
    here = str(Path(__file__).parent)
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith(here) and not f.filename.startswith("<")
              and "importlib" not in f.filename]
    return f"at {frames[-1].filename}:{frames[-1].lineno}" if frames else "while importing"


def _attr_hint(obj: Any, name: str) -> str:
    public = [n for n in dir(obj) if not n.startswith("_")]
    match = difflib.get_close_matches(name, public, n=1, cutoff=0.5)
    models = [n for n in public if _model_like(getattr(obj, n, None), obj)]
    shown = ", ".join(models[:12]) + (f", ... ({len(models)} in all)" if len(models) > 12 else "")
    listing = (f"its nn.Module classes, objects and functions: {shown}" if models
               else "it defines no nn.Module class, object or function")
    return f"did you mean {match[0]!r}? ({listing})" if match else listing


def _model_like(value: Any, owner: Any) -> bool:
    if isinstance(value, nn.Module):
        return True
    if isinstance(value, type):
        return issubclass(value, nn.Module)
    owner_name = getattr(owner, "__name__", None)
    return _pyinspect.isfunction(value) and value.__module__ == owner_name


def _build(obj: Any, spec: str, attr: str, module: str) -> nn.Module:
    if isinstance(obj, nn.Module):
        return obj
    wanted = "give an nn.Module class, a function that returns an nn.Module, or an nn.Module object"
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise ConfigError(f"model {spec}: {attr} is a class, but not an nn.Module subclass; {wanted}")
    if not callable(obj):
        raise ConfigError(f"model {spec}: {attr} is {_short(obj)} ({type(obj).__name__}), not a model; {wanted}")
    needed = _required_arguments(obj)
    if needed:
        what = "class" if isinstance(obj, type) else "function"
        raise ConfigError(
            f"model {spec}: the {what} {attr}({', '.join(needed)}) needs arguments, and rlrs calls it with none; "
            f"write a function that takes none next to it, e.g. def make_model(): return {attr}(...), and give "
            f"{module}:make_model")
    argv = sys.argv
    sys.argv = [spec]  # a function that parses arguments sees none of rlrs's
    try:
        try:
            with torch.device("meta"):  # no memory, no time
                model = obj()
        except Exception:  # noqa: BLE001 (code that cannot run on meta tensors: build it for real)
            try:
                model = obj()
            except Exception as err:  # noqa: BLE001 (the user's code)
                raise ConfigError(f"model {spec}: {attr}() raised {type(err).__name__}: {_first_line(err)} "
                                  f"({_where(err)}); fix it, or give a function that builds the model") from None
    except SystemExit as err:
        raise ConfigError(f"model {spec}: calling {attr}() exited (SystemExit {err.code!r}): it is not a function "
                          "that builds the model (a script's main?); give one that only builds and returns it, "
                          f"e.g. def make_model(): return GPT(...), and {module}:make_model") from None
    finally:
        sys.argv = argv
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec}: {attr}() returned {_short(model)} ({type(model).__name__}), not an "
                          "nn.Module; return the model")
    return model


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _required_arguments(fn: Any) -> list[str]:
    try:
        sig = _pyinspect.signature(fn)
    except (TypeError, ValueError):  # a builtin: no signature to read
        return []
    kinds = (_pyinspect.Parameter.POSITIONAL_ONLY, _pyinspect.Parameter.POSITIONAL_OR_KEYWORD,
             _pyinspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in sig.parameters.values() if p.kind in kinds and p.default is _pyinspect.Parameter.empty]


def component_table(model: nn.Module, rules: Sequence[Rule] | None = None, plan: Plan | str | None = None) -> list[dict]:
    """Rows of (component, tensors, params, share of all trainable params), and with a ``plan``,
    ``follows``: the component whose schedule the row's tensors follow.

    Each tensor counts once; a tensor tied across components (GPT-2's embedding and unembedding)
    gets its own row, ``embedding+unembedding (tied)``. Which schedule it follows is what
    :func:`rlrs.optim.assign_components` (and so :func:`rlrs.param_groups`) decides:
    ``plan.tied``, or ``rlrs.components.DEFAULT_TIED`` when the plan leaves it unset. A tensor
    shared by another pair of components follows none (``param_groups`` refuses it; a rule
    settles it): its ``follows`` says ``none: give a rule``.
    """
    return _rows(model, rules, _follows(model, plan, rules)[0] if plan is not None else None)


def _rows(model: nn.Module, rules: Sequence[Rule] | None, follows: Mapping[str, str] | None) -> list[dict]:
    comp = _labels(model, rules)
    aliases = {name: group for group in tied_parameters(model) for name in group}
    counts: dict[str, list] = {}
    for name, p in model.named_parameters():  # each shared tensor once, under its first name
        if not p.requires_grad:
            continue
        comps = sorted({comp[n] for n in aliases.get(name, (name,))}, key=COMPONENTS.index)
        label = comps[0] if len(comps) == 1 else "+".join(comps) + " (tied)"
        row = counts.setdefault(label, [0, 0, set()])
        row[0] += 1
        row[1] += p.numel()
        if follows is not None:
            row[2].add(follows.get(name, "none: give a rule"))
    total = sum(n for _, n, _ in counts.values())
    order = lambda label: COMPONENTS.index(label.split("+")[0].split(" ")[0])
    rows = []
    for c, (t, n, f) in sorted(counts.items(), key=lambda kv: order(kv[0])):
        row = {"component": c, "tensors": t, "params": n, "share": n / total if total else 0.0}
        if follows is not None:
            row["follows"] = ", ".join(sorted(f, key=lambda x: COMPONENTS.index(x) if x in COMPONENTS else 99))
        rows.append(row)
    return rows


def _labels(model: nn.Module, rules: Sequence[Rule] | None) -> dict[str, str]:
    """Each parameter name's component by its own module: a tied alias keeps its own label (the
    table shows ``embedding+unembedding (tied)``; :func:`_follows` says which schedule it gets)."""
    return classify(model, rules, tied=None)


def _follows(model: nn.Module, plan: Plan | str, rules: Sequence[Rule] | None) -> tuple[dict[str, str], str | None]:
    """Each tensor's schedule as :func:`rlrs.optim.assign_components` decides it, and the reason
    ``param_groups`` would refuse the model (a tensor shared by two components other than the
    embedding and the unembedding): then those tensors are left out."""
    from .components import ClassificationError
    from .optim import assign_components

    try:
        follows = assign_components(model, plan, rules)
        for group in tied_parameters(model):  # every name of a shared tensor: lm_head.weight as wte.weight
            if any(n in follows for n in group):
                comp = next(follows[n] for n in group if n in follows)
                follows.update({n: comp for n in group})
        return follows, None
    except ClassificationError:
        raise  # a parameter nothing places: param_groups raises the same
    except ConfigError as err:
        # Every other tensor as param_groups would place it once those shared ones are settled.
        comp = _labels(model, rules)
        offending = [g for g in tied_parameters(model)
                     if len({comp[n] for n in g}) > 1 and {comp[n] for n in g} != {"embedding", "unembedding"}]
        settle = [(f"^{re.escape(n)}$", comp[g[0]]) for g in offending for n in g]
        try:
            decided = assign_components(model, plan, [*settle, *(rules or [])])
        except ConfigError:
            decided = {}
        shared = {n for g in offending for n in g}
        return {n: c for n, c in decided.items() if n not in shared}, str(err)


def format_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    headers = list(headers or columns)
    cells = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[c], (int, float)) for r in rows) for c in columns]
    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if 0 < abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.3e}"
    return f"{v:.4g}"


def check_total_steps(total_steps: Any, name: str = "total_steps") -> int:
    """``total_steps`` as a whole number >= 1, or a ConfigError naming ``name`` (``--steps``)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        example = f"{name} 10000" if name.startswith("--") else f"{name}=10_000"
        raise ConfigError(f"{name}: the training length in steps, a whole number >= 1; got {total_steps!r} "
                          f"(e.g. {example})")
    return total_steps


def parse_steps(spec: str | Sequence[int | str], total_steps: int, name: str = "--at") -> list[int]:
    """``"0,1%,50%,100%,1234"`` (or a list of such items) to distinct step numbers, in order
    (``100%`` is the last step, ``total_steps - 1``; a percentage that rounds to a step already
    listed is listed once). Errors name ``name``."""
    parts = spec.split(",") if isinstance(spec, str) else [str(x) for x in spec]
    steps = []
    for part in parts:
        part = part.strip()
        try:
            if part.endswith("%"):
                frac = float(part[:-1]) / 100
                if not 0 <= frac <= 1:
                    raise ValueError
                steps.append(min(total_steps - 1, round(frac * total_steps)))
            else:
                step = int(part)
                if not 0 <= step < total_steps:
                    raise ValueError
                steps.append(step)
        except ValueError:
            raise ConfigError(
                f"{name}: {part!r} is not a step in [0, {total_steps - 1}] or a percentage in [0%, 100%]"
            ) from None
    if not steps:
        raise ConfigError(f"{name}: give at least one step or percentage, e.g. 0,50%,100%")
    return list(dict.fromkeys(steps))


def lr_table(plan: Plan, components: Sequence[str], steps: Sequence[int], total_steps: int,
             width_factors: Mapping[str, float] | None = None) -> list[dict]:
    """Rows of each component's LR at the given steps (times its muP width factor, if any)."""
    components = component_names(components)
    w = width_factors or {}
    return [{"component": c, **{f"step {s}": plan.lr(c, s, total_steps, width=w.get(c, 1.0)) for s in steps}}
            for c in components]


def tied_report(model: nn.Module, rules: Sequence[Rule] | None = None) -> list[str]:
    """One line per group of parameter names that share a tensor, each name with its own module's
    component."""
    comp = _labels(model, rules)
    return [" = ".join(f"{n} ({comp[n]})" for n in group) for group in tied_parameters(model)]


# --- the report ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, repr=False)
class Inspection:
    """What :func:`inspect` found. ``str(it)`` is the report it printed (what ``rlrs inspect``
    prints); the parts are here as data."""

    components: list[dict]  # component, tensors, params, share, follows
    lrs: list[dict]  # component, then "step S": the LR at step S
    follows: dict[str, str]  # each trainable tensor (first name) -> the component whose schedule it follows
    tied: list[str]  # one line per group of names sharing one tensor
    counts: dict[str, int] | None  # an rlrs model size's total/active parameter counts
    text: str

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"<rlrs inspection: {len(self.components)} rows, {len(self.lrs)} components; print() it for the report>"


def inspect(
    model: nn.Module | str,
    plan: Plan | str | None = None,
    *,
    total_steps: int = 10_000,
    at: str | Sequence[int | str] = DEFAULT_AT,
    rules: Sequence[Rule] | None = None,
    width_factors: Mapping[str, float] | None = None,
    sets: Mapping[str, Any] | None = None,
    quiet: bool = False,
    _cli: bool = False,
) -> Inspection:
    r"""Print (unless ``quiet``) and return the report ``rlrs inspect`` prints: each component's
    tensors, parameters, share and the schedule it follows (a tied tensor's is what
    :func:`rlrs.param_groups` gives it), the tied tensors, and each component's LR at steps
    ``at`` of a ``total_steps`` run::

        model = GPT(config)
        rlrs.inspect(model, "paper-dense", total_steps=10_000)                # print the report
        rlrs.inspect(model, plan, total_steps=5000, at="0,10%,100%", rules=[(r"\.ffn\.", "feedforward")])
        report = rlrs.inspect(model, plan, total_steps=5000, quiet=True)      # report.components, .lrs, .follows

    Args:
        model: any ``nn.Module``, or a spec :func:`load_model` reads: an rlrs model size, a Hugging
            Face ``config.json`` or model directory, or ``"path/to/train.py:GPT"``.
        plan: a :class:`~rlrs.plan.Plan`, a named plan or a plan file; ``None``: the paper's plan
            for the model (``paper-moe`` when it has a router and experts, else ``paper-dense``).
        total_steps: the run's length; ``at``: steps and percentages (``"0,1%,100%"`` or a list).
        rules: ``(regex, component)`` rules tried first, as in :func:`rlrs.param_groups`.
        width_factors: a parametrization's LR factor per component (muP), as in ``param_groups``;
            for an rlrs model size with ``model.parametrization = "mup"`` they are its own.
        sets: ``{"plan.tied": "embedding"}`` (``plan.*`` settings) and, for an rlrs model size,
            ``model.*`` settings.
    """
    from .optim import as_plan

    names = {"total_steps": "--steps", "at": "--at", "sets": "--set", "model": "MODEL"} if _cli else {}
    name = lambda key: names.get(key, key)
    total_steps = check_total_steps(total_steps, name("total_steps"))
    steps = parse_steps(at, total_steps, name("at"))
    sets = dict(sets or {})
    other = [k for k in sets if not k.startswith(("model.", "plan."))]
    if other:
        raise ConfigError(f"{name('sets')}: only model.* settings (of an rlrs model size) and plan.* settings, e.g. "
                          f"model.parametrization=mup or plan.tied=embedding; got {other[0]!r}")
    model_sets = {k: v for k, v in sets.items() if k.startswith("model.")}
    plan_sets = {k[len("plan."):]: v for k, v in sets.items() if k.startswith("plan.")}
    plan_label = plan if isinstance(plan, str) else None if plan is None else "(given)"
    plan = None if plan is None else as_plan(plan)

    size_cfg = None
    if isinstance(model, str):
        label = model
        if model_sets and model_kind(model) != "size":
            raise ConfigError(f"{name('sets')} {next(iter(model_sets))}: model.* settings change an rlrs model size, and "
                              f"{model} is not one; change the model's own config instead")
        model_obj = load_model(model, model_sets)
        if model_kind(model) == "size":
            from .train import run_config

            size_cfg = run_config(model, sets=model_sets).model  # as trained: the tokenizer's vocabulary
    elif isinstance(model, nn.Module):
        if model_sets:
            raise ConfigError(f"{name('sets')} {next(iter(model_sets))}: model.* settings change an rlrs model size; "
                              "build your model with the settings you want")
        label, model_obj = type(model).__name__, model
    else:
        raise ConfigError(f"model: an nn.Module, or a model size, Hugging Face config or MODULE:ATTR spec; "
                          f"got {type(model).__name__}")

    if plan is None:  # the paper's plan for what the model is: MoE when it has a router and experts
        from . import presets

        moe = {"router", "experts"} <= set(classify(model_obj, rules, tied=None).values())
        plan_label = presets.default_plans(moe=moe)[1]
        plan = as_plan(plan_label)
    if plan_sets:
        try:
            plan = _config.replace(plan, plan_sets, where="plan")
        except ConfigError as err:
            raise ConfigError(f"{name('sets')} {'' if str(err).startswith('plan.') else 'plan.'}{err}") from None
    follows, refused = _follows(model_obj, plan, rules)
    rows = _rows(model_obj, rules, follows)
    tied = tied_report(model_obj, rules)
    counts = None
    widths: dict[str, float] = {}
    if size_cfg is not None:
        from .models import count_params, width_factors as size_widths

        counts = count_params(size_cfg)
        widths = size_widths(size_cfg)
    widths.update(width_factors or {})
    comps = sorted({c for r in rows for c in r["component"].split(" ")[0].split("+")}, key=COMPONENTS.index)
    lrs = lr_table(plan, comps, steps, total_steps, widths)

    out = [f"model: {label}", format_table(rows, ["component", "tensors", "params", "share", "follows"])]
    if counts is not None:
        out += ["", format_table([{"count": k, "params": v} for k, v in counts.items()], ["count", "params"])]
    if tied:
        out += ["", "tied (one tensor, several names):"]
        out += [f"  {line}" for line in tied]
        out += _tied_notes(rows, plan)
    if refused:
        rule = "--rule 'REGEX=COMPONENT'" if _cli else "rules=[(REGEX, COMPONENT)]"
        out += [f"  rlrs.param_groups refuses this model as it is: {refused} (here: {rule})"]
    if size_cfg is not None and size_cfg.parametrization == "mup":
        out += ["", f"muP: width multiplier m = d_model / base_width = {size_cfg.d_model} / {size_cfg.base_width} = "
                f"{size_cfg.width_mult:g}; LR width factor per component: "
                + ", ".join(f"{c} ×{widths.get(c, 1.0):g}" for c in comps)]
    elif width_factors:
        out += ["", "LR width factor per component: " + ", ".join(f"{c} ×{widths.get(c, 1.0):g}" for c in comps)]
    out += ["", f"plan{' ' + plan_label if plan_label else ''}: LR per component ({total_steps} steps)",
            format_table(lrs, ["component", *[f"step {s}" for s in steps]])]
    text = "\n".join(out)
    if not quiet:
        print(text)
    return Inspection(rows, lrs, follows, tied, counts, text)


def _tied_notes(rows: Sequence[dict], plan: Plan) -> list[str]:
    """Which schedule the embedding+unembedding tensor follows, and why (``rows``' ``follows``
    is what :func:`rlrs.optim.assign_components` decided)."""
    notes = []
    for row in rows:
        if row["component"] != "embedding+unembedding (tied)":
            continue
        f = row["follows"]
        if f not in ("embedding", "unembedding"):
            continue
        other = "embedding" if f == "unembedding" else "unembedding"
        why = "plan.tied" if plan.tied else "plan.tied is unset, so rlrs.components.DEFAULT_TIED applies"
        notes += [f"  the embedding+unembedding tensor follows the {f} schedule: {why}",
                  f"  (to change it: tied = \"{other}\" in the plan, or --set plan.tied={other})"]
    return notes
