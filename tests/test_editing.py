"""The editing stage's library: edit planning (captions by the training strategies, refused edits, ground
truth), difference maps, soundness measures, the counterfactual regime's sources (SDEdit itself runs in
tests/test_workflow_evaluation.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from configs import validated

from workflow.classifier.regimes import run_sources, runs
from workflow.common.errors import InputError
from workflow.common.manifest import label_column
from workflow.editing import difference, edits, soundness
from workflow.editing.settings import Edit, PlanSettings
from workflow.prompts.settings import PromptSettings

LABELS = ("No Finding", "Cardiomegaly", "Pleural Effusion", "Support Devices")


def rows() -> pd.DataFrame:
    """Three test images with their prompts tables' columns: cardiomegaly; devices only; nothing known."""
    labels = [(0.0, 1.0, 0.0, 0.0), (1.0, 0.0, 0.0, 1.0), (0.0, 0.0, np.nan, 0.0)]
    frame = pd.DataFrame(
        {
            "image_id": ["p1/s1/v1", "p2/s1/v1", "p3/s1/v1"],
            "patient_id": ["p1", "p2", "p3"],
            "split": "test",
            "image": ["i1.png", "i2.png", "i3.png"],
            "path": ["root/d/p1.png", "root/d/p2.png", "root/d/p3.png"],
            "sex": ["Male", "Female", "Male"],
            "age": [60.0, 40.0, 70.0],
            "cluster": pd.array([2, 0, 1], dtype="Int64"),
            "class_name": pd.array([None] * 3, dtype="string"),
        }
    )
    for k, name in enumerate(LABELS):
        frame[label_column(name)] = [row[k] for row in labels]
    return frame


def prompt_settings(strategies: list[str]) -> PromptSettings:
    config = validated(
        {"prompts": {"strategies": strategies, "mep": {"template": "morphology type {cluster}"}}}
    )
    return PromptSettings.of(config)


def planned(edit_list: list[dict], strategies: list[str], truth: pd.DataFrame | None = None) -> pd.DataFrame:
    frame = rows()
    settings = prompt_settings(strategies)
    from workflow.prompts import strategies as build

    frame["prompt"] = build.build(frame, LABELS, settings)
    plan_settings = PlanSettings(tuple(Edit(**e) for e in edit_list), "test", None, 1, 1, 2)
    return edits.plan(frame, LABELS, settings, plan_settings, truth).set_index("image_id")


def test_target_captions_come_from_the_training_strategies_with_the_edit_applied():
    plan = planned([{"kind": "add", "finding": "Pleural Effusion"}], ["labels", "mep"])
    row = plan.loc["p1/s1/v1"]
    assert row["source_prompt"] == "Chest X-ray showing Cardiomegaly, morphology type two"
    assert row["target_prompt"] == "Chest X-ray showing Cardiomegaly, Pleural Effusion, morphology type two"
    assert list(row["edit_words"]) == ["Pleural", "Effusion"]
    assert row[label_column("Pleural Effusion")] == 1 and row["source_label_Pleural Effusion"] == 0
    # an unknown label (NaN) may be added; the No Finding of the devices-only image is cleared
    assert plan.loc["p2/s1/v1", label_column("No Finding")] == 0
    assert (plan["status"] == edits.EDITED).all()


def test_removing_the_last_finding_sets_no_finding_and_the_empty_caption():
    plan = planned([{"kind": "remove", "finding": "Cardiomegaly"}], ["labels"])
    row = plan.loc["p1/s1/v1"]
    assert row["status"] == edits.EDITED and row[label_column("No Finding")] == 1
    assert row["target_prompt"] == "Chest X-ray showing No Finding"


