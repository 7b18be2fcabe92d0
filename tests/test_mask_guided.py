"""Segmentation-guided diffusion (workflow/diffusion/mask_guided.py): mask ablation, per-image seeding, bad
masks, resume, and its rules in the DAG (a Snakemake dry run)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from configs import validated
from PIL import Image
from test_workflow_data import ROOT, snakemake, write_config

from workflow.common.errors import InputError
from workflow.common.interruption import Stopped, StopRequest
from workflow.diffusion import mask_guided
from workflow.diffusion.generators import generators, name_pattern, names_of_kind, trained_mask_guided
from workflow.diffusion.settings import MaskGuidedSampleSettings, MaskGuidedTrainSettings

CLASSES = ("background", "lungs", "heart", "devices")
TINY = {
    "resolution": 16,
    "batch_size": 4,
    "steps": 3,
    "warmup_steps": 1,
    "timesteps": 50,
    "channels": [8, 8],
    "attention_levels": [False, True],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    "checkpoint_steps": 2,
}


def config(train: dict | None = None, sample: dict | None = None) -> dict:
    section = {"train": TINY | (train or {}), "sample": {"steps": 3} | (sample or {})}
    return validated({"dataset": {"mask_classes": list(CLASSES)}, "diffusion": {"mask_guided": section}})


def striped_masks(images: int, size: int = 16) -> torch.Tensor:
    """Masks with every class present: four horizontal bands of class 0..3."""
    band = torch.arange(size) * len(CLASSES) // size
    return band[:, None].expand(size, size).expand(images, size, size).clone()


def test_ablation_drops_exactly_the_classes_it_says():
    masks = striped_masks(3)
    dropped = torch.tensor(
        [[False, True, False, True], [False, False, False, False], [False, True, True, True]]
    )
    ablated = mask_guided.ablate(masks, dropped)
    for image in range(3):
        for c in range(len(CLASSES)):
            where = masks[image] == c
            expected = 0 if dropped[image, c] else c
            assert (ablated[image][where] == expected).all()
        assert set(ablated[image].unique().tolist()) == {0} | {
            c for c in range(len(CLASSES)) if not dropped[image, c]
        }
    one_hot = mask_guided.conditioning(masks, dropped, len(CLASSES))
    assert one_hot.shape == (3, len(CLASSES), 16, 16)
    assert one_hot[0, 1].sum() == 0 and one_hot[0, 3].sum() == 0 and one_hot[0, 2].sum() > 0
    assert torch.equal(one_hot.sum(1), torch.ones(3, 16, 16))


def test_ablation_draws_per_image_never_background_at_the_rate_asked():
    drawn = mask_guided.draw_ablation(torch.Generator().manual_seed(0), 4000, len(CLASSES), 0.5)
    assert not drawn[:, 0].any()
    assert drawn[:, 1:].float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert len({tuple(row.tolist()) for row in drawn}) == 8  # images get their own draws, not the batch's
    assert not mask_guided.draw_ablation(torch.Generator().manual_seed(0), 10, 4, 0.0).any()


class Spy(torch.nn.Module):
    """A denoiser predicting zero noise that records the mask channels it is given at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: None = None) -> torch.Tensor:
        self.seen.append(x[:, 1:].clone())
        return x[:, :1] * self.weight


def test_sampling_ablation_is_drawn_once_per_image_and_kept_at_every_step():
    settings = MaskGuidedSampleSettings.of(config(sample={"ablation_probability": 0.5, "steps": 5}))
    spy, masks, seeds = Spy(), striped_masks(6), list(range(6))
    mask_guided.generate(spy, masks, seeds, settings, timesteps=50)
    assert len(spy.seen) == 5
    assert all(torch.equal(seen, spy.seen[0]) for seen in spy.seen)
    present = spy.seen[0].sum((2, 3)) > 0  # B x classes: which classes each image was conditioned on
    assert len({tuple(row.tolist()) for row in present}) > 1  # some images lost other classes than others
    again = Spy()
    mask_guided.generate(again, masks[2:3], seeds[2:3], settings, timesteps=50)  # alone: the same draw
    assert torch.equal(again.seen[0][0], spy.seen[0][2])


def test_same_seed_same_image_whatever_the_batch():
    settings = MaskGuidedTrainSettings.of(config())
    torch.manual_seed(0)
    model = mask_guided.network(mask_guided.architecture_of(settings)).eval()
    sample = MaskGuidedSampleSettings.of(config())
    masks = striped_masks(3, size=8)
    first = mask_guided.generate(model, masks, [7, 8, 9], sample, timesteps=50)
    alone = mask_guided.generate(model, masks[1:2], [8], sample, timesteps=50)
    assert torch.allclose(first[1], alone[0], atol=1e-5)
    assert not torch.allclose(first[0], first[1])
    assert mask_guided.image_seed(0, "p1/s1/v1") == mask_guided.image_seed(0, "p1/s1/v1")
    assert mask_guided.image_seed(0, "p1/s1/v1") != mask_guided.image_seed(1, "p1/s1/v1")


