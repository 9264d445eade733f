"""The README's results tables come from tools/readme.py, never typed by hand: the committed
README must be exactly what the committed metrics and benchmark files give."""
import importlib.util
import re

from conftest import REPO


def _readme_tool():
    spec = importlib.util.spec_from_file_location("readme_tool", REPO / "tools" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tables_are_the_committed_metrics(monkeypatch):
    monkeypatch.chdir(REPO)  # the tool reads metrics/ and benchmarks/ relative to the repository
    tool = _readme_tool()
    text = (REPO / "README.md").read_text()
    missing = [name for name in tool.TABLES if f"<!-- {name}:begin -->" not in text]
    assert not missing, f"README.md lost the markers of the tables {missing}"
    refreshed = tool.refresh(text)
    stale = [name for name in tool.TABLES if _block(text, name) != _block(refreshed, name)]
    assert not stale, f"README.md's tables {stale} differ from metrics/ and benchmarks/: run `make readme`"


def test_a_table_typed_over_is_caught(monkeypatch):
    monkeypatch.chdir(REPO)
    tool = _readme_tool()
    text = tool.refresh((REPO / "README.md").read_text())
    typed = text.replace("<!-- harm:begin -->\n", "<!-- harm:begin -->\n| a number typed by hand |\n", 1)
    assert _block(tool.refresh(typed), "harm") != _block(typed, "harm")


def _block(text: str, name: str) -> str:
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", text, re.S)
    return match.group(1) if match else ""
