"""The README's result tables are written by ``benchmarks/readme_tables.py`` from
``benchmarks/results/`` and nobody else: each block must equal what the script writes."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_tables as rt


@pytest.mark.parametrize("method", list(rt.BLOCKS))
def test_readme_block_is_what_the_results_write(method):
    readme = (rt.ROOT / "README.md").read_text()
    assert rt.blocks_in(readme, method) == rt.BLOCKS[method](), (
        f"README.md's {method} block differs from benchmarks/results: run "
        f"`python benchmarks/readme_tables.py {method}` (never edit the block by hand)"
    )


def test_every_run_names_its_device_and_commit():
    for method, write in rt.BLOCKS.items():
        text = write()
        assert "benchmarks/results/" in text and ("commit" in text), method


def test_rewrite_replaces_only_the_block():
    readme = "intro\n<!-- fusion:begin -->\nold\n<!-- fusion:end -->\nrest\n"
    assert rt.rewrite(readme, "fusion", "new") == (
        "intro\n<!-- fusion:begin -->\nnew\n<!-- fusion:end -->\nrest\n"
    )
    with pytest.raises(SystemExit, match="no <!-- distill:begin -->"):
        rt.rewrite(readme, "distill", "new")


def test_fault_table_counts_the_collected_cases():
    """The README's fault table (cases per file, and the total) matches what pytest
    collects in tests/faults."""
    import re
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "tests/faults"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    collected: dict[str, int] = {}
    for line in out.splitlines():
        if "::" in line:
            name = line.split("::", 1)[0].rsplit("/", 1)[-1]
            collected[name] = collected.get(name, 0) + 1
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    listed = {
        m[1]: int(m[2]) for m in re.finditer(r"\| [^|]*\(`(test_\w+\.py)`\) \| (\d+) \|", section)
    }
    assert listed == collected, "update the README's fault table (## Reliability)"
    assert f"({sum(collected.values())} cases" in section
