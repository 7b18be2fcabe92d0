"""DDIM / null-text inversion and prompt-to-prompt (workflow.editing.inversion, workflow.editing.p2p) on the
tiny random SD.

The tiny UNet's output layer is scaled down ten-fold so that its noise prediction varies slowly with the
latent, as a trained denoiser's does; with random weights as built, DDIM inversion's one approximation
(eps(x_t) used for eps(x_{t-1})) fails outright (relative error above 10), so no bound could be stated.
"""

from __future__ import annotations

import pytest
import torch

from workflow.common.errors import InputError
from workflow.diffusion import base_models
from workflow.editing import inversion, p2p
from workflow.editing.methods import METHODS

STEPS = 10
SOURCE = ["Chest X-ray showing Cardiomegaly", "Chest X-ray showing Edema"]
TARGET = ["Chest X-ray showing Edema", "Chest X-ray showing Edema, Cardiomegaly"]  # replace, refine
WORDS = [["Cardiomegaly", "Edema"], ["Cardiomegaly"]]
SETTINGS = {
    "steps": STEPS,
    "guidance_scale": 7.5,
    "cross_replace_steps": 0.8,
    "self_replace_steps": 0.5,
    "word_weight": 2.0,
    "local_blend": True,
    "blend_threshold": 0.3,
}


@pytest.fixture(scope="module")
def pipe():
    """The tiny SD, run on one thread: its layers are too small to gain from two, and on the shared CI
    cores the second thread's spinning made this module three times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = base_models.build_random(*base_models.TINY_CONFIGS, seed=0)
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(0.1)
        pipe.unet.conv_out.bias.mul_(0.1)
    yield pipe
    torch.set_num_threads(threads)


def latents(side: int, batch: int = 2) -> torch.Tensor:
    """Unit-variance latents, the scale of SD's scaled VAE latents."""
    return torch.randn(batch, 4, side, side, generator=torch.Generator().manual_seed(0))


def plain(pipe, x_t: torch.Tensor, steps: int = STEPS) -> inversion.Inversion:
    """An inversion with the empty prompt's embedding at every step."""
    empty = inversion.embed(pipe, [""] * len(x_t))
    return inversion.Inversion(latents=x_t, uncond=empty.expand(steps, *empty.shape))


def test_ddim_inversion_then_reconstruction_reproduces_the_source(pipe):
    source = latents(8)
    trajectory = inversion.ddim_inversion(pipe, source, inversion.embed(pipe, SOURCE), STEPS)
    settings = SETTINGS | {"guidance_scale": 1.0, "local_blend": False}
    result = p2p.sample_edits(pipe, plain(pipe, trajectory[-1]), SOURCE, TARGET, WORDS, settings)
    # measured 0.040 rms on unit-variance latents (10 steps); a timestep pairing off by one step gives > 0.3
    assert (result.source - source).pow(2).mean().sqrt() < 0.06
    assert (trajectory[-1] - source).pow(2).mean().sqrt() > 0.5  # x_T is not the source itself


def test_method_functions_return_edited_and_reconstruction_images(pipe):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    settings = SETTINGS | {"steps": 2, "inner_steps": 2, "early_stop": 1e-5, "learning_rate": 1e-2}
    for name in ("ddim-p2p", "null-text-p2p"):
        out = METHODS[name](pipe, images, SOURCE, TARGET, WORDS, settings, seeds=[0, 1])
        assert out.edited.shape == out.reconstruction.shape == images.shape
        assert out.edited.abs().max() <= 1 and not torch.equal(out.edited, out.reconstruction)


