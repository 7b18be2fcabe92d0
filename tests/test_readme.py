"""The README's stage diagram is the workflow's current rule graph."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGE = re.compile(r"^\s*(id\d+) --> (id\d+)$", re.M)
NODE = re.compile(r"^\s*(id\d+)\[(\w+)\]$", re.M)


def _edges(text: str) -> set[tuple[str, str]]:
    names = dict(NODE.findall(text))
    return {(names[a], names[b]) for a, b in EDGE.findall(text)}


def test_readme_rulegraph_is_current():
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--rulegraph", "mermaid-js", "--cores", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```mermaid", 1)[1].split("```", 1)[0]
    assert _edges(block) == _edges(done.stdout)
    assert _edges(block)