def test_senseless_edits_are_planned_as_skipped_with_their_reason_and_never_batched():
    edit_list = [
        {"kind": "add", "finding": "Cardiomegaly"},
        {"kind": "remove", "finding": "Pleural Effusion"},
        {"kind": "set", "field": "sex", "value": "male"},
    ]
    plan = planned(edit_list, ["labels"]).reset_index().set_index(["image_id", "edit"])
    reasons = plan["reason"]
    assert reasons[("p1/s1/v1", "add Cardiomegaly")] == "the image already has Cardiomegaly"
    assert reasons[("p1/s1/v1", "remove Pleural Effusion")] == "the image does not have Pleural Effusion"
    assert (
        reasons[("p3/s1/v1", "remove Pleural Effusion")]
        == "the image has no known label for Pleural Effusion"
    )
    assert reasons[("p1/s1/v1", "set sex=male")] == "sex is already male"  # case-insensitive
    # the labels strategy never mentions sex: the edit cannot be expressed, so it is not run
    assert "do not express 'set sex=male'" in reasons[("p2/s1/v1", "set sex=male")]
    skipped = plan[plan["status"] == edits.SKIPPED]
    assert (skipped["batch"] == -1).all() and (skipped["shard"] == -1).all()
    assert set(plan.loc[plan["status"] == edits.EDITED].index) == {
        ("p2/s1/v1", "add Cardiomegaly"),
        ("p3/s1/v1", "add Cardiomegaly"),
    }


def test_demographic_edit_is_expressed_by_the_demographics_strategy():
    plan = planned([{"kind": "set", "field": "sex", "value": "male"}], ["demographics"])
    row = plan.loc["p2/s1/v1"]
    assert row["status"] == edits.EDITED and row["sex"] == "male"
    assert "female" in row["source_prompt"] and " male " in row["target_prompt"]


def test_unknown_finding_or_field_is_a_config_error():
    with pytest.raises(InputError, match=r"finding 'Edema' is not in dataset\.labels"):
        planned([{"kind": "add", "finding": "Edema"}], ["labels"])
    with pytest.raises(InputError, match="field 'weight' is neither"):
        planned([{"kind": "set", "field": "weight", "value": 3}], ["labels"])
    with pytest.raises(InputError, match="needs its finding"):
        Edit(kind="add")


def test_only_a_stable_diffusion_generator_edits():
    """A mask-guided generator (first in the study, or named) has no text encoder to edit with: it was taken
    and the job failed inside diffusers."""
    study = {"seg": {"kind": "mask-guided"}, "sd": {"method": "full"}}
    config = validated({"diffusion": {"generators": study}})
    assert edits.editing_generator(config).name == "sd"
    config["editing"]["generator"] = "seg"
    with pytest.raises(InputError, match=r"editing\.generator = 'seg' is not a Stable Diffusion generator"):
        edits.editing_generator(config)


def test_the_true_counterfactual_is_attached_to_the_edit_that_switches_the_same_finding(tmp_path):
    (tmp_path / "d").mkdir()
    csv = tmp_path / "d" / "counterfactuals.csv"
    csv.write_text(
        "Path,Source Path,Finding,Value\n"
        "d/cf1.png,d/p1.png,Cardiomegaly,0\nd/cf2.png,d/p2.png,Cardiomegaly,0\n"
    )
    truth = edits.ground_truth(str(csv))
    frame_truth = truth.assign(source=truth["source"].str.replace(str(tmp_path), "root"))
    plan = planned([{"kind": "remove", "finding": "Cardiomegaly"}], ["labels"], frame_truth)
    assert plan.loc["p1/s1/v1", "true_counterfactual"] == f"{tmp_path}/d/cf1.png"
    assert pd.isna(plan.loc["p2/s1/v1", "true_counterfactual"])  # that edit was refused (no cardiomegaly)


def test_difference_maps_are_signed_and_computed_in_float():
    source = np.full((3, 8, 8), -0.8, dtype=np.float32)  # grey level 0.1
    edited = source.copy()
    edited[:, :4] = -0.9  # darker: 0.05, which uint8 subtraction would wrap to ~0.96
    edited[:, 6:] = 0.0  # brighter: 0.5
    diff = difference.difference(source, edited)
    assert diff.dtype == np.float32
    np.testing.assert_allclose(diff[:4], -0.05, atol=1e-6)
    np.testing.assert_allclose(diff[6:], 0.4, atol=1e-6)
    with pytest.raises(TypeError, match="float images"):
        difference.difference(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.uint8))
    colours = difference.colour_map(diff)
    assert colours[7, 0, 0] > colours[7, 0, 2] and colours[0, 0, 2] > colours[0, 0, 0]  # red up, blue down
    assert tuple(colours[5, 0]) == pytest.approx((247, 247, 247), abs=10)  # unchanged is white