def write_pair(folder, mask: np.ndarray, size: int = 16) -> tuple[str, str]:
    image, mask_file = folder / "image.png", folder / "image_mask.png"
    Image.fromarray(np.full((size, size), 128, np.uint8)).save(image)
    Image.fromarray(mask.astype(np.uint8)).save(mask_file)
    return str(image), str(mask_file)


def test_bad_masks_are_refused_naming_the_file(tmp_path):
    image, mask = write_pair(tmp_path, np.full((16, 16), 7))
    with pytest.raises(InputError, match=r"image_mask\.png: class ids \[7\] are not in dataset.mask_classes"):
        mask_guided.read_pair(image, mask, len(CLASSES), 16)
    image, mask = write_pair(tmp_path, np.zeros((12, 16)))
    with pytest.raises(InputError, match=r"image_mask\.png: mask shape \(12, 16\) does not match"):
        mask_guided.read_pair(image, mask, len(CLASSES), 16)
    image, mask = write_pair(tmp_path, striped_masks(1)[0].numpy())
    pixels, classes = mask_guided.Pairs(*(t[None] for t in mask_guided.read_pair(image, mask, 4, 8))).batch(
        [0]
    )
    assert pixels.shape == (1, 1, 8, 8) and (pixels - (128 / 127.5 - 1)).abs().max() < 0.01
    assert classes.dtype == torch.int64 and set(classes.unique().tolist()) == set(range(len(CLASSES)))


def test_a_stopped_training_resumes_where_it_stopped(tmp_path):
    light = {"steps": 2, "batch_size": 2, "attention_levels": [False, False], "checkpoint_steps": 1}
    settings = MaskGuidedTrainSettings.of(config(train=light))
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    pairs = mask_guided.Pairs(images, striped_masks(5, size=8).to(torch.uint8))
    cpu = torch.device("cpu")
    _, straight = mask_guided.train(pairs, settings, "a", str(tmp_path / "straight"), cpu, StopRequest())
    with pytest.raises(Stopped):
        mask_guided.train(pairs, settings, "b", str(tmp_path / "resumed"), cpu, StopRequest(15))
    _, resumed = mask_guided.train(pairs, settings, "b", str(tmp_path / "resumed"), cpu, StopRequest())
    assert len(straight) == settings.steps
    assert resumed == pytest.approx(straight, rel=1e-5)


def test_generator_kind_defaults_to_sd_and_each_kind_has_its_rules_pattern():
    study = validated({"diffusion": {"generators": {"sd-a": {}, "seg": {"kind": "mask-guided"}}}})
    assert [g.kind for g in generators(study).values()] == ["sd", "mask-guided"]
    assert names_of_kind(study, "mask-guided") == ["seg"]
    assert {g.kind for g in generators(validated({})).values()} == {"sd"}  # existing configs: unchanged
    assert re.fullmatch(name_pattern(["seg", "a.b"]), "a.b") and not re.fullmatch(
        name_pattern(["a.b"]), "axb"
    )
    assert not re.fullmatch(name_pattern([]), "") and not re.fullmatch(name_pattern([]), "seg")


@pytest.mark.parametrize(
    ("kind", "key", "value"),
    [
        ("mask-guided", "strategies", ["labels"]),
        ("mask-guided", "images_per_prompt", 4),
        ("mask-text", "method", "lora"),
        ("mask-text", "images_per_prompt", 4),
    ],
)
def test_keys_only_stable_diffusion_reads_are_refused_for_pixel_generators(kind, key, value):
    """A pixel generator samples once per real mask, without a fine-tuning method (and a mask-guided one
    without text): these keys were ignored without a word."""
    study = validated({"diffusion": {"generators": {"arm": {"kind": kind, key: value}}}})
    with pytest.raises(
        InputError, match=rf"diffusion\.generators\.arm: \['{key}'\] do not apply to kind {kind}"
    ):
        generators(study)


def job(plan: str, rule: str, generator: str) -> str:
    """The block of a dry run's plan describing ``rule``'s job for ``generator``."""
    blocks = [b for b in plan.split("rule ")[1:] if b.startswith(f"{rule}:")]
    return next(b for b in blocks if re.search(f"generator={re.escape(generator)}[,\n]", b))


