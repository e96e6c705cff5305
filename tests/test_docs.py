"""The user documentation: README.md and docs/*.md.

Every relative link resolves to a file of the repository (and an anchor, where given, to a heading of it); the
README stays short; no user-facing page carries issue numbers; nothing in the package, the workflow, the bench
scripts or the docs points to reference files outside the repository; the README shows the usage snippet of
docs/usage.md verbatim; docs/methods.md names every method and score of the registry.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]
README_MAX_LINES = 260
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
ISSUE_REF = re.compile(r"(?<![\w&/#])#\d+\b|\b(?:issue|issues|PR|pull request)\s*#?\d+\b", re.I)
OUTSIDE = ("METHOD.md", "shared/docs", "SOURCES.md")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links and words stay)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M)}


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(prose(page.read_text(encoding="utf-8")))]


def test_pages_exist():
    names = {p.name for p in DOCS}
    assert {"method.md", "methods.md", "configuration.md", "evaluation.md", "cluster.md", "recovery.md",
            "troubleshooting.md"} <= names, sorted(names)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
            continue
        if not dest.is_relative_to(REPO):
            broken.append(f"{target} (outside the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.name}: broken links: {broken}"


def test_links_are_found():
    """The link pattern sees links (a guard against a regex that silently matches nothing)."""
    assert "docs/results.md" in links(REPO / "README.md")
    assert "methods.md" in links(REPO / "docs" / "method.md")


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_issue_numbers(page: Path):
    text = re.sub(r"\]\([^)]*\)", "]", prose(page.read_text(encoding="utf-8")))  # link targets may hold anchors
    found = [m.group(0) for m in ISSUE_REF.finditer(text)]
    assert not found, f"{page.name}: issue references in user-facing text: {found}"


def test_issue_pattern():
    text = "see #8 and issue 15, Issue #3; not &#8212; nor `#9` nor a heading\n## Results"
    assert [m.group(0) for m in ISSUE_REF.finditer(prose(text))] == ["#8", "issue 15", "Issue #3"]


def test_nothing_points_outside_the_repository():
    files = [REPO / "README.md", REPO / "Snakefile", REPO / "config.yaml", *DOCS]
    for folder, pattern in (("pipsteps", "*.py"), ("workflow", "*"), ("bench", "*.py"), ("bench", "*.yaml"),
                            ("profiles", "*")):
        files += [p for p in (REPO / folder).rglob(pattern) if p.is_file() and "__pycache__" not in p.parts]
    hits = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            hits += [f"{path.relative_to(REPO)}:{n}: {word}" for word in OUTSIDE if word in line]
    assert not hits, "references to files outside the repository:\n" + "\n".join(hits)


def test_readme_shows_the_usage_snippet():
    """The README's Python example is the one docs/usage.md documents (tests/test_api.py runs it)."""
    marker = "<!-- snippet: load-pruned"

    def block(page: Path) -> str:
        text = page.read_text(encoding="utf-8")
        assert marker in text, f"{page.name}: no {marker} marker"
        m = re.search(r"```python\n(.*?)```", text[text.index(marker):], re.S)
        assert m, f"{page.name}: no python block after the marker"
        return m.group(1)

    assert block(REPO / "README.md") == block(REPO / "docs" / "usage.md")


def test_methods_page_names_every_method_and_score():
    from pipsteps import methods

    text = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    names = {*methods.METHODS, *methods.scores_of("depth"), *methods.scores_of("width")}
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/methods.md does not describe: {missing}"