def test_cross_fade_goes_from_the_source_to_the_edit_and_back(tmp_path):
    from PIL import Image, ImageSequence

    source, edited = np.zeros((8, 8)), np.ones((8, 8))
    difference.cross_fade(source, edited, str(tmp_path / "fade.gif"), frames=4)
    with Image.open(tmp_path / "fade.gif") as gif:
        means = [np.asarray(frame.convert("L")).mean() for frame in ImageSequence.Iterator(gif)]
    assert means[0] == 0 and max(means) == 255 and len(means) == 6 and means == sorted(means[:4]) + means[4:]


def test_changed_region_statistics_find_the_changed_blobs():
    diff = np.zeros((32, 32), np.float32)
    diff[2:6, 2:6] = 0.5
    diff[20:24, 20:24] = -0.5
    mask = np.zeros((32, 32), np.uint8)
    mask[16:, :] = 1
    stats = difference.region_statistics(diff, 90, mask, ["background", "lungs"])
    assert stats["region_components"] == 2 and stats["region_fraction"] == pytest.approx(32 / 1024)
    assert stats["region_mean_change"] == pytest.approx(0.0) and stats["outside_mean_abs_change"] == 0
    assert stats["mask_mean_abs_change"]["lungs"] == pytest.approx(8 / 512)


def test_error_against_the_true_counterfactual_inside_and_outside_the_finding():
    rng = np.random.default_rng(0)
    source = rng.uniform(0.2, 0.4, (32, 32))
    truth = source.copy()
    truth[8:16, 8:16] += 0.3  # the finding
    perfect = soundness.truth_error(truth, source, truth)
    assert perfect["edited_mae_inside"] == 0 and perfect["edited_ssim_all"] == pytest.approx(1.0)
    assert perfect["source_mae_inside"] == pytest.approx(0.3) and perfect["source_mae_outside"] == 0
    assert perfect["region_fraction"] == pytest.approx(64 / 1024)
    noisy = soundness.truth_error(truth + rng.normal(0, 0.05, truth.shape), source, truth)
    assert noisy["edited_mae_outside"] > 0 and noisy["edited_ssim_outside"] < 1
    assert soundness.psnr(source, source) == float("inf") and soundness.psnr(
        source, source + 0.1
    ) == pytest.approx(20)


def test_effectiveness_is_signed_toward_the_target_label():
    table = pd.DataFrame(
        {"edit": ["add A", "add A", "remove A"], "edit_kind": ["add", "add", "remove"], "edit_target": "A"}
    )
    probabilities = pd.DataFrame({"source_A": [0.2, 0.6, 0.9], "edited_A": [0.7, 0.4, 0.1]})
    summary = soundness.summarise(table, probabilities, {"A": 0.5}, ())
    add = summary["per_edit"]["add A"]["effectiveness"]
    assert add["mean_change_toward_target"] == pytest.approx(0.15) and add["flip_rate"] == 0.5
    assert summary["per_edit"]["remove A"]["effectiveness"]["flip_rate"] == 1.0
    assert summary["overall"]["effectiveness"]["edits"] == 3


def test_counterfactual_regime_trains_on_every_editing_method(monkeypatch):
    from workflow.editing import methods

    config = validated(
        {
            "classifier": {"regimes": ["real", "real+counterfactual"]},
            "editing": {"enabled": True, "methods": ["sdedit"]},
        }
    )
    assert runs(config) == ["real", "real+counterfactual/sdedit"]
    monkeypatch.delitem(methods.METHODS, "ledits++")  # a method the schema knows and none registers
    with pytest.raises(InputError, match=r"\['ledits\+\+'\] are not available"):
        runs(validated({"editing": {"enabled": True, "methods": ["sdedit", "ledits++"]}}))
    assert run_sources(config, "real+counterfactual/sdedit") == {
        "counterfactual": "results/counterfactuals/sdedit/manifest.parquet"
    }


