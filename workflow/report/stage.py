"""The report stage: what the study report shows that no stage draws itself, its tables and the real vs
synthetic grids. One function per rule of ``rules/report.smk``, named after it.

``snakemake --report results/report.html`` collects every output marked with ``report()`` in the rules
(categories and captions in ``resources/report/``). Snakemake's report shows PNG and HTML files inline and
offers other files (CSV, JSON) only as downloads, so the tables a person should read there are rendered here
as small self-contained HTML pages (:func:`report_tables`):

- ``split_summary.html``: patients, images and finding prevalence per split (from ``split_report.json``);
- ``image_quality.html``: FID, KID and precision/recall of every generator and extractor (feature space),
  overall, per finding and per prompt (``fid_per_class.csv``), with the extractors and their weights from
  ``fid.json``, the conditional fidelity of every generator (:func:`conditional_table`) and the mask
  faithfulness of every mask-guided generator (:func:`faithfulness_table`) and the volume similarity of
  every 3D one (:func:`volume_table`);
- ``classifier_regimes.html``: the comparison across classifier runs (``comparison.csv``: test metrics,
  fairness gaps, Grad-CAM focus), one column per run;
- ``counterfactuals.html`` (with ``editing.enabled``): the soundness of every editing method's counterfactual
  set, per edit type and overall (:func:`counterfactual_tables`, :func:`soundness_table`).

:func:`real_vs_synthetic` draws, per generator, one PNG per finding: real training images with the finding
above, the generator's images generated with it below (drawn with ``report.seed``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from workflow.common.figures import image_grid, load_image
from workflow.common.files import atomic_output, write_text
from workflow.common.manifest import label_column
from workflow.report.settings import ReportSettings

STYLE = (
    "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}"
    "td:first-child,th:first-child{text-align:left}p{color:#444;font-size:13px}"
)


Section = tuple[str, str, pd.DataFrame]
"""A titled table with a note under its title."""


def html_page(title: str, note: str, table: pd.DataFrame, more: Sequence[Section] = ()) -> str:
    """A standalone HTML page: a title, a note and a table, then any ``more`` sections (numbers to 4
    significant digits)."""
    body = ""
    for heading, text, frame in ((title, note, table), *more):
        rendered = frame.to_html(na_rep="", float_format=lambda x: f"{x:.4g}", border=0)
        body += f"<h3>{html.escape(heading)}</h3><p>{html.escape(text)}</p>{rendered}"
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def write_page(
    path: str | Path, title: str, note: str, table: pd.DataFrame, more: Sequence[Section] = ()
) -> None:
    """Write :func:`html_page` atomically."""
    write_text(path, html_page(title, note, table, more))


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
    """``fid_per_class.csv`` with a readable index (generator, extractor when the table has one, group, name
    or prompt) and the metrics."""
    names = per_class["prompt"].where(per_class["group"] == "prompt", per_class["name"])
    levels = [per_class[c] for c in ("generator", "extractor", "group") if c in per_class]
    table = per_class.set_index([*levels, names.rename("name / prompt")])
    columns = ["n_fake", "n_real", "fid", "kid_mean", "kid_std", "precision", "recall", "reason", "warnings"]
    return table[[c for c in columns if c in table]]


def conditional_table(fid: dict) -> pd.DataFrame:
    """One row per generator and finding (then the macro rows): the real classifier's AUROC on the samples
    against their prompts' labels, its CI, and its AUROC on the real test split."""
    rows = []
    for generator, section in fid["generators"].items():
        result = section.get("conditional_fidelity")
        if result is None:
            continue
        for name, row in result["labels"].items():
            low, high = row.get("auroc_ci") or (None, None)
            rows.append(
                {"generator": generator, "finding": name, "n": row["n"], "positives": row["positives"]}
                | {"AUROC on samples": row["auroc"], "CI low": low, "CI high": high}
                | {"AUROC on real test": row["real_test_auroc"]}
            )
        detected = result["macro_detected"]
        rows.append(
            {"generator": generator, "finding": "macro", "AUROC on samples": result["macro"]["auroc"]}
        )
        rows.append(
            {
                "generator": generator,
                "finding": f"macro, real test AUROC >= {detected['min_real_auroc']}",
                "AUROC on samples": detected["auroc"],
            }
        )
    return pd.DataFrame(rows).set_index(["generator", "finding"]) if rows else pd.DataFrame()


