"""The documentation speaks of the product: papers by author and arXiv id, links that resolve.

What a user reads (the package, README.md, docs/, BENCHMARKS.md, the benchmark scripts, examples
and the tests' names and messages) must not name the project's internal history: a seed paper's file number or an issue
number means nothing to a user. Every relative link in the Markdown files must reach a file, and
a link with an anchor a heading of that file, so moving a section cannot leave a dead link.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A seed paper's file number (three digits after "seed", or the stored file's name) and an issue
# number (a number after "issue"): history a user cannot decode. Ranks such as "(#13)" are not.
HISTORY = re.compile(r"(?<![a-z])seeds?[-_ ]?0\d\d(?!\d)"    # a seed paper's number
                     r"|papers/0\d\d|\b0\d\d_[0-9a-f]{16}\b"  # its stored file
                     r"|(?<![a-z])issues?[-_ ]?#?\d+", re.I)   # an issue's number
READ_BY_USERS = ["rlrs", "docs", "benchmarks", "examples", "scripts", "tests", "README.md", "BENCHMARKS.md", "setup.sh"]
TEXT = {".py", ".md", ".sh", ".toml", ".json", ".txt"}
MARKDOWN = ["README.md", "BENCHMARKS.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def _user_files() -> list[Path]:
    files = []
    for name in READ_BY_USERS:
        path = ROOT / name
        files += [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.suffix in TEXT and p.is_file()]
    return [f for f in files if f != Path(__file__).resolve()]  # this file's examples name what it looks for


def history_references(text: str) -> list[str]:
    """Each place ``text`` names a seed paper's file or an issue by number.

    >>> history_references("as seed 003 says (issue 14); seed 0 of every arm; rank (#13)")
    ['seed 003', 'issue 14']
    """
    return [m.group(0) for m in HISTORY.finditer(text)]


def test_history_references_finds_seed_and_issue_numbers_only():
    assert history_references("muP with independent decay (seed 003), see issue #13 and issues 4") == [
        "seed 003", "issue #13", "issues 4"]
    assert history_references("the papers/004_38ec3dd764a360f7.txt summary") == ["papers/004"]
    assert history_references("as 003_2529f5ca251ec5a4.txt says") == ["003_2529f5ca251ec5a4"]
    assert history_references("def test_the_registry_of_seed_004(): ...  # issue_5") == ["seed_004", "issue_5"]
    assert history_references("seed 0 and seed-1 of every arm; train.seed = 2; a rank (#13); an issue") == []


def test_no_seed_or_issue_numbers_in_what_users_read():
    found = [f"{path.relative_to(ROOT)}:{n}: {ref!r}"
             for path in _user_files()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             for ref in history_references(line)]
    assert not found, ("internal history in user-facing text; cite the paper by author and arXiv id "
                       "(e.g. Kosson et al. 2025, arXiv 2510.19093) or say what the change is:\n" + "\n".join(found))


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a Markdown text's headings (code blocks skipped).

    >>> sorted(heading_anchors("# Plans\\n```bash\\n# no heading\\n```\\n## `rlrs zoo` — strategies, side by side"))
    ['plans', 'rlrs-zoo--strategies-side-by-side']
    """
    seen: dict[str, int] = {}
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.*)", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)  # GitHub numbers repeats
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("name", MARKDOWN)
def test_relative_links_reach_a_file_and_a_heading(name):
    source = ROOT / name
    text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)  # links inside code are code
    dead = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.exists():
            dead.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file.read_text()):
            dead.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not dead, f"{name}: dead links:\n" + "\n".join(dead)