@pytest.mark.integration
def test_a_mask_guided_generator_feeds_image_metrics_in_the_dag(tmp_path):
    """Next to an SD arm, a mask-guided generator is trained and sampled by its own rules (not the SD
    ones, one sampling job per shard), and its samples reach image quality, mask faithfulness (only its) and
    the report like any generator's; so do a mask-text generator's (DGM-VLC, on its prompt variant's
    captions, mask faithfulness too), its rules asking for a GPU."""
    ablated = {"kind": "mask-guided", "model_from": "seg", "remove_classes": ["devices"]}
    write_config(
        tmp_path,
        diffusion={
            "generators": {
                "sd-lora": {},
                "seg": {"kind": "mask-guided"},
                "seg-no-devices": ablated,
                "dgm": {"kind": "mask-text", "strategies": ["labels"]},
            },
            "mask_guided": {"sample": {"shards": 2}},
            "mask_text": {"sample": {"shards": 3}},
        },
    )
    plan = snakemake(tmp_path, "--dry-run").stdout
    train = job(plan, "train_mask_text", "dgm")
    assert "results/prompts/variants/labels/train.parquet" in train and "gpu=1" in train
    assert "results/models/dgm/train_report.json" in train
    assert plan.count("rule sample_mask_text:") == 3 and "gpu=1" in job(plan, "sample_mask_text", "dgm")
    for shard in range(3):
        assert f"results/samples/dgm/shards/{shard}.parquet" in job(plan, "collect_mask_guided", "dgm")
    for rule in ("image_metrics", "mask_faithfulness"):
        assert "results/samples/dgm/manifest.parquet" in job(plan, rule, "dgm"), rule
    # per-prompt image quality matches the real images by the generator's own prompt ids (those of the
    # study's main table before)
    assert "results/prompts/variants/labels/" in job(plan, "image_metrics", "dgm")
    assert "results/prompts/variants/" not in job(plan, "image_metrics", "sd-lora")
    assert "results/models/seg/train_report.json" in job(plan, "train_mask_guided", "seg")
    assert plan.count("rule train_mask_guided:") == 1  # seg-no-devices samples seg's model
    assert "results/models/seg/model" in job(plan, "sample_mask_guided", "seg-no-devices")
    for shard in range(2):
        assert f"results/samples/seg/shards/{shard}.parquet" in job(plan, "collect_mask_guided", "seg")
    assert plan.count("rule sample_mask_guided:") == 4
    assert "results/samples/seg/manifest.parquet" in job(plan, "collect_mask_guided", "seg")
    for rule in ("image_metrics", "real_vs_synthetic", "conditional_fidelity", "mask_faithfulness"):
        assert "results/samples/seg/manifest.parquet" in job(plan, rule, "seg"), rule
    assert plan.count("rule mask_faithfulness:") == 3 and plan.count("rule train_segmenter:") == 1
    collect = next(b for b in plan.split("rule ") if b.startswith("collect_image_metrics:"))
    assert "results/evaluation/seg/mask_faithfulness.json" in collect
    for rule in ("finetune_sd", "collect_samples"):
        assert "generator=seg" not in "".join(b for b in plan.split("rule ") if b.startswith(f"{rule}:"))
        assert job(plan, rule, "sd-lora")