def faithfulness_table(fid: dict) -> pd.DataFrame:
    """One row per mask-guided generator and mask class: the segmenter's Dice on the samples against their
    conditioning masks, the images that had the class, the fraction of pixels it still finds of the class in
    images whose conditioning left it out, and its own Dice on the real test split (the ceiling)."""
    rows = []
    for generator, section in fid["generators"].items():
        result = section.get("mask_faithfulness")
        if result is None:
            continue
        real = (result.get("real_test") or {}).get("classes", {})
        for name, row in result["classes"].items():
            rows.append(
                {"generator": generator, "class": name, "n": row["n"], "Dice on samples": row["dice"]}
                | {"pixels found when left out": row["absent_pixels"]}
                | {"Dice on real test": real.get(name, {}).get("dice")}
            )
    return pd.DataFrame(rows).set_index(["generator", "class"]) if rows else pd.DataFrame()


def volume_table(fid: dict) -> pd.DataFrame:
    """One row per 3D generator: the mean and spread of its volumes' MS-SSIM with the real volumes of the
    same label volumes, how many volumes and at how many scales."""
    rows = [
        {"generator": generator, "volumes": result["volumes"]}
        | {"MS-SSIM mean": result["ms_ssim_mean"], "MS-SSIM std": result["ms_ssim_std"]}
        | {"scales": ", ".join(map(str, result["scales"]))}
        for generator, section in fid["generators"].items()
        if (result := section.get("volume_similarity")) is not None
    ]
    return pd.DataFrame(rows).set_index("generator") if rows else pd.DataFrame()


def report_tables(
    split_report: str,
    fid: str,
    fid_table: str,
    comparison: str,
    split_page: str,
    image_quality_page: str,
    regimes_page: str,
) -> None:
    """The report's three HTML tables (module docstring)."""
    split = json.loads(Path(split_report).read_text())
    write_page(
        split_page,
        "Patient-level split",
        f"Seeded multilabel iterative stratification (split seed {split['provenance']['seeds']['split']}); "
        "no patient is in two splits.",
        split_table(split),
    )
    metrics = json.loads(Path(fid).read_text())
    quality = next(iter(metrics["generators"].values()))
    spaces = [space["extractor"] for space in quality["feature_spaces"].values()]
    features = "; ".join(f"{extractor['kind']} ({extractor['weights']})" for extractor in spaces)
    comparable = " Values of different extractors are not comparable." if len(spaces) > 1 else ""
    conditional = conditional_table(metrics)
    more = [] if conditional.empty else [(
        "Conditional fidelity: does each image show what its prompt asked for?",
        "The classifier trained on real images scores every synthetic image against the labels of its "
        "prompt (AUROC, percentile bootstrap CI over the images), beside its own AUROC on the real test "
        "split (the ceiling); a finding it cannot see on real images says nothing about the samples.",
        conditional,
    )]  # fmt: skip
    faithfulness = faithfulness_table(metrics)
    if not faithfulness.empty:
        more.append((
            "Mask faithfulness: does each image follow the mask it was generated from?",
            "A segmentation network (MONAI UNet) trained on the real training images and masks segments "
            "every image of a mask-guided generator; Dice per class against its conditioning mask (less "
            "the classes its conditioning left out), beside the network's Dice on the real test split.",
            faithfulness,
        ))  # fmt: skip
    volumes = volume_table(metrics)
    if not volumes.empty:
        more.append((
            "Volume similarity: 3D structure of the generated volumes",
            "MS-SSIM (Wang et al. 2003; as many scales as the volumes allow) of each generated volume with "
            "the real volume whose label volume conditioned it, both through the real volume's window.",
            volumes,
        ))  # fmt: skip
    write_page(
        image_quality_page,
        "Image quality of the synthetic sets",
        f"Each generator's images vs the real {quality['reference']['split']} split; features: "
        f"{features}, resize: {quality['resize_policy']['resize']}; seed {quality['seed']}.{comparable}",
        image_quality_table(pd.read_csv(fid_table)),
        more,
    )
    runs = pd.read_csv(comparison).set_index("run").T
    write_page(
        regimes_page,
        "Classifiers by training run",
        "All metrics on the real test split; thresholds and model selection on the real validation split. "
        "Fairness columns: largest gap over subgroups; cam_*: Grad-CAM focus.",
        runs,
    )


def _pick(frame: pd.DataFrame, name: str, count: int, rng: np.random.Generator) -> list[str]:
    column = label_column(name)
    if column not in frame:
        return []
    paths = frame.loc[frame[column] == 1, "image"].astype(str).to_numpy()
    return sorted(rng.choice(paths, size=min(count, len(paths)), replace=False).tolist())