def test_editing_colour_images_is_refused_before_any_job_runs():
    """The edits are measured and written in grayscale: a colour study (preprocess.color rgb) that enables
    editing is told so, naming the keys, instead of getting grayscale counterfactuals of its colour images."""
    colour = {"preprocess": {"color": "rgb"}, "editing": {"enabled": True, "methods": ["sdedit"]}}
    with pytest.raises(InputError, match=r"editing\.enabled.*preprocess\.color is rgb"):
        edits.editing_methods(validated(colour))
    assert edits.editing_methods(validated(colour | {"editing": {"enabled": False}})) == []


def test_edit_words_are_found_among_the_caption_tokens_of_a_case_sensitive_tokenizer():
    """The demo's ddim-p2p edits failed: edit words were lower-cased, and the tiny SD's word-level tokenizer
    (unlike CLIP's) keeps case, so prompt-to-prompt could not place ``cardiomegaly`` in '... Cardiomegaly'."""
    from workflow.diffusion.base_models import word_tokenizer
    from workflow.editing import p2p

    tokenizer = word_tokenizer()
    plan = planned([{"kind": "remove", "finding": "Cardiomegaly"}], ["labels", "mep"])
    row = plan.loc["p1/s1/v1"]
    assert list(row["edit_words"]) == ["No", "Finding", "Cardiomegaly"]
    source, target = p2p.token_ids(tokenizer, [row["source_prompt"], row["target_prompt"]])
    for word in row["edit_words"]:
        assert p2p.word_positions(tokenizer, source, word) or p2p.word_positions(tokenizer, target, word), (
            word
        )


def test_edits_the_text_encoder_cannot_see_are_skipped_with_their_reason():
    """A caption past the tokenizer's model_max_length lost its edited word to truncation: prompt-to-prompt
    raised an InputError that killed the whole shard; the plan now refuses such edits."""
    from workflow.diffusion.base_models import word_tokenizer

    frame = rows()
    settings = prompt_settings(["labels"])
    from workflow.prompts import strategies as build

    frame["prompt"] = build.build(frame, LABELS, settings)
    plan_settings = PlanSettings((Edit(kind="remove", finding="Cardiomegaly"),), "test", None, 1, 1, 2)
    tokenizer = word_tokenizer()
    whole = edits.plan(frame, LABELS, settings, plan_settings, tokenizer=tokenizer).set_index("image_id")
    row = whole.loc["p1/s1/v1"]
    assert row["status"] == edits.EDITED
    source = tokenizer(row["source_prompt"]).input_ids
    target = tokenizer(row["target_prompt"]).input_ids
    first = next(k for k, (a, b) in enumerate(zip(source, target, strict=False)) if a != b)
    reasons = {}
    for limit in (first + 1, first + 2):  # both cut before the change; the last changed word cut
        tokenizer.model_max_length = limit
        cut = edits.plan(frame, LABELS, settings, plan_settings, tokenizer=tokenizer).set_index("image_id")
        assert cut.loc["p1/s1/v1", "status"] == edits.SKIPPED
        assert cut.loc["p1/s1/v1", "batch"] == -1
        reasons[limit] = cut.loc["p1/s1/v1", "reason"]
    assert "differ only past the tokenizer's" in reasons[first + 1]
    assert "['Finding'] are in neither caption's first" in reasons[first + 2]


