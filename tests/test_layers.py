"""Imports flow one way: every rlrs module's imports (at the top and inside functions) checked
against the layer table of docs/design.md, the one place the layers are written."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rlrs"


def layers() -> dict[str, int]:
    """Module (``engine``, ``tune.study``) -> its layer's rank in docs/design.md's table."""
    text = (ROOT / "docs" / "design.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| layer")]
    rank: dict[str, int] = {}
    for i, row in enumerate(rows):
        modules = row.split("|")[2]
        for name in re.findall(r"`([\w/]+)`", modules):
            rank[name.rstrip("/")] = i
    return rank


def _module(path: Path, pkg: Path = PKG) -> str:
    return ".".join(path.relative_to(pkg).with_suffix("").parts)


def _layer_of(module: str, rank: dict[str, int]) -> int | None:
    if module in rank:
        return rank[module]
    package = module.split(".")[0]  # tune.study: the tune/ package's row
    return rank.get(package)


def _imports(path: Path, pkg: Path = PKG) -> set[str]:
    """The rlrs modules ``path`` imports, as ``engine`` or ``tune.study``."""
    package = list(path.relative_to(pkg).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package[:len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join(base + node.module.split(".")))
            else:  # from . import config
                found.update(".".join(base + [a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rlrs":
            found.add(node.module[len("rlrs."):] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            found.update(a.name[len("rlrs."):] for a in node.names if a.name.startswith("rlrs."))
    return {m for m in found if m}


def test_the_layer_table_names_every_module():
    rank = layers()
    missing = [_module(p) for p in sorted(PKG.rglob("*.py")) if _layer_of(_module(p), rank) is None]
    assert not missing, f"add these modules to the layer table in docs/design.md: {missing}"


def violations(pkg: Path = PKG) -> list[str]:
    rank = layers()
    names = [row.split("|")[1].strip() for row in (ROOT / "docs" / "design.md").read_text().splitlines()
             if row.startswith("| ") and not row.startswith("| layer")]
    bad = []
    for path in sorted(pkg.rglob("*.py")):
        me = _module(path, pkg)
        mine = _layer_of(me, rank)
        for dep in sorted(_imports(path, pkg)):
            theirs = _layer_of(dep, rank)
            if mine is not None and theirs is not None and theirs > mine:
                bad.append(f"{me} ({names[mine]}) imports {dep} ({names[theirs]})")
    return bad


def test_no_module_imports_a_higher_layer():
    bad = violations()
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def test_the_check_sees_the_engine_importing_the_zoo_even_inside_a_function(tmp_path):
    # The violation this test exists for: the engine once imported the zoo's tasks and strategies.
    pkg = tmp_path / "rlrs"
    (pkg / "tune").mkdir(parents=True)
    (pkg / "engine.py").write_text("from .train import Trainer\nfrom .zoo.tasks import train_task\n\n"
                                   "def f():\n    from .zoo.strategies import build\n")
    (pkg / "tune" / "study.py").write_text("from ..engine import pid_alive\n")
    assert violations(pkg) == ["engine (engine) imports zoo.strategies (zoo)", "engine (engine) imports zoo.tasks (zoo)"]


# --- old import paths ------------------------------------------------------------------------------

import importlib  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from rlrs import MOVED  # noqa: E402


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_imports_with_a_warning_naming_the_new_one(old, monkeypatch):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=re.escape(f"{old} moved to {MOVED[old][0]}")):
        module = importlib.import_module(old)
    seen: set[str] = set()
    for new in MOVED[old]:
        real = importlib.import_module(new)
        names = [n for n, v in vars(real).items() if not n.startswith("_") and getattr(v, "__module__", None) == new]
        assert names, f"{new} defines nothing"
        for name in set(names) - seen:
            assert getattr(module, name) is getattr(real, name), f"{old}.{name}"
        seen.update(names)
    with pytest.raises(AttributeError, match=f"{old}.*no attribute 'no_such_name'"):
        module.no_such_name


def test_a_function_reached_by_an_old_path_pickles_by_its_new_one():
    # The job pool and Slurm pickle job functions by module path: the old name must not leak into a pickle.
    import rlrs.experiments.compare as new
    with pytest.warns(DeprecationWarning):
        sys.modules.pop("rlrs.compare", None)
        old = importlib.import_module("rlrs.compare")
    assert b"rlrs.compare\x94" not in pickle.dumps(old.compare)
    assert pickle.loads(pickle.dumps(old.compare)) is new.compare


def test_the_zoo_commands_old_names_fail_naming_the_new_module():
    with pytest.raises(ImportError, match=r"rlrs\.zoo\.run_zoo moved to rlrs\.experiments\.zoo\.run_zoo"):
        from rlrs.zoo import run_zoo  # noqa: F401
    with pytest.raises(ImportError, match=r"rlrs\.zoo\.report moved to rlrs\.experiments\.zoo\.markdown"):
        from rlrs.zoo import report  # noqa: F401  (renamed since: the report's markdown)
    from rlrs.zoo import tasks  # the package of the zoo's building blocks
    assert tasks.__name__ == "rlrs.zoo.tasks"