LIGHT = {"steps": 1, "batch_size": 2, "attention_levels": [False, False], "checkpoint_steps": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A fabricated dataset with masks (classes 0..2) and a one-step mask-guided model trained on it."""
    from classifier_data import fabricate

    from workflow.diffusion import stage

    root = tmp_path_factory.mktemp("trained")
    rows = fabricate(root / "data", n=10)
    dataset = str(root / "dataset.parquet")
    rows.to_parquet(dataset)
    model = root / "model"
    stage.train_mask_guided(
        dataset, MaskGuidedTrainSettings.of(config(train=LIGHT)), 0, str(model), str(root / "report.json"),
        str(root / "loss.png"), str(root / "checkpoints"),
    )  # fmt: skip
    return rows, dataset, str(model)


def sample(trained, out, shards: int = 1, **sample) -> pd.DataFrame:
    """Every shard of the trained model's samples (``sample``: settings), collected into ``out``."""
    from workflow.diffusion import stage

    _, dataset, model = trained
    settings = MaskGuidedSampleSettings.of(
        config(train=LIGHT, sample={"steps": 1, "shards": shards} | sample)
    )
    parts = [str(out / "shards" / f"{k}.parquet") for k in range(shards)]
    for k in range(shards):
        stage.sample_mask_guided(dataset, model, settings, 0, k, str(out / "images" / f"masks{k}"), parts[k])
    stage.collect_mask_guided(parts, str(out / "manifest.parquet"))
    return pd.read_parquet(out / "manifest.parquet")


def test_samples_keep_their_real_patient_so_the_leak_guard_sees_them(trained, tmp_path):
    """Samples of val or test masks were given patient_id ``synthetic/<image id>``: the classifier regimes'
    leak guard then let a test patient's anatomy and labels train the synthetic and mixed classifiers."""
    rows = trained[0]
    samples = sample(trained, tmp_path, split="test")
    test = rows[rows["split"] == "test"]
    assert sorted(samples["patient_id"]) == sorted(test["patient_id"]) and len(test) > 0


def test_two_shards_give_the_images_of_one(trained, tmp_path):
    """Images are seeded per real image: splitting the masks over two sampling jobs changes no image, and the
    collected manifest lists the images in the same order (only the shard folders differ)."""
    one = sample(trained, tmp_path / "one", shards=1)
    two = sample(trained, tmp_path / "two", shards=2)
    assert len(one) == len(trained[0][trained[0]["split"] == "train"]) == len(two)
    assert two["image"].str.contains("/masks1/").any() and two["image"].str.contains("/masks0/").any()
    same = ["image_id", "source_image_id", "seed", "mask_path", "patient_id", "dropped_classes"]
    assert one[same].equals(two[same])
    for a, b in zip(one["image"], two["image"], strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), (a, b)
    assert Path(one["image"][3]).name == Path(two["image"][3]).name


def test_a_shard_outside_the_configured_ones_is_refused(trained, tmp_path):
    from workflow.diffusion import stage

    _, dataset, model = trained
    settings = MaskGuidedSampleSettings.of(config(sample={"shards": 2}))
    with pytest.raises(InputError, match=r"shard 2 is outside 0..1 \(diffusion.mask_guided.sample.shards\)"):
        stage.sample_mask_guided(dataset, model, settings, 0, 2, str(tmp_path / "i"), str(tmp_path / "t"))


def test_edited_masks_lose_the_removed_class_at_every_step_for_every_image():
    """The paper's mask ablation at sampling: with remove_classes [devices] no image is conditioned on the
    devices, and the other classes stay (no random ablation asked)."""
    settings = MaskGuidedSampleSettings.of(config(sample={"remove_classes": ["devices"], "steps": 3}))
    spy = Spy()
    mask_guided.generate(spy, striped_masks(4), [1, 2, 3, 4], settings, timesteps=50)
    for seen in spy.seen:
        present = seen.sum((2, 3)) > 0
        assert not present[:, 3].any() and present[:, :3].all()
    with pytest.raises(InputError, match=r"remove_classes .*: \['background', 'vessels'\] are not classes"):
        MaskGuidedSampleSettings.of(config(sample={"remove_classes": ["vessels", "background"]}))


def test_an_arm_on_edited_masks_samples_another_arms_model_with_its_own_classes_removed():
    arms = {"seg": {"kind": "mask-guided"}, "no-dev": {"kind": "mask-guided", "model_from": "seg"}}
    arms["no-dev"]["remove_classes"] = ["devices"]
    study = validated({"dataset": {"mask_classes": list(CLASSES)}, "diffusion": {"generators": arms}})
    found = generators(study)
    assert [found[n].trained_as for n in arms] == ["seg", "seg"]
    assert trained_mask_guided(study) == ["seg"]
    assert MaskGuidedSampleSettings.of(study, "no-dev").remove_classes == ("devices",)
    assert MaskGuidedSampleSettings.of(study, "seg").remove_classes == ()
    for bad, message in [
        ({"seg": {"kind": "mask-guided", "model_from": "sd"}, "sd": {}}, "seg.model_from: 'sd' is not"),
        ({"seg": {"kind": "mask-guided", "model_from": "seg"}}, "seg.model_from: 'seg' is not"),
        ({"sd": {"remove_classes": ["heart"]}}, "sd: remove_classes and model_from are for kind mask-guided"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            generators(validated({"diffusion": {"generators": bad}}))


def test_samples_name_the_classes_their_masks_lost(trained, tmp_path):
    samples = sample(trained, tmp_path, remove_classes=["heart"])
    assert (samples["dropped_classes"] == "heart").all()
    assert (sample(trained, tmp_path / "full")["dropped_classes"] == "").all()


@pytest.mark.integration
def test_the_demo_trains_a_mask_guided_arm_beside_stable_diffusion(tmp_path):
    """The default config.yaml (issue 15): segmentation-guided diffusion trained on the phantoms' masks and
    sampled once per training mask, judged by mask faithfulness and image quality; the classifier regimes
    train on the SD arm's samples only (classifier.generators)."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    plan = snakemake(tmp_path, "--dry-run").stdout
    assert "results/data/dataset.parquet" in job(plan, "train_mask_guided", "segguided")
    assert "results/models/segguided/model" in job(plan, "sample_mask_guided", "segguided")
    for rule in ("image_metrics", "conditional_fidelity", "mask_faithfulness"):
        assert "results/samples/segguided/manifest.parquet" in job(plan, rule, "segguided"), rule
    assert job(plan, "finetune_sd", "sd-full")
    trained = re.findall(r"results/classifier/(\S+)/model\.pt", plan)
    assert set(trained) == {"real", "synthetic/sd-full"}