def test_ground_truth_paths_are_matched_resolved(tmp_path, monkeypatch):
    """Paths were compared as strings: a relative dataset path, or one through a symbolic link, never met
    the csv's absolute one, and no edit was scored against its true counterfactual."""
    (tmp_path / "real" / "d").mkdir(parents=True)
    (tmp_path / "root").symlink_to(tmp_path / "real")
    (tmp_path / "x").mkdir()
    csv = tmp_path / "x" / "counterfactuals.csv"
    csv.write_text("Path,Source Path,Finding,Value\nreal/d/cf1.png,real/d/p1.png,Cardiomegaly,0\n")
    monkeypatch.chdir(tmp_path)  # rows() has path root/d/p1.png, relative, through the link
    plan = planned([{"kind": "remove", "finding": "Cardiomegaly"}], ["labels"], edits.ground_truth(str(csv)))
    assert plan.loc["p1/s1/v1", "true_counterfactual"] == str((tmp_path / "real/d/cf1.png").resolve())
    assert plan.loc["p1/s1/v1", "true_source"] == str((tmp_path / "real/d/p1.png").resolve())


def _gray_png(path, value: float, size: int = 16) -> str:
    from PIL import Image

    Image.fromarray(np.full((size, size), round(value * 255), np.uint8), mode="L").save(path)
    return str(path)


def test_soundness_scores_before_the_edit_on_its_reference_and_notes_unmatched_ground_truth(
    tmp_path, monkeypatch
):
    """Effectiveness took the classifier's probability before the edit on the source PNG, so the VAE and
    inversion round trip counted as the edit; and a ground truth matching nothing went unsaid."""
    import json
    from types import SimpleNamespace

    import torch
    from configs import validated

    from workflow.classifier import networks, training
    from workflow.common.files import write_parquet
    from workflow.evaluation import stage
    from workflow.evaluation.settings import ConditionalSettings

    images = {
        name: _gray_png(tmp_path / f"{name}.png", v) for name, v in (("s", 1.0), ("r", 0.6), ("e", 0.2))
    }
    spec = SimpleNamespace(labels=["Cardiomegaly"])
    monkeypatch.setattr(networks, "load", lambda path: (torch.nn.Identity(), spec, {}))
    monkeypatch.setattr(networks, "trained_weights", lambda trained, path: "stub")

    def predict(network, frame, spec, batch_size, where):  # the classifier: the image's mean brightness
        from PIL import Image

        return pd.DataFrame(
            {"Cardiomegaly": [np.asarray(Image.open(p)).mean() / 255 for p in frame["image"]]}
        )

    monkeypatch.setattr(training, "predict", predict)
    counterfactuals = tmp_path / "manifest.parquet"
    row = {"image_id": "cf/1", "source_image": images["s"], "reference": images["r"], "image": images["e"]}
    row |= {"edit": "remove Cardiomegaly", "edit_kind": "remove", "edit_target": "Cardiomegaly"}
    row |= {"method": "sdedit", "true_counterfactual": None}
    row |= {"reconstruction_lpips": None}
    no_lpips = {"net": "alex", "weights": None, "reason": "no LPIPS: editing.lpips.weights is null"}
    write_parquet(counterfactuals, pd.DataFrame([row]), {"weights": "tiny", "lpips": no_lpips})
    plan = tmp_path / "plan.parquet"
    planned_rows = pd.DataFrame(
        {"edit_id": ["1"], "edit": ["remove Cardiomegaly"], "status": ["edited"], "split": ["train"]}
    )
    write_parquet(plan, planned_rows.assign(reason=None), {"ground_truth": {"file": "cf.csv", "matched": 0}})
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"labels": {"Cardiomegaly": {"threshold": {"value": 0.5}}}}))
    settings = ConditionalSettings.of(validated({}))
    (tmp_path / "model").write_text("stub classifier")
    report = tmp_path / "soundness.json"
    model = str(tmp_path / "model")
    stage.counterfactual_soundness(
        str(counterfactuals), str(plan), model, str(metrics), settings, str(report), 0, 1
    )
    result = json.loads(report.read_text())
    effect = result["overall"]["effectiveness"]
    assert effect["mean_source_probability"] == pytest.approx(0.6, abs=0.01)
    assert effect["mean_change_toward_target"] == pytest.approx(0.4, abs=0.01)
    assert any("cf.csv" in note and "matches none" in note for note in result["notes"])
    assert result["overall"]["reconstruction_lpips"] is None and result["lpips"] == no_lpips
    assert no_lpips["reason"] in result["notes"]
    # training images edited (the real+counterfactual regime's): the report says its measures are in-sample
    assert result["source_split"] == ["train"] and any("in-sample" in note for note in result["notes"])


