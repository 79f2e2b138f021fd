"""Every ``.. code-block:: python`` in the documentation runs as written (the pages promise runnable examples).

The blocks of one page run in order in one namespace, as a reader would paste them."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", re.MULTILINE)


def _pages():
    for page in sorted(DOCS.glob("*.rst")):
        blocks = [textwrap.dedent(m.group(1)) for m in BLOCK.finditer(page.read_text())]
        if blocks:
            yield pytest.param(blocks, id=page.stem)


@pytest.mark.parametrize("blocks", list(_pages()))
def test_docs_examples_run(blocks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for idx, code in enumerate(blocks):
        exec(compile(code, f"<docs block {idx}>", "exec"), namespace)


def test_readme_captum_side_by_side_runs(capsys):
    """The README's Captum block (Layer IG beside ALTI-Logit) runs as written and prints the shapes it promises."""
    readme = (DOCS.parent / "README.md").read_text()
    section = readme.split("## Captum", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, "<README Captum block>", "exec"), namespace)
    shapes = capsys.readouterr().out.splitlines()[0]
    assert shapes == "torch.Size([2, 6, 64]) torch.Size([2, 6]) torch.Size([2, 6])"
    assert float(namespace["delta"].abs().max()) < 1e-3
    assert bool((namespace["attr"][1, 4:] == 0).all())


def test_every_class_page_has_an_example():
    pages = {p.values[0] and p.id for p in _pages()}
    assert {"quickstart", "latim_l2", "latim_alti", "latim_alti_logit", "llm", "comparison", "custom_methods"} <= pages
