"""The study report (issue 6): the whole default DAG on tiny data, `snakemake --report`, and the HTML opened
in a real headless browser (Debian's chromium, installed by the test when missing)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from playwright.sync_api import sync_playwright
from system_packages import SYSTEM_PATH, apt_install
from test_workflow_classifier import CLASSIFIER
from test_workflow_data import from_data_stage, snakemake

from workflow.common.manifest import label_column
from workflow.report import stage
from workflow.report.settings import ReportSettings


@pytest.fixture(scope="module")
def study(data_stage, tmp_path_factory) -> Path:
    """The whole default DAG (every stage, tiny settings) and its report in one working directory."""
    workdir = tmp_path_factory.mktemp("report")
    config = from_data_stage(data_stage, workdir, classifier=CLASSIFIER)
    config["diffusion"]["train"].update(max_steps=2, checkpoint_steps=2)
    config["diffusion"]["sample"].update(max_prompts=6, images_per_prompt=2, shards=1, steps=2)
    config["report"] = {"images_per_row": 3, "seed": 1}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir)
    snakemake(workdir, "--report", "results/report.html")
    return workdir


@pytest.mark.integration
def test_report_tables_show_the_study(study):
    split = json.loads((study / "results/data/split_report.json").read_text())
    page = (study / "results/report/split_summary.html").read_text()
    train_row = page.split("<th>train</th>", 1)[1].split("</tr>", 1)[0]
    assert f"<td>{split['train']['patients']}</td>" in train_row
    assert f"seed {split['provenance']['seeds']['split']}" in page
    quality = (study / "results/report/image_quality.html").read_text()
    assert "penultimate features of the classifier results/classifier/real/model.pt" in quality
    assert "<th>overall</th>" in quality and "Conditional fidelity" in quality
    assert "<th>macro, real test AUROC &gt;= 0.9</th>" in quality
    regimes = (study / "results/report/classifier_regimes.html").read_text()
    assert "<th>real</th>" in regimes and "<th>macro_auroc</th>" in regimes


# What the report lists under each category (and subcategory): file names of its results.
EXPECTED = {
    ("1. Data", None): ["split_summary.html"],
    ("2. Prompts", None): ["cluster_00.png"],  # its one subcategory is skipped by the report
    # one subcategory per generator; the demo's one (sd-full) is skipped by the report too
    ("3. Diffusion", None): ["loss.png", "validation.png", "00_No_Finding.png"],
    ("4. Image quality", None): ["image_quality.html"],
    ("5. Classifiers", "All runs"): ["classifier_regimes.html"],
    ("5. Classifiers", "real"): ["roc.png", "subgroup_auroc.png", "cam_examples.png"],
    ("6. Counterfactuals", "All methods"): ["counterfactuals.html"],
    ("6. Counterfactuals", "sdedit"): ["examples.png", "cross_fades.html"],
}


@pytest.mark.integration
def test_report_opens_in_a_browser_without_console_errors(study):
    """Debian's chromium, driven by Playwright, opens the self-contained report (everything inlined; no
    network). The page throws nothing and logs no console error (Snakemake's template logs one warning
    of its own: Tailwind's in-browser build); the menu has the general sections and every category, and
    each (sub)category lists its results."""
    apt_install(["chromium"], ["chromium"])
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium", path=SYSTEM_PATH), args=["--no-sandbox"]
        )
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "assert") else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto((study / "results" / "report.html").as_uri())
        menu = page.locator("#app nav").first
        menu.wait_for(timeout=30_000)
        for name in ["Workflow", "Statistics", *(category for category, _ in EXPECTED)]:
            assert name in menu.inner_text(), name
        for (category, subcategory), results in EXPECTED.items():
            menu.get_by_text(category, exact=True).click()
            if subcategory:
                menu.get_by_text(subcategory, exact=True).click()
            listed = menu.inner_text()
            for result in results:
                assert f"/{result}" in listed, (category, subcategory, listed)
            menu.get_by_text("Results", exact=True).click()
        browser.close()
    assert problems == []


def test_split_table_has_counts_and_prevalence():
    entry = {"patients": 2, "images": 3, "image_fraction": 0.5, "labels": {"A": {"prevalence": 0.25}}}
    report = {"train": entry, "val": entry | {"patients": 1}, "test": entry}
    table = stage.split_table(report)
    assert list(table.index) == ["train", "val", "test"]
    assert table.loc["val", "patients"] == 1 and table.loc["test", "prevalence: A"] == 0.25


def test_image_quality_table_names_prompts_by_their_text():
    per_class = pd.DataFrame(
        {
            "generator": ["sd-full"] * 3,
            "group": ["overall", "label", "prompt"],
            "name": ["all", "Edema", "3"],
            "prompt": [None, None, "Chest X-ray showing Edema"],
            "n_fake": [4, 2, 2],
            "n_real": [9, 3, 3],
            "fid": [1.5, None, None],
        }
    )
    table = stage.image_quality_table(per_class)
    assert list(table.index) == [
        ("sd-full", "overall", "all"),
        ("sd-full", "label", "Edema"),
        ("sd-full", "prompt", "Chest X-ray showing Edema"),
    ]
    assert list(table.columns) == ["n_fake", "n_real", "fid"]


def test_image_quality_table_labels_each_feature_space():
    per_class = pd.DataFrame(
        {
            "generator": ["sd-lora"] * 2,
            "extractor": ["inception-v3-compat", "torchvision-inception"],
            "group": ["overall"] * 2,
            "name": ["all"] * 2,
            "prompt": [None, None],
            "fid": [12.5, 3.1],
        }
    )
    table = stage.image_quality_table(per_class)
    assert list(table.index) == [
        ("sd-lora", "inception-v3-compat", "overall", "all"),
        ("sd-lora", "torchvision-inception", "overall", "all"),
    ]
    assert table.index.names == ["generator", "extractor", "group", "name / prompt"]


def test_image_quality_page_names_every_extractor(tmp_path):
    entry = {"patients": 2, "images": 3, "image_fraction": 0.5, "labels": {}}
    split = {"train": entry, "val": entry, "test": entry, "provenance": {"seeds": {"split": 1}}}
    spaces = {
        kind: {"extractor": {"kind": kind, "weights": weights}}
        for kind, weights in [
            ("inception-v3-compat", "TF-FID"),
            ("torchvision-inception", "torchvision IMAGENET1K_V1"),
        ]
    }
    quality = {"reference": {"split": "train"}, "resize_policy": {"resize": "none"}, "seed": 2020}
    fid = {"generators": {"sd-lora": quality | {"feature_spaces": spaces}}}
    (tmp_path / "split.json").write_text(json.dumps(split))
    (tmp_path / "fid.json").write_text(json.dumps(fid))
    rows = {"generator": ["sd-lora"] * 2, "extractor": list(spaces), "group": ["overall"] * 2}
    pd.DataFrame(rows | {"name": ["all"] * 2, "prompt": [None] * 2, "fid": [12.5, 3.1]}).to_csv(
        tmp_path / "fid.csv"
    )
    pd.DataFrame({"run": ["real"], "macro_auroc": [0.7]}).to_csv(tmp_path / "comparison.csv", index=False)
    pages = [str(tmp_path / f"{name}.html") for name in ("split", "quality", "regimes")]
    stage.report_tables(
        *(str(tmp_path / n) for n in ("split.json", "fid.json", "fid.csv", "comparison.csv")), *pages
    )
    page = (tmp_path / "quality.html").read_text()
    assert "inception-v3-compat (TF-FID); torchvision-inception (torchvision IMAGENET1K_V1)" in page
    assert "Values of different extractors are not comparable." in page
    assert "<th>torchvision-inception</th>" in page


def write_images(folder: Path, count: int, labels: dict[str, list[float]], split: str | None) -> pd.DataFrame:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(paths[-1])
    frame = pd.DataFrame({"image": paths} | {label_column(k): v for k, v in labels.items()})
    if split:
        frame["split"] = split
    return frame


def test_real_vs_synthetic_draws_a_grid_per_finding_that_has_images(tmp_path):
    real = write_images(tmp_path / "real", 3, {"A": [1, 1, 0], "B": [0, 0, 0], "C": [0, 1, 0]}, "train")
    synthetic = write_images(tmp_path / "synthetic", 2, {"A": [1, 0], "B": [0, 0], "C": [0, 0]}, None)
    real.to_parquet(tmp_path / "dataset.parquet")
    synthetic.to_parquet(tmp_path / "samples.parquet")
    out = tmp_path / "grids"
    written = stage.real_vs_synthetic(
        str(tmp_path / "dataset.parquet"),
        str(tmp_path / "samples.parquet"),
        ["A", "B", "C"],
        ReportSettings(images_per_row=2, seed=0),
        str(out),
    )
    assert written == ["00_A.png", "02_C.png"]
    assert sorted(p.name for p in out.iterdir()) == written
    with Image.open(out / written[0]) as grid:
        assert grid.format == "PNG"


def test_soundness_table_has_a_row_per_method_and_edit_type_then_overall():
    block = {"edits": 2, "mean_abs_change": 0.1, "effectiveness": {"flip_rate": 0.5, "edits": 2}}
    report = {"per_edit": {"add A": block, "remove A": block}, "overall": block | {"edits": 4}}
    table = stage.soundness_table({"sdedit": report})
    assert list(table.index) == [("sdedit", "add A"), ("sdedit", "remove A"), ("sdedit", "overall")]
    assert (
        table.loc[("sdedit", "overall"), "edits"] == 4 and table.loc[("sdedit", "add A"), "flip rate"] == 0.5
    )
