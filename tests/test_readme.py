"""The results tables in README.md and docs/*.md come from tools/readme.py, never typed by hand:
every committed table must be exactly what the committed metrics and benchmark files give, and
each table lives in one place. The docs site builds with `mkdocs build --strict` (offline), which
fails on a broken link or anchor between pages and on a page missing from the nav."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO

MARKER = re.compile(r"<!-- ([\w-]+):(begin|end) -->")
README_LIMIT_BYTES = 15_000  # issue 22: a short README; the rest is in docs/


def _readme_tool():
    spec = importlib.util.spec_from_file_location("readme_tool", REPO / "tools" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documents(tool) -> dict[str, str]:
    """README.md and every docs page, as the tool finds them, by path relative to the repository."""
    return {str(path): (REPO / path).read_text() for path in tool.documents()}


def test_every_table_lives_in_exactly_one_document(monkeypatch):
    monkeypatch.chdir(REPO)  # the tool reads metrics/, benchmarks/ and docs/ relative to the repository
    tool = _readme_tool()
    found: dict[tuple[str, str], list[str]] = {}
    for path, text in _documents(tool).items():
        for name, end in MARKER.findall(text):
            found.setdefault((name, end), []).append(path)
    names = {name for name, _ in found}
    missing = sorted(set(tool.TABLES) - names)
    assert not missing, f"no document holds the markers of the tables {missing}"
    unknown = sorted(names - set(tool.TABLES))
    assert not unknown, f"markers that tools/readme.py does not generate: {unknown}"
    misplaced = {
        name: (found.get((name, "begin")), found.get((name, "end")))
        for name in names
        if found.get((name, "begin")) != found.get((name, "end")) or len(found[(name, "begin")]) != 1
    }
    assert not misplaced, f"each table needs one begin and one end marker, in one file: {misplaced}"


def test_the_tables_are_the_committed_metrics(monkeypatch):
    monkeypatch.chdir(REPO)
    tool = _readme_tool()
    stale = {}
    for path, text in _documents(tool).items():
        refreshed = tool.refresh(text)
        names = sorted({name for name, _ in MARKER.findall(text)} & set(tool.TABLES))
        stale.update({name: path for name in names if _block(text, name) != _block(refreshed, name)})
    assert not stale, f"tables differ from metrics/ and benchmarks/: {stale}: run `make readme`"


def test_a_table_typed_over_is_caught(monkeypatch):
    monkeypatch.chdir(REPO)
    tool = _readme_tool()
    text = tool.refresh((REPO / "docs" / "power.md").read_text())
    typed = text.replace("<!-- harm:begin -->\n", "<!-- harm:begin -->\n| a number typed by hand |\n", 1)
    assert typed != text
    assert _block(tool.refresh(typed), "harm") != _block(typed, "harm")


def test_the_readme_is_short():
    size = len((REPO / "README.md").read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size:,} bytes: move the detail to a page under docs/"


def test_the_readmes_first_screen_shows_how_to_set_up_test_and_check_a_batch():
    """Issue 22: a newcomer finds the set-up, the tests and how to check a batch without scrolling
    (a first screen: 40 lines)."""
    first_screen = (REPO / "README.md").read_text().splitlines()[:40]
    commands = [line.split("#")[0].strip() for line in first_screen]
    assert "make run" in commands and "make test" in commands
    assert any(command.startswith(".venv/bin/shiftwatch check ") for command in commands), first_screen


def test_the_docs_site_builds_strict(tmp_path):
    site = tmp_path / "site"
    result = _mkdocs_build(REPO, site)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    # The README is not part of the site; its links into docs/ must still land on a page and a heading.
    readme = (REPO / "README.md").read_text()
    for page, anchor in re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", readme):
        html = site / f"{page}.html"
        assert html.exists(), f"README.md links to docs/{page}.md, which the site does not have"
        assert not anchor or f'id="{anchor}"' in html.read_text(), f"README.md: no #{anchor} in docs/{page}.md"
    assert (site / "metrics" / "plots" / "page.png").exists(), "the committed plots are not in the site"


def test_a_broken_link_fails_the_docs_build(tmp_path):
    """--strict and mkdocs.yml's validation turn these warnings into a failed build."""
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    (tmp_path / "metrics").symlink_to(REPO / "metrics")
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the nav\n")
    with (tmp_path / "docs" / "results.md").open("a") as page:
        page.write("\n[gone](nowhere.md) and [no such heading](power.md#no-such-heading)\n")
    result = _mkdocs_build(tmp_path, tmp_path / "site")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "nowhere.md" in log and "no-such-heading" in log and "orphan.md" in log, log


def _mkdocs_build(root, site):
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _block(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    return match.group(1) if match else ""


def test_the_pre_commit_hooks_are_valid_and_run_the_makefiles_tools(tmp_path):
    """.pre-commit-config.yaml: pre-commit accepts it, its hooks are local (nothing downloaded),
    and they run the tools `make lint` and `make test-fast` run; a broken copy is refused."""
    import yaml

    pre_commit = Path(sys.executable).parent / "pre-commit"
    config = REPO / ".pre-commit-config.yaml"
    assert subprocess.run([pre_commit, "validate-config", config], capture_output=True).returncode == 0
    hooks = {hook["id"]: hook for repo in yaml.safe_load(config.read_text())["repos"] for hook in repo["hooks"]}
    assert {repo["repo"] for repo in yaml.safe_load(config.read_text())["repos"]} == {"local"}
    makefile = (REPO / "Makefile").read_text()
    assert hooks["ruff"]["entry"] == ".venv/bin/ruff check" and "$(BIN)/ruff check ." in makefile
    assert hooks["ruff-format"]["entry"] == ".venv/bin/ruff format" and "$(BIN)/ruff format --check ." in makefile
    assert hooks["test-fast"]["entry"] == "make test-fast" and "\ntest-fast:" in makefile
    broken = tmp_path / "broken.yaml"
    broken.write_text(config.read_text().replace("entry: make test-fast", "entry: [make, test-fast]"))
    assert subprocess.run([pre_commit, "validate-config", broken], capture_output=True).returncode != 0
