"README.md is rendered from index.ipynb (`make readme`); they must agree, and it must give the two commands."
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_rendered_from_index():
    body, _ = MarkdownExporter().from_notebook_node(nbformat.read(ROOT / "index.ipynb", as_version=4))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert body.strip() == readme.strip(), "README.md is stale: run `make readme` after editing index.ipynb"


def test_readme_gives_both_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
