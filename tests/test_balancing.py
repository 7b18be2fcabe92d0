"""MEP-LDM's prompt and class balancing, generalised to any number of classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow.common.errors import InputError
from workflow.prompts.balancing import balanced_subset, choose, ranked_prompts


def _data(seed: int = 0, n: int = 3000, classes: int = 3) -> tuple[pd.Series, pd.Series]:
    """Classes with skewed sizes and prompts with skewed frequencies; some prompts shared by classes."""
    rng = np.random.default_rng(seed)
    cls = rng.choice(
        [f"class{c}" for c in range(classes)],
        size=n,
        p=np.linspace(1, 2, classes) / np.linspace(1, 2, classes).sum(),
    )
    prompt = [f"type {int(k)}" for k in rng.zipf(1.6, size=n) % 25]
    index = pd.Index(rng.permutation(n) * 3)  # not a range index
    return pd.Series(cls, index=index, dtype="string"), pd.Series(prompt, index=index, dtype="string")


@pytest.mark.parametrize("classes", [1, 2, 3, 5])
def test_equal_images_per_prompt_and_per_class(classes):
    cls, prompt = _data(classes=classes)
    selected, design = balanced_subset(cls, prompt, min_prompts=3, max_images=None, seed=1)
    chosen = pd.DataFrame({"class": cls[selected], "prompt": prompt[selected]})
    per_group = chosen.groupby(["class", "prompt"]).size()
    assert set(per_group) == {design.images_per_prompt}
    assert set(chosen.groupby("class").size()) == {design.prompts_per_class * design.images_per_prompt}
    assert len(per_group) == classes * design.prompts_per_class
    assert int(selected.sum()) == design.images
    assert design.prompts_per_class >= 3


def test_the_design_has_the_most_images():
    cls, prompt = _data()
    ranked = ranked_prompts(cls, prompt)
    design = choose(ranked, 1, None)
    for n in range(1, min(len(r) for r in ranked.values()) + 1):
        m = min(int(r.iloc[n - 1]) for r in ranked.values())
        assert len(ranked) * n * m <= design.images


def test_cap_and_seed():
    cls, prompt = _data()
    first, design = balanced_subset(cls, prompt, 2, max_images=300, seed=7)
    again, _ = balanced_subset(cls, prompt, 2, max_images=300, seed=7)
    other, _ = balanced_subset(cls, prompt, 2, max_images=300, seed=8)
    assert design.images <= 300
    assert first.equals(again)
    assert not first.equals(other)


def test_missing_classes_name_the_config_key():
    cls, prompt = _data(n=200)
    cls.iloc[[3, 9]] = pd.NA
    with pytest.raises(InputError, match=r"2 of 200 have none in prompts\.classes\.column"):
        balanced_subset(cls, prompt, 2, None, seed=0)


def test_too_few_prompts_names_the_config_key():
    cls = pd.Series(["a"] * 6 + ["b"] * 6, dtype="string")
    prompt = pd.Series(["x", "y"] * 3 + ["z"] * 6, dtype="string")
    with pytest.raises(InputError, match=r"min_prompts_per_class = 2, but class 'b' has only 1"):
        balanced_subset(cls, prompt, 2, None, seed=0)
