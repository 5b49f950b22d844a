"""The package layout of rlrs 0.1 -> the layered one (experiments/, zoo/), as a script.

    python scripts/relayout.py              # git mv every moved module, then rewrite imports
    python scripts/relayout.py FILE...      # rewrite the imports of these files only (a branch made
                                            # before the move: run it on that branch's new files)

The moves are :data:`MOVES` (old module -> new module, both under ``rlrs``). An import statement
is rewritten only where what it imports moved or where its own file moved (its relative level
changes); every other line is left as it is. Dotted names in text (``rlrs.compare``, docs'
``rlrs/compare.py``) are rewritten too. The result is the same every time: run it twice, the second
run changes nothing.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rlrs"

MOVES = {
    "compare": "experiments.compare",
    "transfer": "experiments.transfer",
    "widths": "experiments.width_transfer",
    "zoo": "experiments.zoo",
    "demo": "experiments.demo",
    "coordcheck": "experiments.coord_check",
    "reporting": "experiments.report",
    "tasks": "zoo.tasks",
    "strategies": "zoo.strategies",
    "dals": "zoo.dals",
    "finetune": "zoo.finetune",
    "auto": "experiments.auto",
}
# Names that left their module when it was split (compare -> lr_grid and arms, transfer -> ablate).
NAME_MOVES = {
    **{("compare", n): "experiments.lr_grid" for n in ("GridPoint", "GridArm", "GridResult", "lr_grid", "load_grid")},
    **{("compare", n): "experiments.arms" for n in ("RunInfo", "arm_name", "ladder_next", "grid_around", "default_out",
                                                    "MAX_POINTS", "RESERVED_SETS")},
    **{("transfer", n): "experiments.ablate" for n in ("ablate", "AblateResult", "LeaveOneOut", "Variant", "FACTORS",
                                                      "ABLATIONS")},
}
ZOO_PARTS = ("tasks", "strategies", "dals", "finetune")  # rlrs.zoo.tasks: the zoo's package, not the command
TEXT_GLOBS = ("rlrs/**/*.py", "tests/**/*.py", "benchmarks/*.py", "benchmarks/*.sh", "examples/*.py",
              "scripts/*.py", "docs/*.md", "README.md", "BENCHMARKS.md")


def new_name(module: str) -> str:
    """``compare`` -> ``experiments.compare``; a module that did not move keeps its name."""
    return MOVES.get(module, module)


def _old(module: str) -> str:
    return next((old for old, new in MOVES.items() if new == module), module)


def _package_of(path: Path) -> list[str]:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return parts if parts[-1] == "__init__" and parts.pop() is not None else parts[:-1]


def _relative(target: list[str], package: list[str]) -> tuple[int, str]:
    """``from <dots><rest>`` that names ``target`` (parts under rlrs) from inside ``package``."""
    common = 0
    while common < min(len(target), len(package)) and target[common] == package[common]:
        common += 1
    return len(package) - common + 1, ".".join(target[common:])


def _emit(indent: str, level: int, module: str, names: list[str]) -> str:
    head = f"{indent}from {'.' * level}{module} import "
    line = head + ", ".join(names)
    if len(line) <= 120:
        return line
    out, cur = [], head + "("
    for i, n in enumerate(names):
        piece = n + (", " if i < len(names) - 1 else ")")
        if len(cur) + len(piece) > 119:
            out.append(cur.rstrip())
            cur = " " * len(head + "(")
        cur += piece
    return "\n".join(out + [cur])


def rewrite_imports(path: Path, old_path: Path | None = None) -> bool:
    """Rewrite the rlrs imports of ``path`` (a module that lived at ``old_path``)."""
    text = path.read_text()
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    inside = PKG in path.parents
    old_pkg = _package_of(old_path or path) if inside else None
    new_pkg = _package_of(path) if inside else None
    edits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level > 0:
            base = old_pkg[:len(old_pkg) - (node.level - 1)]
            module = ".".join(base + (node.module.split(".") if node.module else []))
        elif node.module == "rlrs" or (node.module or "").startswith("rlrs."):
            module = node.module[len("rlrs."):] if node.module != "rlrs" else ""
        else:
            continue
        # Each imported name: (module it comes from, name, alias).
        groups: dict[str, list[str]] = {}
        for a in node.names:
            full = f"{module}.{a.name}" if module else a.name
            if full in MOVES and not (module == "zoo" and a.name in ZOO_PARTS):  # from . import compare
                parent, _, leaf = MOVES[full].rpartition(".")
                alias = a.asname or (a.name if leaf != a.name else None)
            elif (module, a.name) in NAME_MOVES or (module in MOVES.values() and
                                                   (_old(module), a.name) in NAME_MOVES):
                parent, leaf, alias = NAME_MOVES[(module, a.name) if (module, a.name) in NAME_MOVES
                                                 else (_old(module), a.name)], a.name, a.asname
            elif module == "zoo" and a.name in ZOO_PARTS:  # from rlrs.zoo import tasks: the new package
                parent, leaf, alias = module, a.name, a.asname
            else:
                parent, leaf, alias = new_name(module), a.name, a.asname
            groups.setdefault(parent, []).append(leaf + (f" as {alias}" if alias else ""))
        orig = [f"{a.name}" + (f" as {a.asname}" if a.asname else "") for a in node.names]
        moved_file = old_path is not None and old_pkg != new_pkg and node.level > 0
        if list(groups) == [module] and groups[module] == orig and not moved_file:
            continue
        first = lines[node.lineno - 1]
        indent = first[:len(first) - len(first.lstrip())]
        last = lines[node.end_lineno - 1]
        after = last[node.end_col_offset:]  # a comment after the statement, and the newline
        stmts = []
        for parent, names in groups.items():
            if node.level > 0:
                level, rel = _relative(parent.split(".") if parent else [], new_pkg)
                stmts.append(_emit(indent, level, rel, names))
            else:
                stmts.append(_emit(indent, 0, "rlrs" + (f".{parent}" if parent else ""), names))
        new = "\n".join(stmts) + after
        edits.append((node.lineno - 1, node.end_lineno, new))
    if not edits:
        return False
    for start, end, new in sorted(edits, reverse=True):
        lines[start:end] = [new]
    path.write_text("".join(lines))
    return True


_DOTTED = re.compile(r"\brlrs([./])(" + "|".join(sorted(MOVES, key=len, reverse=True)) + r")\b"
                     r"(?![/]|(?:\.| import )(?:" + "|".join(ZOO_PARTS) + r")\b)(\.py)?")


def rewrite_text(path: Path) -> bool:
    """``rlrs.compare`` -> ``rlrs.experiments.compare``, ``rlrs/compare.py`` -> ``rlrs/experiments/compare.py``."""
    text = path.read_text()

    def sub(m: re.Match) -> str:
        sep, name, suffix = m.group(1), m.group(2), m.group(3) or ""
        if sep == "/" and not suffix:
            return m.group(0)  # rlrs/zoo without .py: a folder
        return "rlrs" + sep + MOVES[name].replace(".", sep) + suffix

    new = _DOTTED.sub(sub, text)
    if new != text:
        path.write_text(new)
    return new != text


def main(argv: list[str]) -> int:
    if argv:
        for f in argv:
            p = Path(f).resolve()
            rewrite_text(p)
            if p.suffix == ".py":
                rewrite_imports(p)
        return 0
    moved = {}
    # zoo.py leaves first: rlrs/zoo/ is the package of its building blocks.
    for old in sorted(MOVES, key=lambda m: m != "zoo"):
        src, dst = PKG / f"{old}.py", PKG / (MOVES[old].replace(".", "/") + ".py")
        if not src.exists():
            continue
        dst.parent.mkdir(exist_ok=True)
        subprocess.run(["git", "mv", str(src), str(dst)], cwd=ROOT, check=True)
        moved[dst] = src
    for path in sorted(PKG.rglob("*.py")):  # text first: the imports' rewrite reads rlrs.zoo as the package
        rewrite_text(path)
        rewrite_imports(path, moved.get(path))
    for pattern in TEXT_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            if PKG in path.parents:
                continue  # done above
            if path.resolve() != Path(__file__).resolve():
                rewrite_text(path)
            if path.suffix == ".py" and PKG not in path.parents:
                rewrite_imports(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
