"""The README and docs/ stand alone: no link outside the project, every relative link resolves, and the
commands they show agree with the Makefile, .ci/run and .gitignore."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# [text](target) and <target>; images too. Code spans and fenced blocks are left out before matching.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    return _CODE.sub("", _FENCE.sub("", text))


def _links(page: Path) -> list[str]:
    return _LINK.findall(_prose(page.read_text()))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug, n = _slug(heading), 1
        while slug in found:  # repeated headings get -1, -2...
            slug = f"{_slug(heading)}-{n}"
            n += 1
        found.add(slug)
    return found


def _shell_blocks(page: Path) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.S | re.M)


def test_docs_exist_and_the_readme_points_to_each() -> None:
    names = {page.name for page in DOCS}
    assert {"api.md", "design.md", "development.md"} <= names, names
    readme_links = set(_links(README))
    for page in DOCS:
        assert f"docs/{page.name}" in {link.split("#")[0] for link in readme_links}, f"README never links {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_refers_to_the_shared_directory(page: Path) -> None:
    """A clone has no ../shared/: the project documents its own contract."""
    text = page.read_text()
    for needle in ("../shared", "shared/contract.md", "contract.md"):
        assert needle not in text, f"{page.name} mentions {needle!r}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    links = _links(page)
    assert links or page.name != "README.md"
    for link in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", link) or link.startswith("//"):
            continue  # http(s), mailto: not this test's business
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_relative_to(ROOT), f"{page.name}: {link} leaves the project"
        assert target.exists(), f"{page.name}: {link} points to {target.relative_to(ROOT)}, which does not exist"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target), f"{page.name}: {link}: no heading #{anchor} in {target.name}"


def test_the_walkthrough_polling_loop_ends_on_every_terminal_status() -> None:
    loops = [line for block in _shell_blocks(README) for line in block.splitlines() if line.startswith("until ")]
    assert loops, "the README's walkthrough has no polling loop"
    for loop in loops:
        for status in ("Completed", "Failed", "Cancelled"):
            assert status in loop, f"the polling loop does not end on {status}: {loop}"


def test_api_doc_has_the_problem_types_section() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    assert re.search(r"^### Problem types$", api, re.M)
    assert "problem-types" in _anchors(ROOT / "docs" / "api.md")


def test_the_quick_start_commands_are_the_makefile_targets_ci_runs() -> None:
    readme = README.read_text()
    quick = readme[readme.index("## Quick start"):readme.index("## Walkthrough")]
    assert re.search(r"^make run\b", quick, re.M) and re.search(r"^make test\b", quick, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run the README's test command"
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no test target"
    pytest_line = next(line for line in recipe.group(1).splitlines() if "pytest" in line)
    for flag in ("-q", "-rs", "-n 2"):
        assert f" {flag}" in pytest_line, f"make test's pytest misses {flag}: {pytest_line}"


def test_example_files_land_in_a_directory_git_ignores() -> None:
    """Files the README's and docs' shell examples write go to scratch/, which .gitignore covers."""
    written: list[str] = []
    for page in PAGES:
        for block in _shell_blocks(page):
            commands = re.sub(r"(?:^|\s)#.*$", "", block, flags=re.M)  # comments name no file
            written += re.findall(r"(?:^|\s)(?:>|-o)\s*([\w./-]+)", commands, re.M)
    files = [path for path in written if not path.startswith("/dev/")]
    assert files, "the examples write no file"
    assert all(path.startswith("scratch/") for path in files), files
    assert "scratch" in README.read_text() and "scratch/" in (ROOT / "docs" / "clients.md").read_text()
    patterns = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert patterns & {"scratch/", "/scratch/", "scratch"}, ".gitignore does not cover scratch/"