def test_null_text_optimisation_brings_each_step_onto_the_pivot(pipe):
    source, steps, guidance = latents(8), 2, 7.5
    cond, empty = inversion.embed(pipe, SOURCE), inversion.embed(pipe, [""] * 2)
    trajectory = inversion.ddim_inversion(pipe, source, cond, steps)
    null = inversion.null_text_optimisation(pipe, trajectory, cond, empty, guidance, 10, 1e-5, 1e-2)
    assert null.shape == (steps, *empty.shape)
    scheduler = inversion.sampler(pipe, steps)
    t = scheduler.timesteps[0]

    def first_step_error(uncond: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            eps = inversion.guided(pipe, trajectory[-1], t, uncond, cond, guidance)
        return (scheduler.step(eps, t, trajectory[-1]).prev_sample - trajectory[-2]).pow(2).flatten(1).mean(1)

    assert (first_step_error(null[0]) < 0.9 * first_step_error(empty)).all()  # per image


def test_batched_null_text_optimisation_equals_one_image_at_a_time(pipe):
    source, steps, guidance = latents(8), 2, 7.5
    cond, empty = inversion.embed(pipe, SOURCE), inversion.embed(pipe, [""] * 2)
    trajectory = inversion.ddim_inversion(pipe, source, cond, steps)
    # the first step's losses with the empty prompt are 7e-4 and 9e-4: an early stop at 8e-4 stops image 0
    # at once and optimises image 1
    args = (guidance, 10, 8e-4, 1e-2)
    batched = inversion.null_text_optimisation(pipe, trajectory, cond, empty, *args)
    assert torch.equal(batched[0, 0], empty[0]) and not torch.equal(batched[0, 1], empty[1])
    for i in range(2):
        alone = inversion.null_text_optimisation(
            pipe, [z[i : i + 1] for z in trajectory], cond[i : i + 1], empty[i : i + 1], *args
        )
        torch.testing.assert_close(batched[:, i : i + 1], alone, atol=1e-5, rtol=1e-4)


def test_p2p_without_replaced_steps_equals_plain_sampling(pipe):
    x_t = latents(8)
    settings = SETTINGS | {"cross_replace_steps": 0.0, "self_replace_steps": 0.0, "local_blend": False}
    result = p2p.sample_edits(pipe, plain(pipe, x_t), SOURCE, TARGET, WORDS, settings)
    reference = pipe(
        prompt_embeds=inversion.embed(pipe, TARGET),
        negative_prompt_embeds=inversion.embed(pipe, ["", ""]),
        latents=x_t,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        output_type="latent",
        height=8 * pipe.vae_scale_factor,
        width=8 * pipe.vae_scale_factor,
    ).images
    torch.testing.assert_close(result.target, reference, atol=1e-4, rtol=1e-4)
    edited = p2p.sample_edits(
        pipe, plain(pipe, x_t), SOURCE, TARGET, WORDS, SETTINGS | {"local_blend": False}
    )
    assert (edited.target - reference).abs().max() > 1e-2  # the controller does act
    assert not any(isinstance(p, p2p.P2PAttnProcessor) for p in pipe.unet.attn_processors.values())


def test_local_blend_keeps_the_source_outside_its_mask(pipe):
    # the random model's attention is nearly uniform over space: only a high threshold leaves a partial mask
    settings = SETTINGS | {"blend_threshold": 0.97}
    result = p2p.sample_edits(pipe, plain(pipe, latents(16)), SOURCE, TARGET, WORDS, settings)
    mask = result.mask.expand_as(result.target)
    assert 0.05 < mask.float().mean() < 0.95
    assert torch.equal(result.target[~mask], result.source[~mask])
    assert (result.target[mask] - result.source[mask]).abs().max() > 1e-2


def test_a_sweep_gives_one_output_per_value(pipe):
    x_t, few = plain(pipe, latents(16, batch=1), steps=6), SETTINGS | {"steps": 6}
    values = [0.2, 0.5, 0.8]
    outputs = [
        p2p.sample_edits(
            pipe, x_t, SOURCE[:1], TARGET[:1], WORDS[:1], few | {"cross_replace_steps": v}
        ).target
        for v in values
    ]
    for i in range(len(values)):
        for j in range(i):
            assert (outputs[i] - outputs[j]).abs().max() > 1e-5, (values[j], values[i])  # beyond rounding
    again = p2p.sample_edits(
        pipe, x_t, SOURCE[:1], TARGET[:1], WORDS[:1], few | {"cross_replace_steps": values[0]}
    )
    torch.testing.assert_close(again.target, outputs[0], atol=0, rtol=0)  # no state survives a run


def test_alignment_replaces_equal_lengths_and_refines_others(pipe):
    ids = p2p.token_ids(pipe.tokenizer, [SOURCE[0], TARGET[0], TARGET[1]])
    mapper, alphas = p2p.alignment(ids[0], ids[1])
    assert torch.equal(mapper, torch.arange(ids.shape[1])) and bool(alphas.all())
    mapper, alphas = p2p.alignment(
        ids[0], ids[2]
    )  # "... showing Edema, Cardiomegaly" from "... Cardiomegaly"
    cardiomegaly = p2p.word_positions(pipe.tokenizer, ids[2], "Cardiomegaly")
    assert (
        alphas[cardiomegaly].all() and ids[0][mapper[cardiomegaly]].tolist() == ids[2][cardiomegaly].tolist()
    )
    new = p2p.word_positions(pipe.tokenizer, ids[2], "Edema")
    assert not alphas[new].any()


def test_an_edit_word_the_tokenizer_cannot_place_is_named(pipe):
    with pytest.raises(InputError, match="'zebra'"):
        p2p.sample_edits(
            pipe, plain(pipe, latents(8)), SOURCE, TARGET, [["Cardiomegaly"], ["zebra"]], SETTINGS
        )


def test_an_sdedit_edit_depends_on_its_own_seed_not_on_its_batch(pipe):
    """Each image was noised from the batch's first seed and its position: adding an edit to the plan
    re-noised every later one."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    settings = {"steps": 4, "guidance_scale": 7.5, "strength": 0.6}
    both = METHODS["sdedit"](pipe, images, SOURCE, TARGET, WORDS, settings, seeds=[11, 12]).edited
    alone = METHODS["sdedit"](pipe, images[1:], SOURCE[1:], TARGET[1:], WORDS[1:], settings, seeds=[12])
    torch.testing.assert_close(both[1:], alone.edited, atol=1e-5, rtol=1e-4)


def test_null_text_optimisation_runs_more_than_a_hundred_steps(pipe):
    """The learning rate fell as lr x (1 - i/100): negative from step 101 on, which Adam refuses."""
    steps = 102
    trajectory = [latents(4) * (1 - k / (2 * steps)) for k in range(steps + 1)]
    cond, empty = inversion.embed(pipe, SOURCE), inversion.embed(pipe, [""] * 2)
    null = inversion.null_text_optimisation(pipe, trajectory, cond, empty, 7.5, 1, 1e-5, 1e-2)
    assert null.shape == (steps, *empty.shape)


def test_untouched_attention_runs_sdpa_on_four_dimensional_tensors(pipe, monkeypatch):
    """The untouched path passed 3-D (batch x heads, seq, dim) tensors, on which PyTorch's SDPA takes the
    math kernel (the full seq x seq scores: 4096² per head at 512 px)."""
    shapes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(query, *args, **kwargs):
        shapes.append(query.ndim)
        return sdpa(query, *args, **kwargs)

    monkeypatch.setattr(p2p.F, "scaled_dot_product_attention", recording)
    untouched = SETTINGS | {"cross_replace_steps": 0.0, "self_replace_steps": 0.0, "local_blend": False}
    p2p.sample_edits(pipe, plain(pipe, latents(8), steps=2), SOURCE, TARGET, WORDS, untouched | {"steps": 2})
    assert shapes and set(shapes) == {4}


def test_an_edit_without_reconstruction_is_measured_against_the_source_through_the_vae(pipe):
    """sdedit's difference map and effectiveness compared the edit with the source PNG, so the VAE round
    trip counted as the edit."""
    from workflow.editing import inversion
    from workflow.editing.methods import EditOutput
    from workflow.editing.stage import reference_images

    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    reference = reference_images(pipe, images, EditOutput(edited=images, reconstruction=None))
    expected = inversion.decode_latents(pipe, inversion.encode_images(pipe, images))
    torch.testing.assert_close(reference, expected)
    assert (reference - images).abs().mean() > 0.01  # the tiny VAE does not reproduce its input
    reconstruction = images.flip(0)
    assert (
        reference_images(pipe, images, EditOutput(edited=images, reconstruction=reconstruction))
        is reconstruction
    )


def test_inversions_are_cached_shared_by_the_methods_and_keyed_by_what_they_depend_on(
    pipe, tmp_path, monkeypatch
):
    """Every method inverted every image again: ddim-p2p and null-text-p2p the same DDIM inversion, and each
    rerun (another p2p setting, the undo) everything."""
    inverted, optimised = [], []
    ddim, null = inversion.ddim_inversion, inversion.null_text_optimisation
    monkeypatch.setattr(
        inversion, "ddim_inversion", lambda pipe, z, *a: inverted.append(len(z)) or ddim(pipe, z, *a)
    )
    monkeypatch.setattr(
        inversion,
        "null_text_optimisation",
        lambda pipe, t, *a: optimised.append(len(t[0])) or null(pipe, t, *a),
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    settings = SETTINGS | {"steps": 2, "inner_steps": 2, "early_stop": 1e-5, "learning_rate": 1e-2}
    cache = inversion.InversionCache(tmp_path, inversion.fingerprint(pipe))
    first = METHODS["null-text-p2p"](pipe, images, SOURCE, TARGET, WORDS, settings, [0, 1], cache=cache)
    assert inverted == [2] and optimised == [2]
    again = METHODS["null-text-p2p"](pipe, images, SOURCE, TARGET, WORDS, settings, [0, 1], cache=cache)
    torch.testing.assert_close(again.edited, first.edited, atol=0, rtol=0)
    METHODS["ddim-p2p"](pipe, images, SOURCE, TARGET, WORDS, settings, [0, 1], cache=cache)
    assert inverted == [2] and optimised == [2]  # loaded, not computed
    uncached = METHODS["ddim-p2p"](pipe, images, SOURCE, TARGET, WORDS, settings, [0, 1])
    cached = METHODS["ddim-p2p"](pipe, images, SOURCE, TARGET, WORDS, settings, [0, 1], cache=cache)
    torch.testing.assert_close(cached.edited, uncached.edited, atol=0, rtol=0)
    inverted.clear()
    changed = [SOURCE[0], SOURCE[0]]  # the second image's caption changed: only it is inverted
    METHODS["ddim-p2p"](pipe, images, changed, TARGET, WORDS, settings, [0, 1], cache=cache)
    assert inverted == [1]
    other = inversion.InversionCache(tmp_path, "another model")
    METHODS["null-text-p2p"](pipe, images, SOURCE, TARGET, WORDS, settings, [0, 1], cache=other)
    assert inverted == [1, 2] and optimised == [2, 2]
    bias = pipe.unet.conv_out.bias.detach().clone()
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(1e-3)
    try:
        assert inversion.fingerprint(pipe) != cache.model  # changed weights: another model
    finally:
        with torch.no_grad():
            pipe.unet.conv_out.bias.copy_(bias)
    assert inversion.fingerprint(pipe) == cache.model


LEDITS = {
    "steps": 3,
    "edit_guidance_scale": 5.0,
    "edit_threshold": 0.9,
    "skip": 0.15,
    "use_intersect_mask": False,
}


def test_ledits_edits_towards_the_added_and_away_from_the_removed_words_from_its_seed(pipe):
    from workflow.editing import ledits

    assert ledits.concepts(SOURCE[0], TARGET[0]) == [("Edema", False), ("Cardiomegaly", True)]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    processors = pipe.unet.attn_processors
    run = METHODS["ledits++"]
    first = run(pipe, images, SOURCE, TARGET, WORDS, LEDITS, seeds=[5, 6])
    assert first.edited.shape == images.shape and first.reconstruction is None
    assert first.edited.abs().max() <= 1 and (first.edited - images).abs().mean() > 1e-2
    again = run(pipe, images[1:], SOURCE[1:], TARGET[1:], WORDS[1:], LEDITS, seeds=[6])
    torch.testing.assert_close(again.edited, first.edited[1:], atol=1e-5, rtol=1e-4)  # its own seed
    other = run(pipe, images[1:], SOURCE[1:], TARGET[1:], WORDS[1:], LEDITS, seeds=[7])
    assert (other.edited - again.edited).abs().max() > 1e-4
    assert pipe.unet.attn_processors.keys() == processors.keys()
    assert all(type(p) is type(processors[k]) for k, p in pipe.unet.attn_processors.items())
    with pytest.raises(InputError, match="use_intersect_mask"):  # the tiny UNet has no 1/4-size attention
        run(pipe, images, SOURCE, TARGET, WORDS, LEDITS | {"use_intersect_mask": True}, seeds=[5, 6])


def test_ledits_counts_an_edit_concepts_own_tokens_not_the_padding(pipe):
    """diffusers took the tokenizer's return_length, 77 with padding, so the implicit mask averaged the
    cross-attention of every token after the start token."""
    from workflow.editing import ledits

    pipeline = ledits.pipeline(pipe)
    pipeline.batch_size = 1
    *_, counts = pipeline.encode_prompt(
        num_images_per_prompt=1,
        device=pipe.device,
        enable_edit_guidance=True,
        editing_prompt=["Pleural Effusion", "Cardiomegaly"],
    )
    assert counts.tolist() == [2, 1]
