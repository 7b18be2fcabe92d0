"""Mask- and text-conditioned pixel diffusion, DGM-VLC (workflow/diffusion/mask_text.py) and its difference
maps (workflow/diffusion/differences.py): seamless sliding-window generation in 3D, text conditioning,
resume, bad volumes; tiny networks on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from configs import validated

from workflow.common.errors import InputError
from workflow.common.interruption import Stopped, StopRequest
from workflow.common.model_card import write_card
from workflow.diffusion import differences, mask_guided, mask_text
from workflow.diffusion.settings import (
    ChangeSettings,
    MaskTextDifferenceSettings,
    MaskTextSampleSettings,
    MaskTextTrainSettings,
)
from workflow.prompts.settings import TabularSettings

CLASSES = ("background", "lungs", "airway")
TINY = {
    "resolution": 8,
    "batch_size": 2,
    "steps": 2,
    "warmup_steps": 1,
    "timesteps": 50,
    "channels": [8, 8],
    "attention_levels": [False, True],
    "norm_num_groups": 8,
    "text_encoder": "tiny",
    "max_tokens": 16,
    "checkpoint_steps": 1,
}


def settings(train: dict | None = None, sample: dict | None = None):
    section = {"train": TINY | (train or {}), "sample": {"steps": 2} | (sample or {})}
    study = validated({"dataset": {"mask_classes": list(CLASSES)}, "diffusion": {"mask_text": section}})
    return MaskTextTrainSettings.of(study), MaskTextSampleSettings.of(study)


def masks(images: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Masks with every class present: bands of class 0..2 along the first axis."""
    band = torch.arange(shape[0]) * len(CLASSES) // shape[0]
    return band.view(-1, *[1] * (len(shape) - 1)).expand(images, *shape).clone()