@pytest.mark.parametrize("reconstructed", [True, False])
def test_the_difference_map_is_the_edit_minus_its_reference_not_minus_the_source(tmp_path, reconstructed):
    """The map was edited - source: the VAE, resizing and inversion round trip showed as change everywhere."""
    from workflow.editing import stage
    from workflow.editing.settings import EditSettings

    source = np.zeros((3, 16, 16), np.float32)
    reference = source + 0.2  # the round trip brightened everything
    edited = reference.copy()
    edited[:, 4:8, 4:8] += 0.5  # the edit
    settings = EditSettings.of(validated({}))
    row = {"edit_id": "e", "true_counterfactual": None, "mask": None}
    record = stage.measure_edit(tmp_path / "e", row, source, reference, reconstructed, edited, settings, ())
    diff = np.load(record["difference_map"])
    assert np.allclose(diff[4:8, 4:8], 0.25) and np.count_nonzero(diff) == 16  # 0.5 in [-1, 1] is 0.25
    assert record["reference"].endswith("reconstruction.png" if reconstructed else "round_trip.png")
    assert (tmp_path / "e" / "cross_fade.gif").exists()
    if reconstructed:  # composition stays the reconstruction against the source
        assert record["reconstruction_psnr"] == pytest.approx(10 * np.log10(1 / 0.1**2), abs=0.1)
    else:
        assert "reconstruction_psnr" not in record and "reconstruction" not in record


def test_editing_weights_dtype_auto_is_float32_on_a_cpu_and_float16_needs_a_gpu():
    import torch

    from workflow.diffusion.sampling import weights_dtype

    config = validated({})
    assert config["editing"]["dtype"] == "auto" and config["editing"]["tf32"] is True
    assert weights_dtype("auto", torch.device("cpu"), "editing.dtype") == torch.float32
    assert weights_dtype("auto", torch.device("cuda"), "editing.dtype") == torch.float16
    with pytest.raises(InputError, match=r"editing\.dtype: float16 needs a GPU"):
        weights_dtype("float16", torch.device("cpu"), "editing.dtype")


def test_edit_images_undoes_each_edit_with_the_captions_swapped(tmp_path, monkeypatch):
    """Reversibility (Monteiro et al. 2023): the same method from the edited image, target caption back to
    the source caption, same seed; the undone image is scored against the source."""
    from types import SimpleNamespace

    import torch
    from PIL import Image

    from workflow.common.files import write_parquet
    from workflow.common.model_card import write_card
    from workflow.diffusion import saving
    from workflow.editing import methods, stage
    from workflow.editing.settings import EditSettings

    calls = []

    def halve(pipe, images, sources, targets, words, settings, seeds, cache=None):  # halves the image
        calls.append((sources, targets, seeds))
        return methods.EditOutput(edited=images * 0.5, reconstruction=images)

    fake = SimpleNamespace(device=torch.device("cpu"), set_progress_bar_config=lambda **kw: None)
    fake.to = lambda device: fake
    monkeypatch.setitem(methods.METHODS, "halve", halve)
    monkeypatch.setattr(saving, "load_trained", lambda model, dtype=None: fake)
    write_card(tmp_path, {"weights": "stub"})
    frame = rows()
    frame["image"] = [str(tmp_path / f"i{k}.png") for k in range(3)]
    for path in frame["image"]:
        Image.fromarray(np.full((8, 8), 255, np.uint8), mode="L").save(path)
    plan = planned([{"kind": "remove", "finding": "Cardiomegaly"}], ["labels"]).reset_index()
    plan["image"] = plan["image_id"].map(dict(zip(frame["image_id"], frame["image"], strict=True)))
    write_parquet(tmp_path / "plan.parquet", plan)
    config = validated({"diffusion": {"resolution": 8}, "editing": {"reversibility": True}})
    table = tmp_path / "shard.parquet"
    stage.edit_images(
        str(tmp_path / "plan.parquet"),
        str(tmp_path),
        "halve",
        EditSettings.of(config),
        [],
        0,
        0,
        str(tmp_path / "images"),
        str(table),
    )
    edit = plan[plan["status"] == edits.EDITED].iloc[0]
    assert calls == [
        ([edit["source_prompt"]], [edit["target_prompt"]], [edit["seed"]]),
        ([edit["target_prompt"]], [edit["source_prompt"]], [edit["seed"]]),
    ]
    done = pd.read_parquet(table).set_index("edit_id").loc[edit["edit_id"]]
    assert done["reversibility_mae"] == pytest.approx(
        0.375
    )  # white: 1 halved twice in [-1, 1], 0.625 in [0, 1]
    assert done["undone"].endswith("undone.png")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch

    from workflow.editing import clip_filter

    folder = tmp_path_factory.mktemp("clip")
    clip_filter.build_tiny(folder, seed=0)
    return clip_filter.load(str(folder), torch.device("cpu"))