def real_vs_synthetic(
    dataset: str, samples: str, labels: Sequence[str], settings: ReportSettings, grids: str
) -> list[str]:
    """One PNG per finding in the folder ``grids``: up to ``images_per_row`` real training images with the
    finding (top row) and synthetic images whose labels have it (bottom row), drawn with ``seed``; findings
    without either are left out. Returns the names of the files written."""
    real = pd.read_parquet(dataset)
    real = real[real["split"] == "train"]
    synthetic = pd.read_parquet(samples)
    rng = np.random.default_rng(settings.seed)
    per_row = settings.images_per_row
    size = 128
    with atomic_output(grids) as out:
        out.mkdir()
        return [
            name
            for index, finding in enumerate(labels)
            if (name := _grid(real, synthetic, finding, index, per_row, size, rng, out))
        ]


def _grid(
    real: pd.DataFrame,
    synthetic: pd.DataFrame,
    name: str,
    index: int,
    per_row: int,
    size: int,
    rng: np.random.Generator,
    out: Path,
) -> str | None:
    """Draw the grid of finding ``name`` into ``out``; its file name, or None without images."""
    rows = [
        ("real", _pick(real, name, per_row, rng)),
        ("synthetic", _pick(synthetic, name, per_row, rng)),
    ]
    if not any(paths for _, paths in rows):
        return None
    cells: list[tuple[np.ndarray, str] | None] = []
    for kind, paths in rows:
        cells += [(load_image(p, size, "rgb", Image.Resampling.BICUBIC), kind) for p in paths]
        cells += [None] * (per_row - len(paths))
    path = out / f"{index:02d}_{name.replace(' ', '_')}.png"
    title = f"{name}: real training images (top) vs synthetic (bottom)"
    image_grid(cells, path, title, columns=per_row)
    return path.name


SOUNDNESS_COLUMNS = {
    "edits": "edits",
    "flip_rate": "flip rate",
    "mean_change_toward_target": "classifier change toward target",
    "mean_abs_change": "mean |change|",
    "outside_mean_abs_change": "|change| outside changed region",
    "reconstruction_psnr": "reconstruction PSNR",
    "truth_edited_mae_inside": "MAE to truth, finding region",
    "truth_edited_mae_outside": "MAE to truth, elsewhere",
    "truth_source_mae_inside": "unedited MAE to truth, finding region",
    "truth_edited_ssim_outside": "SSIM to truth, elsewhere",
}
"""Of a soundness block (``soundness.json``), the columns of the report's table and their headings."""


def soundness_table(reports: dict[str, dict]) -> pd.DataFrame:
    """One row per editing method and edit type (then ``overall``): the headline soundness numbers."""
    rows = []
    for method, report in reports.items():
        for name, block in [*report["per_edit"].items(), ("overall", report["overall"])]:
            values = block | (block.get("effectiveness") or {}) | {"edits": block["edits"]}
            rows.append(
                {"method": method, "edit": name} | {h: values.get(k) for k, h in SOUNDNESS_COLUMNS.items()}
            )
    return pd.DataFrame(rows).set_index(["method", "edit"]).astype(float) if rows else pd.DataFrame()


def counterfactual_tables(methods: Sequence[str], soundness: Sequence[str], page: str) -> None:
    """The counterfactual soundness page: every method's :func:`soundness_table` and the edits refused."""
    reports = {m: json.loads(Path(p).read_text()) for m, p in zip(methods, soundness, strict=True)}
    refused = pd.DataFrame(
        [
            {"method": m, "edit": r["edit"], "reason": r["reason"]}
            for m, rep in reports.items()
            for r in rep["skipped"]
        ]
    )
    refused = refused.value_counts().rename("edits").to_frame() if not refused.empty else refused
    weights = "; ".join(f"{m}: {rep['weights']['editor']}" for m, rep in reports.items())
    write_page(
        page,
        "Counterfactual soundness",
        "Effectiveness: the classifier trained on real images, its probability of the edited finding before "
        "and after (flip rate at its validation threshold). Minimality: the change outside the changed "
        "region. Against the truth (demo phantoms): the error of the edit against the true counterfactual, "
        f"inside and outside the finding's region, beside the unedited image's. Editors: {weights}.",
        soundness_table(reports),
        [("Edits not run", "Senseless edits the plan refused, with the reason.", refused)],
    )
