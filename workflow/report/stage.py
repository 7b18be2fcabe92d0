"""What the study report shows that no stage draws itself: its tables and the real vs synthetic grids.

``snakemake --report results/report.html`` collects every output marked with ``report()`` in the rules
(categories and captions in ``resources/report/``). Snakemake's report shows PNG and HTML files inline and
offers other files (CSV, JSON) only as downloads, so the tables a person should read there are rendered here
as small self-contained HTML pages (rule ``report_tables``):

- ``split_summary.html``: patients, images and finding prevalence per split (from ``split_report.json``);
- ``image_quality.html``: FID, KID and precision/recall overall, per finding and per prompt
  (``fid_per_class.csv``), with the extractor and its weights from ``fid.json``;
- ``classifier_regimes.html``: the comparison across training regimes (``comparison.csv``: test metrics,
  fairness gaps, Grad-CAM focus), one column per regime.

Rule ``real_vs_synthetic`` draws one PNG per finding: real training images with the finding above, synthetic
images generated with it below (drawn with ``report.seed``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from workflow.classifier import figures as plots
from workflow.common.figures import load_gray
from workflow.common.manifest import label_column
from workflow.common.provenance import atomic_path

STYLE = (
    "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
    "td:first-child,th:first-child{text-align:left}p{color:#444;font-size:13px}"
)


def html_page(title: str, note: str, table: pd.DataFrame) -> str:
    """A standalone HTML page: a title, a note and one table (numbers to 4 significant digits)."""
    body = table.to_html(na_rep="", float_format=lambda x: f"{x:.4g}", border=0)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h3>{html.escape(title)}</h3><p>{html.escape(note)}</p>"
        f"{body}</body></html>\n"
    )


def write_page(path: str | Path, title: str, note: str, table: pd.DataFrame) -> None:
    """Write :func:`html_page` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(html_page(title, note, table), encoding="utf-8")


def split_table(split_report: dict) -> pd.DataFrame:
    """One row per split: patients, images, image fraction and the prevalence of every finding."""
    rows = {}
    for split in ("train", "val", "test"):
        entry = split_report[split]
        row = {
            "patients": entry["patients"],
            "images": entry["images"],
            "image fraction": entry["image_fraction"],
        }
        prevalence = {f"prevalence: {name}": value["prevalence"] for name, value in entry["labels"].items()}
        rows[split] = row | prevalence
    return pd.DataFrame.from_dict(rows, orient="index")


def image_quality_table(per_class: pd.DataFrame) -> pd.DataFrame:
    """``fid_per_class.csv`` with a readable index (group, name or prompt) and the metric columns first."""
    names = per_class["prompt"].where(per_class["group"] == "prompt", per_class["name"])
    table = per_class.set_index([per_class["group"], names.rename("name / prompt")])
    columns = ["n_fake", "n_real", "fid", "kid_mean", "kid_std", "precision", "recall", "reason", "warnings"]
    return table[[c for c in columns if c in table]]


def write_tables(
    split_report: str, fid_json: str, fid_table: str, comparison: str, outputs: dict[str, str]
) -> None:
    """The report's three HTML tables (module docstring); ``outputs`` maps split/image_quality/regimes to
    their paths."""
    split = json.loads(Path(split_report).read_text())
    write_page(
        outputs["split"],
        "Patient-level split",
        f"Seeded multilabel iterative stratification (split seed {split['provenance']['seeds']['split']}); "
        "no patient is in two splits.",
        split_table(split),
    )
    fid = json.loads(Path(fid_json).read_text())
    extractor = fid["extractor"]
    write_page(
        outputs["image_quality"],
        "Image quality of the synthetic set",
        f"Synthetic vs real {fid['reference']['split']} split; features: {extractor['kind']} "
        f"({extractor['weights']}), resize: {fid['resize_policy']['resize']}; seed {fid['seed']}.",
        image_quality_table(pd.read_csv(fid_table)),
    )
    regimes = pd.read_csv(comparison).set_index("regime").T
    write_page(
        outputs["regimes"],
        "Classifiers by training regime",
        "All metrics on the real test split; thresholds and model selection on the real validation split. "
        "Fairness columns: largest gap over subgroups; cam_*: Grad-CAM focus.",
        regimes,
    )


def _pick(frame: pd.DataFrame, name: str, count: int, rng: np.random.Generator) -> list[str]:
    column = label_column(name)
    if column not in frame:
        return []
    paths = frame.loc[frame[column] == 1, "image"].astype(str).to_numpy()
    return sorted(rng.choice(paths, size=min(count, len(paths)), replace=False).tolist())


def real_vs_synthetic(
    dataset: str, samples: str, labels: Sequence[str], out_dir: str, per_row: int, seed: int
) -> list[str]:
    """One PNG per finding in ``out_dir``: up to ``per_row`` real training images with the finding (top row)
    and synthetic images whose labels have it (bottom row); findings without either are left out. Returns
    the files written."""
    real = pd.read_parquet(dataset)
    real = real[real["split"] == "train"]
    synthetic = pd.read_parquet(samples)
    rng = np.random.default_rng(seed)
    size = 128
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, name in enumerate(labels):
        rows = [
            ("real", _pick(real, name, per_row, rng)),
            ("synthetic", _pick(synthetic, name, per_row, rng)),
        ]
        if not any(paths for _, paths in rows):
            continue
        cells: list[tuple[np.ndarray, str] | None] = []
        for kind, paths in rows:
            gray = [load_gray(p, size, Image.Resampling.BICUBIC) for p in paths]
            cells += [(np.repeat(g[..., None], 3, axis=-1), kind) for g in gray]
            cells += [None] * (per_row - len(paths))
        path = out / f"{index:02d}_{name.replace(' ', '_')}.png"
        title = f"{name}: real training images (top) vs synthetic (bottom)"
        plots.image_grid(cells, str(path), title, columns=per_row, empty="no image")
        written.append(str(path))
    return written