def test_clip_scores_follow_lances_formulas(tiny_clip):
    import torch

    from workflow.editing import clip_filter

    rng = np.random.default_rng(0)
    reference, edited = [rng.random((16, 16))], [rng.random((16, 16))]
    source, target = "Chest X-ray showing Cardiomegaly, Edema", "Chest X-ray showing Edema"
    changes = [edits.word_changes(source, target)]
    assert changes == [([], ["Cardiomegaly"])]
    (score,) = clip_filter.scores(tiny_clip, reference, edited, [source], [target], changes, [["Edema"]])
    i0, i1 = tiny_clip.images(reference)[0], tiny_clip.images(edited)[0]
    t0, t1 = tiny_clip.texts([source])[0], tiny_clip.texts([target])[0]
    assert score["clip_image_image"] == pytest.approx(float(i0 @ i1), abs=1e-5)
    assert score["clip_caption_source"] == pytest.approx(float(i0 @ t0), abs=1e-5)
    assert score["clip_caption_edited"] == pytest.approx(float(i1 @ t1), abs=1e-5)
    direction = torch.nn.functional.cosine_similarity(i1 - i0, t1 - t0, dim=0)
    assert score["clip_direction"] == pytest.approx(float(direction), abs=1e-5)
    assert score["clip_consistency"] is None  # nothing added: not applicable
    removed, kept = tiny_clip.texts(["Cardiomegaly", "Edema"])
    assert score["clip_text_similarity"] == pytest.approx(float(removed @ kept), abs=1e-5)
    (same,) = clip_filter.scores(tiny_clip, reference, reference, [source], [source], [([], [])], [[]])
    assert same["clip_image_image"] == pytest.approx(1.0, abs=1e-5)


def test_the_clip_filter_names_every_failed_criterion():
    from workflow.editing import clip_filter
    from workflow.editing.settings import ClipSettings

    settings = ClipSettings("tiny", 0.5, 0.7, 0.2, 0.2)
    good = {
        "clip_image_image": 0.9,
        "clip_caption_source": 0.3,
        "clip_caption_edited": 0.3,
        "clip_direction": 0.3,
        "clip_consistency": None,
        "clip_text_similarity": None,
    }
    assert clip_filter.failed_criteria(good, settings) == []
    bad = good | {"clip_image_image": 0.5, "clip_consistency": False, "clip_text_similarity": 0.9}
    assert clip_filter.failed_criteria(bad, settings) == ["text_prefilter", "image_image", "consistency"]


def test_rejected_edits_stay_in_the_shard_table_with_the_failed_criterion(tiny_clip):
    from workflow.editing import stage
    from workflow.editing.settings import EditSettings

    plan = planned([{"kind": "remove", "finding": "Cardiomegaly"}], ["labels"]).reset_index()
    batch = plan[plan["status"] == edits.EDITED]
    images = np.random.default_rng(1).random((len(batch), 3, 16, 16)) * 2 - 1
    config = validated({"editing": {"clip": {"model": "tiny", "clip_img_thresh": 2.0}}})  # none can pass
    (scored,) = stage.clip_scores(tiny_clip, batch, images, images, EditSettings.of(config))
    failed = scored["clip_failed"].split(",")
    assert scored["clip_passed"] is False and failed[0] == "image_image" and "text_prefilter" not in failed
    assert scored["clip_text_similarity"] is None  # No Finding follows the edit: nothing kept to protect


