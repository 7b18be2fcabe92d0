"""The benchmarks' helpers (benchmarks/): the CLIP tokenizer that lets diffusers' example scripts load
the tiny SD in benchmarks/sd_throughput.py."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from benchmarks.sd_throughput import PROMPTS, clip_byte_tokenizer
from workflow.diffusion import base_models

ROOT = Path(__file__).resolve().parents[1]


def test_clip_byte_tokenizer_loads_as_clip_from_vocab_and_merges(tmp_path: Path) -> None:
    """Only vocab.json and merges.txt are written, CLIPTokenizer reads them back, every prompt tokenises
    without unknown tokens inside SD's 77, wrapped in the start and end ids the tiny text encoder uses."""
    written = clip_byte_tokenizer(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path), model_max_length=base_models.MAX_TOKENS)
    assert len(tokenizer) == len(written) == 2 + 2 * 256
    for prompt in PROMPTS:
        ids = tokenizer(prompt).input_ids
        assert ids == written(prompt).input_ids
        text = base_models.TINY_TEXT
        assert (ids[0], ids[-1]) == (text["bos_token_id"], text["eos_token_id"])
        assert len(ids) <= base_models.MAX_TOKENS
        decoded = tokenizer.decode(ids, skip_special_tokens=True)
        assert decoded.replace(" ", "") == prompt.lower().replace(" ", "")


@pytest.mark.parametrize("script", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_imports(script: str) -> None:
    """A benchmark is run by hand, rarely: at least its imports must hold (editing_speed.py once imported
    names that sd_throughput.py no longer had)."""
    importlib.import_module(f"benchmarks.{script}")