def texts(*captions: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny encoder's embeddings of ``captions`` and of the empty caption."""
    encoded = mask_text.encode_captions([*captions, ""], "tiny", 0, TINY["max_tokens"])
    return encoded[:-1], encoded[-1]


@pytest.fixture(scope="module")
def model3d():
    """A random 3D network (every weight drawn, so the zero-initialised output and attention projections do
    not hide the text) and its architecture, patches of 4 x 4 x 4."""
    train, _ = settings({"patch_size": [4, 4, 4]})
    architecture = mask_text.architecture(train, 3, texts("x")[0].shape[-1])
    torch.manual_seed(0)
    model = mask_guided.network(architecture).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model, architecture


CAPTIONS = (
    "Lung CT scan: Patient age: 58. Smoking status: never.",
    "Lung CT scan: Patient age: 68. Smoking status: current.",
)


def test_a_difference_map_of_two_identical_prompts_is_zero_and_of_two_others_is_not(model3d):
    model, architecture = model3d
    (before, after), null = texts(*CAPTIONS)
    _, sample = settings(sample={"guidance_scale": 2.0})
    mask = masks(1, (8, 4, 4))[0]
    same, changed = differences.difference_map(
        model, mask, before, torch.stack([before, after]), null, 7, sample, architecture
    )
    alone = mask_text.generate(model, mask[None], after[None], null, [7], sample, architecture)[0, 0]
    first = mask_text.generate(model, mask[None], before[None], null, [7], sample, architecture)[0, 0]
    assert same.shape == (8, 4, 4) and not same.any()
    assert np.abs(changed).max() > 1e-4  # the caption reaches the image through cross-attention
    np.testing.assert_allclose(changed, (alone.clamp(-1, 1) - first.clamp(-1, 1)).numpy(), atol=1e-6)


def test_same_caption_and_seed_give_the_same_image_another_caption_or_seed_another(model3d):
    model, architecture = model3d
    (first, second), null = texts(*CAPTIONS)
    _, sample = settings()
    mask = masks(3, (4, 4, 8))
    images = mask_text.generate(
        model, mask, torch.stack([first, first, second]), null, [1, 1, 1], sample, architecture
    )
    again = mask_text.generate(model, mask[:1], first[None], null, [1], sample, architecture)
    other_seed = mask_text.generate(model, mask[:1], first[None], null, [2], sample, architecture)
    assert torch.equal(images[0], images[1]) and torch.equal(images[0], again[0])
    assert not torch.allclose(images[0], images[2]) and not torch.allclose(images[0], other_seed[0])


class Pointwise(torch.nn.Module):
    """A translation-equivariant stand-in for the UNet: a 1 x 1 x 1 convolution of image and mask channels
    plus a term of the text, the same at every voxel; what a window predicts at a voxel does not depend on
    where the window lies."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mix = torch.nn.Conv3d(1 + len(CLASSES), 1, 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return (
            self.mix(x)
            + 0.1 * context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
            + timesteps.view(-1, 1, 1, 1, 1) * 1e-3
        )


def test_a_volume_generated_in_overlapping_patches_has_no_seams():
    """Sliding-window DDIM over a 12 x 8 x 8 volume in 4 x 4 x 4 windows (gaussian-blended) equals inference
    on the whole volume at once, at window borders too."""
    (context,), null = texts(CAPTIONS[0])
    _, sample = settings(sample={"steps": 3, "overlap": 0.5, "guidance_scale": 1.5})
    condition = mask_guided.one_hot(masks(1, (12, 8, 8)), len(CLASSES))
    noise = mask_text.starting_noise(3, (12, 8, 8))
    model = Pointwise()
    windows = mask_text.denoise(model, condition, context[None], null, noise, sample, 50, (4, 4, 4))
    whole = mask_text.denoise(model, condition, context[None], null, noise, sample, 50, (12, 8, 8))
    assert windows.shape == (1, 1, 12, 8, 8)
    torch.testing.assert_close(windows, whole, atol=1e-5, rtol=1e-5)


def test_a_stopped_training_resumes_to_the_same_weights_on_3d_patches(tmp_path):
    train, _ = settings({"patch_size": [4, 4, 4], "steps": 2, "text_dropout": 0.5})
    contexts, null = texts(*CAPTIONS, CAPTIONS[0])
    pairs = mask_guided.Pairs(
        torch.randint(0, 256, (3, 1, 8, 8, 4), dtype=torch.uint8), masks(3, (8, 8, 4)).byte()
    )
    architecture = mask_text.architecture(train, 3, contexts.shape[-1])
    cpu = torch.device("cpu")
    straight, losses = mask_text.train(
        pairs, contexts, null, architecture, train, "a", str(tmp_path / "a"), cpu, StopRequest()
    )
    with pytest.raises(Stopped):
        mask_text.train(
            pairs, contexts, null, architecture, train, "b", str(tmp_path / "b"), cpu, StopRequest(1)
        )
    resumed, again = mask_text.train(
        pairs, contexts, null, architecture, train, "b", str(tmp_path / "b"), cpu, StopRequest()
    )
    assert len(losses) == 2 and again == pytest.approx(losses, rel=1e-5)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_changed_field_changes_only_its_phrase_of_the_caption():
    tabular = TabularSettings.from_dict(
        {
            "prefix": "Lung CT scan:",
            "separator": " ",
            "fields": [
                {
                    "field": "age",
                    "text": "Patient age: {value}.",
                    "values": {},
                    "missing": [],
                    "absolute": False,
                },
                {
                    "field": "smoking",
                    "text": "Smoking status: {value}.",
                    "values": {},
                    "missing": [],
                    "absolute": False,
                },
            ],
        }
    )
    row = pd.DataFrame({"age": [58], "tab_smoking": ["never"]})
    assert differences.changed_captions(row, "age", 68, tabular) == (
        "Lung CT scan: Patient age: 58. Smoking status: never.",
        "Lung CT scan: Patient age: 68. Smoking status: never.",
    )
    assert differences.changed_captions(row, "smoking", "current", tabular)[1].endswith(
        "Smoking status: current."
    )


def test_difference_maps_are_written_as_nifti_with_the_source_affine_and_a_montage(tmp_path):
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    difference = np.linspace(-1, 1, 4 * 4 * 6, dtype=np.float32).reshape(4, 4, 6)
    differences.save_difference(
        difference, affine, str(tmp_path / "d.nii.gz"), str(tmp_path / "d.png"), slices=3
    )
    written = nib.load(tmp_path / "d.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), difference)
    assert (tmp_path / "d.png").stat().st_size > 0


def volume_files(tmp_path, labels: np.ndarray, label_affine: np.ndarray | None = None) -> tuple[str, str]:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    image, mask = str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz")
    nib.save(nib.Nifti1Image(np.arange(np.prod((6, 6, 4)), dtype=np.float32).reshape(6, 6, 4), affine), image)
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine if label_affine is None else label_affine), mask)
    return image, mask


def test_bad_label_volumes_are_refused_naming_the_file(tmp_path):
    good = np.zeros((6, 6, 4))
    good[2:4] = 2
    image, mask = volume_files(tmp_path, good)
    volume, labels, affine = mask_text.read_volume_pair(image, mask, len(CLASSES), (0.0, 143.0))
    assert volume.shape == (1, 6, 6, 4) and labels.max() == 2 and affine[2, 2] == 2.0
    assert volume.min() == 0 and volume.max() == 255  # voxels 0..143 through the window 0..143
    for bad, label_affine, reason in [
        (good + 3 * (good > 0), None, "not in dataset.mask_classes"),
        (np.zeros((6, 6, 5)), None, "does not match"),
        (good, np.diag([1.0, 1.0, 1.0, 1.0]), "spacing or orientation"),
    ]:
        image, mask = volume_files(tmp_path, bad, label_affine)
        with pytest.raises(InputError, match=reason) as error:
            mask_text.read_volume_pair(image, mask, len(CLASSES), (0.0, 143.0))
        assert mask in str(error.value)


def test_the_3d_steps_read_volumes_with_the_studys_reader(tmp_path):
    """A volume whose two NIfTI orientations disagree (its qform flips the first axis, its sform does not
    and has other scales: SimpleITK follows the qform, nibabel the sform). A study that slices its volumes
    with `dataset.volumes.reader: sitk` trains, samples, maps differences and measures volume similarity on
    the same orientation (they read with `auto`, nibabel for NIfTI, before)."""
    from workflow.data.settings import PreprocessSettings
    from workflow.data.slicing import load_volume, windowed
    from workflow.diffusion.pixel_stage import read_volumes
    from workflow.evaluation.settings import VolumeSimilaritySettings

    volumes = {"table": "volumes.csv", "modality": "ct", "reader": "sitk"}
    study = validated({"dataset": {"adapter": "volumes", "mask_classes": list(CLASSES), "volumes": volumes}})
    readers = {
        settings.volume_reader
        for settings in (
            *(kind.of(study) for kind in (MaskTextTrainSettings, MaskTextSampleSettings)),
            MaskTextDifferenceSettings.of(study).sample,
            VolumeSimilaritySettings.of(study),
            PreprocessSettings.of(study),
        )
    }
    assert readers == {"sitk"}
    image, mask = str(tmp_path / "ct.nii.gz"), str(tmp_path / "labels.nii.gz")
    labels = np.zeros((6, 6, 4), np.int16)
    labels[:2] = 1  # the first axis's low end, which the flip moves to the high end
    for data, path in [(np.arange(6 * 6 * 4, dtype=np.float32).reshape(6, 6, 4), image), (labels, mask)]:
        written = nib.Nifti1Image(data, np.eye(4))
        written.set_qform(np.diag([-1.0, 1.0, 1.0, 1.0]), code=1)
        written.set_sform(np.diag([1.0, 2.0, 1.0, 1.0]), code=2)
        nib.save(written, path)
    rows = pd.DataFrame([{"path": image, "mask_path": mask, "window_low": 0.0, "window_high": 143.0}])
    pairs, affines = read_volumes(rows, len(CLASSES), None, readers.pop())
    volume, affine = load_volume(image, "sitk")
    np.testing.assert_array_equal(pairs.images[0, 0].numpy(), windowed(volume, 0.0, 143.0))
    np.testing.assert_array_equal(pairs.masks[0].numpy(), load_volume(mask, "sitk")[0])
    np.testing.assert_allclose(affines[0], affine)
    assert not np.array_equal(load_volume(image, "nibabel")[0], volume)  # the readers disagree on this file


def test_patches_must_fit_the_images_and_have_one_side_per_axis():
    train, _ = settings({"patch_size": [4, 4]})
    with pytest.raises(InputError, match="patch_size"):
        mask_text.architecture(train, 3, 32)
    architecture = mask_text.architecture(train, 2, 32)
    with pytest.raises(InputError, match="larger than the images"):
        mask_text.patch_of(architecture, (3, 8))


def test_the_2d_rules_functions_write_a_manifest_of_captioned_samples_one_per_captioned_mask(tmp_path):
    """train_mask_text on fabricated images, masks and captions (one step), then two sampling shards and the
    collect step: one sample per training mask with a selected caption, the caption as its prompt, in the
    manifest schema the evaluation stages read."""
    from classifier_data import fabricate

    from workflow.diffusion import stage

    rows = fabricate(tmp_path / "data", n=10)
    dataset, prompts = str(tmp_path / "dataset.parquet"), str(tmp_path / "train.parquet")
    rows.to_parquet(dataset)
    captions = pd.DataFrame(
        {"image_id": rows["image_id"], "prompt": [f"Patient age: {a:.0f}." for a in rows["age"]]}
    )
    captions["prompt_id"] = [f"p{i}" for i in range(len(rows))]
    captions["selected"] = [i != 0 for i in range(len(rows))]  # the first image was not selected
    captions.to_parquet(prompts)
    train, sample = settings(
        {"resolution": 16, "patch_size": [8, 8], "steps": 1}, {"steps": 1, "shards": 2, "batch_size": 2}
    )
    model = str(tmp_path / "model")
    stage.train_mask_text(
        dataset,
        prompts,
        train,
        0,
        model,
        str(tmp_path / "r.json"),
        str(tmp_path / "l.png"),
        str(tmp_path / "ck"),
    )
    parts = [str(tmp_path / f"{k}.parquet") for k in range(2)]
    for k in range(2):
        stage.sample_mask_text(dataset, prompts, model, sample, 0, k, str(tmp_path / f"masks{k}"), parts[k])
    stage.collect_mask_guided(parts, str(tmp_path / "manifest.parquet"))
    samples = pd.read_parquet(tmp_path / "manifest.parquet")
    expected = rows[(rows["split"] == "train") & (rows.index != 0)]
    assert samples["source_image_id"].tolist() == expected["image_id"].tolist()
    assert samples["prompt"].tolist() == [f"Patient age: {a:.0f}." for a in expected["age"]]
    assert all(Path(p).is_file() for p in samples["path"])


def test_a_transformers_model_folder_or_hub_id_encodes_captions_and_a_missing_one_is_named(tmp_path):
    """Besides ``tiny``, text_encoder names any transformers text model (a hub id, or here a local folder: a
    two-layer BERT as Bio_ClinicalBERT is one); its last hidden state, cut to max_tokens, is the context."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "lung", "ct", "age", ":", "58", "68"]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}).save_pretrained(tmp_path / "bert")
    config = BertConfig(
        vocab_size=11, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    BertModel(config).save_pretrained(tmp_path / "bert")
    encoded = mask_text.encode_captions(
        ["Lung CT age: 58", "Lung CT age: 68", ""], str(tmp_path / "bert"), 0, 8
    )
    assert encoded.shape == (3, 8, 16) and not torch.allclose(encoded[0], encoded[1])
    with pytest.raises(InputError, match=r"diffusion\.mask_text\.train\.text_encoder: cannot load"):
        mask_text.text_encoder(str(tmp_path / "missing"), 0)


def test_resampling_keeps_the_extent_and_the_labels_and_the_affine_follows(tmp_path):
    labels = np.zeros((6, 6, 4))
    labels[:3] = 1
    image, mask = volume_files(tmp_path, labels)
    volume, resampled, affine = mask_text.read_volume_pair(image, mask, len(CLASSES), (0.0, 143.0), (3, 3, 2))
    assert volume.shape == (1, 3, 3, 2) and resampled.shape == (3, 3, 2)
    assert (resampled[0] == 1).all() and (resampled[1:] == 0).all()  # nearest: old voxels 1, 3, 5
    source = nib.load(image).affine
    for old, new in [((-0.5, -0.5, -0.5), (-0.5, -0.5, -0.5)), ((5.5, 5.5, 3.5), (2.5, 2.5, 1.5))]:
        assert np.allclose(source @ [*old, 1], affine @ [*new, 1])  # the grid's outer corners stay put
    assert np.allclose(nib.affines.voxel_sizes(affine), [2.0, 2.0, 4.0])


def test_a_generated_slice_is_made_as_the_real_slice_was():
    from PIL import Image

    from workflow.data.preprocess import resize_to_square
    from workflow.data.slicing import render_slice

    real = np.random.default_rng(0).uniform(-1000, 400, size=(12, 10, 6))
    low, high = -900.0, 300.0
    windowed = np.rint(np.clip((real - low) * 255 / (high - low), 0, 255))
    generated = windowed / 127.5 - 1.0  # the model's range: a perfect generator
    row = pd.Series({"slice_index": 3, "slice_axis": 2, "volume_shape": "[12, 10, 6]"})
    image = mask_text.slice_image(generated, row, 16, "pad")  # rows come as itertuples; a Series reads alike
    expected = resize_to_square(
        Image.fromarray(render_slice(real, 3, 2, low, high)), 16, "pad", Image.Resampling.LANCZOS
    )
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    layers = np.broadcast_to(np.linspace(-1, 1, 3), (6, 5, 3))  # generated on half the grid: slice 3 -> 1
    half = mask_text.slice_image(layers, row, 16, "pad")
    assert np.asarray(half).max() == 128  # layer 1 is 0.0, 127.5 rounded to even


CHANGES = [{"field": "age", "add": 10}, {"field": "smoking_status", "value": "current"}]


def difference_settings(sources: int, changes: list[dict]):
    """The difference_maps settings of a study whose tabular captions give age and smoking status."""
    fields = [
        {"field": "age", "text": "Patient age: {value}."},
        {"field": "smoking_status", "text": "Smoking: {value}."},
    ]
    study = validated(
        {
            "dataset": {"mask_classes": list(CLASSES)},
            "prompts": {"tabular": {"prefix": "Lung CT scan:", "fields": fields}},
            "diffusion": {
                "mask_text": {
                    "sample": {"steps": 2, "guidance_scale": 2.0},
                    "differences": {"split": "test", "sources": sources, "changes": changes},
                }
            },
        }
    )
    return MaskTextDifferenceSettings.of(study)


def saved_model(folder: Path, model: torch.nn.Module, architecture: dict) -> str:
    folder.mkdir()
    mask_guided.save_model(model, folder)
    write_card(folder, {"weights": "random (test)", "architecture": architecture})
    return str(folder)


def captioned(rows: pd.DataFrame, dataset: Path, prompts: Path) -> tuple[str, str]:
    """``rows`` as the dataset, and a prompts table selecting a caption for each."""
    rows.to_parquet(dataset)
    table = pd.DataFrame({"image_id": rows["image_id"], "prompt": "a caption", "selected": True})
    table.assign(prompt_id=[f"p{i}" for i in range(len(rows))]).to_parquet(prompts)
    return str(dataset), str(prompts)


def test_2d_difference_maps_list_every_source_and_change_and_zero_maps_for_unchanged_captions(tmp_path):
    """Two test images x two changes: age + 10 and smoking set to current. The first source smokes already and
    the second has no age, so those captions stay as they are (zero maps, the reason in the summary); the
    others change and their maps are not zero. 2D maps are the images' [-1, 1] difference, identity affine."""
    from classifier_data import fabricate

    from workflow.diffusion import stage

    rows = fabricate(tmp_path / "data", n=20)
    test = rows.index[rows["split"] == "test"]
    rows["tab_smoking_status"] = None
    rows.loc[test[0], "tab_smoking_status"] = "current"
    rows.loc[test[1], "age"] = np.nan
    dataset, prompts = captioned(rows, tmp_path / "dataset.parquet", tmp_path / "test.parquet")
    train, _ = settings({"resolution": 16})
    architecture = mask_text.architecture(train, 2, texts("x")[0].shape[-1])
    torch.manual_seed(0)
    network = mask_guided.network(architecture)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0, 0.2)
    model = saved_model(tmp_path / "model", network, architecture)
    maps = tmp_path / "maps"
    stage.difference_maps(dataset, prompts, model, difference_settings(2, CHANGES), 0, str(maps))
    summary = pd.read_csv(maps / "summary.csv", keep_default_na=False, dtype={"after_value": str})
    ids = rows.loc[test[:2], "image_id"].tolist()
    assert summary["source_id"].tolist() == [ids[0], ids[0], ids[1], ids[1]]
    assert summary["field"].tolist() == ["age", "smoking_status"] * 2
    assert summary["unchanged"].tolist() == [
        "",
        "the caption says so already",
        "missing for this source: in neither caption",
        "",
    ]
    assert summary["after_caption"][3].endswith("Smoking: current.")
    for row in summary.itertuples():
        written = nib.load(maps / row.map)
        assert written.shape == (16, 16) and (maps / row.montage).stat().st_size > 0
        np.testing.assert_array_equal(written.affine, np.eye(4))
        assert (row.max_abs == 0) == bool(row.unchanged) == (not written.get_fdata().any())
    assert {"mean_abs_lungs", "mean_signed"} <= set(summary)
    seeds = json.loads((maps / "provenance.json").read_text())["seeds"]
    assert seeds[f"source {ids[0]}"] == mask_guided.image_seed(0, ids[0]) == summary["seed"][0]


def test_3d_difference_maps_are_in_the_volumes_units_on_the_resampled_grid(tmp_path, model3d):
    """Two CT volumes (6 x 6 x 4 voxels of 1 x 1 x 2 mm, window 0..143) generated on an 8 x 8 x 4 grid: the
    maps have the resampled grid's affine and are differences in the volume's units; setting age to its own
    value changes nothing."""
    from workflow.diffusion import stage

    labels = np.zeros((6, 6, 4))
    labels[2:4] = 1
    labels[4:] = 2
    volumes = []
    for number in range(2):
        (tmp_path / f"v{number}").mkdir()
        image, mask = volume_files(tmp_path / f"v{number}", labels)
        volumes.append({"volume_id": f"ct{number}", "path": image, "mask_path": mask, "age": 50.0 + number})
    rows = pd.DataFrame(
        [
            volume | {"image_id": f"ct{number}/slice{k}", "patient_id": f"p{number}", "slice": k}
            for number, volume in enumerate(volumes)
            for k in range(2)
        ]
    ).assign(split="test", mask="slice.png", window_low=0.0, window_high=143.0, tab_smoking_status="never")
    dataset, prompts = captioned(rows, tmp_path / "dataset.parquet", tmp_path / "test.parquet")
    network, architecture = model3d
    model = saved_model(tmp_path / "model", network, architecture | {"volume_shape": [8, 8, 4]})
    changes = [{"field": "age", "add": 10}, {"field": "age", "value": 51}]
    maps = tmp_path / "maps"
    stage.difference_maps(dataset, prompts, model, difference_settings(2, changes), 0, str(maps))
    summary = pd.read_csv(maps / "summary.csv", keep_default_na=False, dtype={"after_value": str})
    assert summary["source_id"].tolist() == ["ct0", "ct0", "ct1", "ct1"]
    assert summary["after_value"].tolist() == ["60", "51", "61", "51"]
    assert summary["unchanged"].tolist() == ["", "", "", "the caption says so already"]
    affine = mask_text.resampled_affine(np.diag([1.0, 1.0, 2.0, 1.0]), (6, 6, 4), (8, 8, 4))
    for row in summary.itertuples():
        written = nib.load(maps / row.map)
        np.testing.assert_allclose(written.affine, affine)
        difference = written.get_fdata()
        assert difference.shape == (8, 8, 4) and np.abs(difference).max() <= 143.0
        assert row.max_abs == pytest.approx(np.abs(difference).max(), rel=1e-5)
    assert summary["max_abs"][3] == 0 and summary["max_abs"][0] > 0.1  # HU-scale, not [-1, 1]


def test_a_change_the_dataset_or_captions_cannot_make_is_refused_naming_its_key():
    rows = pd.DataFrame({"age": [50.0], "tab_smoking_status": ["never"], "tab_site": ["a"]})
    tabular = difference_settings(1, CHANGES).tabular
    bad = [
        ({"field": "weight", "add": 1}, r"changes\[0\]\.field: the dataset has no field 'weight'"),
        ({"field": "site", "value": "b"}, r"changes\[0\]\.field: 'site' is not one of prompts\.tabular"),
        ({"field": "smoking_status", "add": 1}, r"changes\[0\]\.add: field 'smoking_status' is not numeric"),
    ]
    for change, message in bad:
        with pytest.raises(InputError, match=r"diffusion\.mask_text\.differences\." + message):
            differences.field_changes(rows, [ChangeSettings(**change)], tabular)
    with pytest.raises(InputError, match=r"differences\.changes\[1\]: give the field 'age' either a value"):
        difference_settings(1, [CHANGES[0], {"field": "age"}])


def test_3d_sampling_shards_volumes_and_a_shard_without_one_is_empty(tmp_path, model3d):
    """Two captioned training volumes in three sampling shards: one volume each in the first two, named by
    its place in the split, every training slice with its counterpart after collecting; the third shard
    holds no volume and writes an empty table instead of failing."""
    from classifier_data import fabricate

    from workflow.diffusion import stage

    labels = np.zeros((6, 6, 4))
    labels[2:4] = 1
    files = []
    for number in range(2):
        (tmp_path / f"v{number}").mkdir()
        files.append(volume_files(tmp_path / f"v{number}", labels))
    rows = fabricate(tmp_path / "data", n=10)
    volume = [i % 2 for i in range(len(rows))]
    rows = rows.assign(
        volume_id=[f"ct{v}" for v in volume],
        path=[files[v][0] for v in volume],
        mask_path=[files[v][1] for v in volume],
        slice_index=[i % 4 for i in range(len(rows))],
        slice_axis=2,
        volume_shape="[6, 6, 4]",
        window_low=0.0,
        window_high=143.0,
    )
    dataset, prompts = captioned(rows, tmp_path / "dataset.parquet", tmp_path / "train.parquet")
    network, architecture = model3d
    model = saved_model(tmp_path / "model", network, architecture)
    _, sample = settings(sample={"steps": 1, "shards": 3})
    parts = [str(tmp_path / f"{k}.parquet") for k in range(3)]
    for k in range(3):
        stage.sample_mask_text(dataset, prompts, model, sample, 0, k, str(tmp_path / f"masks{k}"), parts[k])
    assert pd.read_parquet(parts[2]).empty and not list((tmp_path / "masks2").iterdir())
    stage.collect_mask_guided(parts, str(tmp_path / "manifest.parquet"))
    samples = pd.read_parquet(tmp_path / "manifest.parquet")
    train = rows[rows["split"] == "train"]
    assert sorted(samples["source_image_id"]) == sorted(train["image_id"])
    first = train.drop_duplicates("volume_id")["volume_id"].tolist()  # the split's volumes in order
    volume_of = train.set_index("image_id")["volume_id"]
    for row in samples.itertuples():
        number = first.index(volume_of[row.source_image_id])
        assert Path(row.path) == tmp_path / f"masks{number}" / f"{number:06d}.nii.gz"
        assert Path(row.path).is_file() and Path(row.image).is_file()