def test_real_plus_counterfactual_leaves_out_edits_the_clip_filter_rejected():
    from workflow.classifier import regimes

    dataset = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "patient_id": ["pa", "pb", "pc"],
            "split": ["train", "val", "test"],
            "image": ["a.png", "b.png", "c.png"],
        }
    )
    counterfactual = pd.DataFrame(
        {"image_id": ["cf1", "cf2"], "patient_id": ["pa", "pa"], "image": ["1.png", "2.png"]}
    ).assign(clip_passed=[True, False])
    data = regimes.training_data("real+counterfactual", dataset, {"counterfactual": counterfactual}, 1.0, 0)
    assert data.counts == {"real": 1, "counterfactual": 1}
    assert list(data.train["image_id"]) == ["a", "cf1"]
    assert any("CLIP filter rejected" in note for note in data.notes)


def test_the_cross_fade_page_plays_one_gif_per_edit_type(tmp_path):
    """The report shows PNG results inline but not GIFs: the cross-fades go into an HTML page."""
    from workflow.editing import difference, stage

    paths = []
    for k in range(3):
        paths.append(str(tmp_path / f"{k}.gif"))
        difference.cross_fade(np.zeros((8, 8)), np.full((8, 8), k / 2), paths[-1], frames=3)
    frame = pd.DataFrame(
        {
            "edit": ["remove Cardiomegaly", "add Edema", "remove Cardiomegaly"],
            "source_image_id": ["p1", "p2", "p3"],
            "source_prompt": ["a <b>", "c", "d"],
            "target_prompt": ["e", "f", "g"],
            "cross_fade": paths,
        }
    )
    page = tmp_path / "cross_fades.html"
    stage.cross_fade_page(frame, "sdedit", str(page))
    text = page.read_text()
    assert text.count("data:image/gif;base64,") == 2  # the first edit of each type
    assert text.index("add Edema") < text.index("remove Cardiomegaly")
    assert "a &lt;b&gt;" in text


def test_lpips_loads_local_backbone_weights_and_is_null_with_its_reason_without_them(tmp_path):
    """LPIPS's backbone comes from torchvision's hub (no internet here): a local state dict file, else null
    with the reason, never a random-backbone LPIPS. A random squeezenet state dict stands in for the file."""
    import torch
    import torchvision

    from workflow.editing import perceptual, stage
    from workflow.editing.settings import EditSettings, LpipsSettings

    torch.manual_seed(0)
    weights = tmp_path / "squeezenet1_1.pth"
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), weights)
    lpips = perceptual.load(LpipsSettings("squeeze", str(weights)))
    rng = np.random.default_rng(0)
    image, other = rng.random((16, 16)), rng.random((16, 16))  # upsampled to 64 px
    assert lpips.distance(image, image) == pytest.approx(0.0, abs=1e-6)
    assert lpips.distance(image, other) > 0 and lpips.reason is None
    settings = EditSettings.of(validated({}))
    row = {"edit_id": "e", "true_counterfactual": None, "mask": None}
    source = np.zeros((3, 16, 16), np.float32)
    record = stage.measure_edit(
        tmp_path / "e", row, source, source + 0.5, True, source, settings, (), source, lpips
    )
    assert record["reconstruction_lpips"] > 0 and record["reversibility_lpips"] == pytest.approx(0, abs=1e-6)
    missing = perceptual.load(LpipsSettings("alex", None))
    assert missing.distance(image, other) is None and "editing.lpips.weights is null" in missing.reason
    with pytest.raises(InputError, match="is not the state dict of torchvision's alexnet"):
        perceptual.load(LpipsSettings("alex", str(weights)))
    with pytest.raises(InputError, match="no file"):
        perceptual.load(LpipsSettings("alex", str(tmp_path / "none.pth")))
