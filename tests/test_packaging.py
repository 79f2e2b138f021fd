"""Every subpackage ships: pyproject lists packages explicitly (adapters/ is mapped to latim_captum.adapters)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    packages_line = re.search(r"^packages = \[(.*?)\]", text, flags=re.M | re.S).group(1)
    listed = set(re.findall(r'"(latim_captum[\w.]*)"', packages_line))
    found = {"latim_captum"} | {
        "latim_captum." + ".".join(p.parent.relative_to(ROOT / "latim_captum").parts)
        for p in (ROOT / "latim_captum").rglob("__init__.py")
        if p.parent != ROOT / "latim_captum"
    }
    found.add("latim_captum.adapters")
    assert found <= listed, f"subpackages missing from pyproject [tool.setuptools] packages: {sorted(found - listed)}"
