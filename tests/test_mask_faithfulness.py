"""Mask faithfulness (workflow/evaluation/segmentation.py): Dice per class, the segmenter's seeded resumable
training, the rules' functions on fabricated images and masks, fid.json's section and the report's table."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from classifier_data import fabricate
from configs import validated
from PIL import Image

from workflow.common.interruption import Stopped, StopRequest
from workflow.common.seeding import derive_seed
from workflow.diffusion.mask_guided import Pairs
from workflow.evaluation import segmentation, stage
from workflow.evaluation.settings import MaskFaithfulnessSettings
from workflow.report.stage import faithfulness_table

CLASSES = ("background", "square", "bar")
TINY = {"resolution": 16, "steps": 2, "batch_size": 2, "channels": [4, 8], "num_res_units": 1}


def settings(**changes) -> MaskFaithfulnessSettings:
    study = {"dataset": {"mask_classes": list(CLASSES)}, "evaluation": {"mask_faithfulness": TINY | changes}}
    return MaskFaithfulnessSettings.of(validated(study))


def test_dice_per_class_counts_only_images_with_the_class_and_measures_leftovers():
    target = torch.zeros((2, 4, 4), dtype=torch.long)
    target[:, :2, :2] = 1  # both images: a 2x2 square
    target[0, 3, :] = 2  # only image 0: a bar of 4 pixels
    predicted = target.clone()
    predicted[0, 0, 0] = 0  # image 0: 3 of the 4 square pixels found
    predicted[1, 3, :2] = 2  # image 1: 2 bar pixels where its mask has none
    result = segmentation.dice_per_class(predicted, target, CLASSES)
    square, bar = result["classes"]["square"], result["classes"]["bar"]
    assert square == {
        "n": 2,
        "dice": pytest.approx((6 / 7 + 1) / 2),
        "absent_images": 0,
        "absent_pixels": None,
    }
    assert bar == {"n": 1, "dice": 1.0, "absent_images": 1, "absent_pixels": 2 / 16}
    assert result["mean_dice"] == pytest.approx(((6 / 7 + 1) / 2 + 1) / 2)
    assert segmentation.dice_per_class(target, target, CLASSES)["mean_dice"] == 1.0


def plain_adam(pairs: Pairs, settings: MaskFaithfulnessSettings) -> tuple[torch.nn.Module, list[float]]:
    """The segmenter's training written out (its loop before it was shared with the pixel generators'):
    Adam at a constant learning rate, no gradient clipping, step ``s``'s batch from ``SeedSequence([seed,
    s])``."""
    from monai.losses import DiceCELoss

    torch.manual_seed(settings.seed)
    model = segmentation.network(settings)
    adam = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    losses = []
    for step in range(settings.steps):
        generator = torch.Generator().manual_seed(derive_seed(settings.seed, step))
        images, masks = pairs.batch(
            torch.randint(len(pairs.images), (settings.batch_size,), generator=generator)
        )
        loss = DiceCELoss(to_onehot_y=True, softmax=True)(model(images), masks[:, None])
        adam.zero_grad()
        loss.backward()
        adam.step()
        losses.append(loss.item())
    return model, losses


def test_the_segmenter_trains_as_written_out_and_a_stopped_training_resumes_where_it_stopped(tmp_path):
    """Same losses and weights as :func:`plain_adam` (so the shared loop's AdamW, schedule or clipping would
    show), and after a stop and resume the same weights as without."""
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    masks = torch.randint(0, 3, (5, 8, 8), dtype=torch.uint8)
    pairs, light, cpu = Pairs(images, masks), settings(steps=3, checkpoint_steps=1), torch.device("cpu")
    straight, losses = segmentation.train(pairs, light, "a", str(tmp_path / "straight"), cpu, StopRequest())
    with pytest.raises(Stopped):
        segmentation.train(pairs, light, "b", str(tmp_path / "resumed"), cpu, StopRequest(15))
    resumed, again = segmentation.train(pairs, light, "b", str(tmp_path / "resumed"), cpu, StopRequest())
    reference, expected = plain_adam(pairs, light)
    assert len(losses) == 3 and losses == expected and again == pytest.approx(losses, rel=1e-5)
    for name, weights in straight.state_dict().items():
        assert torch.equal(weights, reference.state_dict()[name]), name
        torch.testing.assert_close(resumed.state_dict()[name], weights, rtol=1e-5, atol=1e-6, msg=name)


def test_faithfulness_compares_with_the_edited_masks_and_reaches_fid_json_and_the_report(tmp_path):
    """Images whose conditioning lost the bar are not scored on the bar (its Dice is over the others); images
    of another size than their masks are read (they were refused as a mask/image mismatch); the generator's
    result lands in its fid.json section and in the report's table, beside the real test Dice."""
    rows = fabricate(tmp_path / "data", n=10)
    dataset = str(tmp_path / "dataset.parquet")
    rows.to_parquet(dataset)
    model, trained = tmp_path / "segmenter", tmp_path / "train_report.json"
    stage.train_segmenter(dataset, settings(), 0, str(model), str(trained), str(tmp_path / "checkpoints"))
    assert set(json.loads(trained.read_text())["real_test"]["classes"]) == set(CLASSES)
    train = rows[rows["split"] == "train"].reset_index(drop=True)
    generated = []  # a generator's images have its working size, not the masks' (24 vs 32 px)
    for i, path in enumerate(train["image"]):
        generated.append(str(tmp_path / f"{i}.png"))
        Image.open(path).resize((24, 24)).save(generated[-1])
    samples = pd.DataFrame(
        {
            "image": generated,
            "mask_path": train["mask"],
            "dropped_classes": ["bar" if i % 2 else "" for i in range(len(train))],
        }
    )
    samples.to_parquet(tmp_path / "samples.parquet")
    report = tmp_path / "mask_faithfulness.json"
    stage.mask_faithfulness(
        "seg", str(tmp_path / "samples.parquet"), str(model), str(trained), settings(), 0, str(report)
    )
    result = json.loads(report.read_text())
    assert result["images"] == len(train) and result["generator"] == "seg"
    kept = len(train) - len(train) // 2
    assert (
        result["classes"]["bar"]["n"] == kept
        and result["classes"]["bar"]["absent_images"] == len(train) - kept
    )
    assert result["classes"]["square"]["n"] == len(train)

    quality = tmp_path / "image_metrics.json"
    quality.write_text(json.dumps({"feature_spaces": {"tiny": {"metrics": {"fid": 1.0}}}}))
    (tmp_path / "per_group.csv").write_text("extractor,group,fid\ntiny,overall,1.0\n")
    fid = tmp_path / "fid.json"
    stage.collect_image_metrics(
        ["seg"], [str(quality)], [str(tmp_path / "per_group.csv")], str(fid), str(tmp_path / "fid.csv"),
        faithfulness=[str(report)],
    )  # fmt: skip
    collected = json.loads(fid.read_text())
    assert collected["generators"]["seg"]["mask_faithfulness"] == result
    table = faithfulness_table(collected)
    assert list(table.loc["seg"].index) == list(CLASSES)
    assert table.loc[("seg", "bar"), "n"] == kept
    assert table["Dice on real test"].notna().any()
