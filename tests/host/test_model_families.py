"""SD2.x at its real width and the SDXL family in every node (issue 17), in the real host.

Two models, each test run on both (module fixture `fam`):
- "sdxl": the mini SDXL (conftest `sdxl_model`: the host's own SDXL classes with a reduced unet_config:
  context 2048, the 2816-wide ADM input `y`, 2-layer transformer blocks at 1/4 of the latent size and in
  the middle block), prompts from the generated Segmind-Vega checkpoint's CLIP-L + OpenCLIP-G, frames
  through its SDXL TAESD; one prompt carries CLIPTextEncodeSDXL's size/crop entries, so `y` is not the
  default one;
- "sd21": the generated SD2.1-768-v checkpoint (context 1024, linear proj_in, heads of 64, v-prediction).
4 frames of carphone_pristine.mp4 at 64x64 px (8x8 latents), 4 DDIM steps (4 divides 1000: our
schedule is ComfyUI's ddim_uniform). The real-width Segmind-Vega UNet (745 M params) is the `slow` test at
the end: two frames, a few forwards.
"""
import dataclasses
import os
import types

import numpy as np
import pytest
import torch

from temporal_adapter.adapter_core import ddim, training
from temporal_adapter.adapter_core.adapter import Adapter
from temporal_adapter.adapter_core.temporal_loss import cosine_similarity_adjacent
from test_adapter_nodes import train as train_adapter, untrained as untrained_adapter
from test_inversion_nodes import encode, frames_of, invert, rel_error, sharpened_self_attention
from test_sampler_nodes import ALL_OFF, ALL_ON, sample

pytestmark = pytest.mark.usefixtures("big_model_turn")  # full-size checkpoints (conftest)

FRAMES, STEPS = 4, 4
SDXL_SIZES = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}


@pytest.fixture(scope="module")
def mods(comfy_host):
    from temporal_adapter.nodes import adapter_nodes, heatmap_nodes, host, inversion_nodes, sampler_nodes
    return types.SimpleNamespace(adapter=adapter_nodes, heatmap=heatmap_nodes, host=host, inversion=inversion_nodes,
                                 sampler=sampler_nodes, pair=(inversion_nodes, sampler_nodes))


def text_conditioning(clip, text, extra=None):
    """CLIPTextEncode's output, plus `extra` entries (CLIPTextEncodeSDXL's sizes) beside the pooled output."""
    with torch.inference_mode():
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return [[cond, {"pooled_output": pooled, **(extra or {})}]]


@pytest.fixture(scope="module", params=["sdxl", "sd21"])
def fam(request, comfy_host, clips, mods):
    """The model, its CLIP and VAE, source/edit/negative prompts, the clip's latents and their inversion."""
    if request.param == "sdxl":
        model = request.getfixturevalue("sdxl_model")
        clip, vae = request.getfixturevalue("sdxl_clip")
    else:
        with torch.inference_mode():
            model, clip, vae = comfy_host.nodes.CheckpointLoaderSimple().load_checkpoint("ta_sd21_768v.safetensors")[:3]
    sizes = SDXL_SIZES if request.param == "sdxl" else None
    source = text_conditioning(clip, "a man talking on a phone in a car")
    edit = text_conditioning(clip, "a robot talking on a phone in a car, oil painting", sizes)
    negative = text_conditioning(clip, "blurry")
    latent = encode(comfy_host, vae, frames_of(clips["carphone_pristine.mp4"], FRAMES, 64))
    noise, inv, report = invert(mods.inversion, model, source, latent, STEPS)
    return types.SimpleNamespace(name=request.param, model=model, clip=clip, vae=vae, source=source, edit=edit,
                                 negative=negative, latent=latent, noise=noise, inv=inv, report=report)


def test_layout_and_conditioning_of_each_family(fam, mods):
    layout = mods.host.unet_layout(fam.model)
    family = mods.host.check_supported(fam.model)
    if fam.name == "sdxl":
        assert (family, layout.context_dim, layout.adm_channels) == ("SDXL", 2048, 2816)
        assert layout.depths() == {("input", 3): 1, ("input", 5): 2, ("middle", 0): 2, ("output", 0): 2,
                                   ("output", 1): 2, ("output", 2): 1, ("output", 3): 1}
        assert layout.describe() == {"attention blocks": "input 3, input 5, middle 0, output 0, output 1, output 2, "
                                     "output 3", "filter blocks": "output 2, output 3", "feature block": "output 1",
                                     "decoder attention": "output 1, output 2, output 3"}
        assert fam.source[0][0].shape == (1, 77, 2048) and fam.source[0][1]["pooled_output"].shape == (1, 1280)
    else:
        assert (family, layout.context_dim, layout.adm_channels) == ("SD20", 1024, None)
        assert fam.model.model.model_type.name == "V_PREDICTION"
        # the SD1.5 layout at SD2's width: the method's SD1.5 blocks
        assert layout.describe()["filter blocks"] == "output 9, output 10"
        assert layout.describe()["decoder attention"] == ", ".join(f"output {i}" for i in range(4, 12))
        heads = fam.model.model.diffusion_model.output_blocks[11][1].transformer_blocks[0].attn1.heads
        assert heads == 5 and fam.source[0][0].shape == (1, 77, 1024)


def test_model_conds_are_what_the_host_passes_its_unet(fam, mods, comfy_host):
    """What `host.model_conds` builds for our direct UNet calls (source passes, trainer) equals what the host's
    own KSampler hands apply_model, read through a UNet function wrapper: the context and, on SDXL, the ADM
    vector y from the pooled output and CLIPTextEncodeSDXL's sizes."""
    seen = []
    model = fam.model.clone()
    model.set_model_unet_function_wrapper(lambda apply, args: seen.append(args["c"]) or apply(
        args["input"], args["timestep"], **args["c"]))
    with torch.inference_mode():
        comfy_host.nodes.KSampler().sample(model, 0, 1, 1.0, "euler", "normal", fam.edit, fam.edit, fam.latent)
        ours = mods.host.model_conds(fam.model, fam.edit, fam.latent["samples"])
    assert seen and set(ours) == {k for k in seen[0] if k != "transformer_options"}
    for key, value in ours.items():
        torch.testing.assert_close(value, seen[0][key].to(value), rtol=0, atol=0)
    if fam.name == "sdxl":
        assert ours["y"].shape == (FRAMES, 2816)
        default = mods.host.model_conds(fam.model, fam.source, fam.latent["samples"])["y"]
        assert not torch.equal(default[:, 1280:], ours["y"][:, 1280:])  # 64 px latents vs the 1024 px sizes given


def test_inversion_all_off_equals_the_host_sampler_over_the_flipped_sigmas(fam, mods):
    """Our inverter equals the host's own SamplerCustom path (its conditioning, ADM included) running our DDIM
    inversion SAMPLER over the flipped ddim_uniform sigmas; on SDXL the pooled text reaches the UNet."""
    from comfy_extras import nodes_custom_sampler as ncs
    with torch.inference_mode():
        sampler = mods.inversion.DDIMInversionSampler().get_sampler(0)[0]
        sigmas = ncs.BasicScheduler().get_sigmas(fam.model, "ddim_uniform", STEPS, 1.0)[0]
        theirs = ncs.SamplerCustom().sample(fam.model, False, 0, 1.0, fam.source, fam.source, sampler, sigmas.flip(0),
                                            fam.latent)[0]["samples"]
    torch.testing.assert_close(fam.noise["samples"], theirs, rtol=1e-4, atol=1e-4)
    if fam.name == "sdxl":
        other = [[fam.source[0][0], {"pooled_output": torch.zeros_like(fam.source[0][1]["pooled_output"])}]]
        changed, _, _ = invert(mods.inversion, fam.model, other, fam.latent, STEPS)
        assert rel_error(changed["samples"], fam.noise["samples"]) > 1e-3


def test_sampling_all_off_equals_ksampler(fam, mods, comfy_host):
    """cfg 4, the edit prompt, from the inversion's noise: equal to KSamplerAdvanced (ddim, ddim_uniform, no
    added noise) to 1e-4 (v-prediction on SD2.1, the ADM input on SDXL)."""
    ours, report = sample(mods.pair, fam.model, fam.edit, fam.negative, fam.inv, cfg=4.0, steps=STEPS)
    with torch.inference_mode():
        theirs = comfy_host.nodes.KSamplerAdvanced().sample(
            fam.model, "disable", 0, STEPS, 4.0, "ddim", "ddim_uniform", fam.edit, fam.negative, fam.noise, 0, 10000,
            "disable")[0]["samples"]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert "adapter: off" in report


def upstream_lora(model, scale=0.5):
    """(clone, key): a clone with a LoRA-like weight patch on every attn2 output projection (the host's
    add_patches, as LoraLoader applies one), so our patches must compose with it; `key` is one patched weight."""
    weights = model.model_state_dict()
    keys = [k for k in weights if k.endswith("attn2.to_out.0.weight")]
    clone = model.clone()
    assert len(clone.add_patches({k: (weights[k] * scale,) for k in keys}, 1.0)) == len(keys)
    return clone, keys[-1]


def fresh_adapter(mods, model, frames=FRAMES, seed=5):
    """A new adapter for `model` with a non-zero LoRA (up weights set), so it changes the output."""
    with torch.inference_mode(False):
        adapter = mods.adapter.TA_TrainAdapter._new_adapter(
            model, mods.host.model_family(model), frames, torch.randn(1, 77, mods.host.text_width(model)), 2, 1, 2,
            2.0, "auto", (0, 1000), seed, None, None)
        with torch.no_grad():
            for lora in adapter.loras.values():
                lora.up.normal_(0, 0.02, generator=torch.Generator().manual_seed(seed))
    return adapter


def test_every_mechanism_runs_on_every_transformer_layer_and_composes_with_an_upstream_lora(fam, mods, monkeypatch,
                                                                                          comfy_host):
    """All on (adapter, filter, keyframes, injection, 2 chunks) on a model with an upstream LoRA (inverted with
    it too): finite; the LoRA's patched weights are in place in every UNet call (read by an upstream UNet
    wrapper, which ours keep calling); the injection records and injects the attn1 input of every transformer
    layer of the decoder attention blocks (2 per block at 1/4 of the latent size on the mini SDXL); the
    incoming MODEL is untouched, its weights too once the host has switched back to it (the host restores the
    LoRA's weights through the adapter's LoRA wrappers, which must reach the wrapped modules)."""
    import comfy.utils
    from temporal_adapter.adapter_core.attention import SourceInjection
    recorded, swap = set(), SourceInjection._swap

    def watched(self, key, x, chunks):
        recorded.add((self.mode, key))
        return swap(self, key, x, chunks)
    monkeypatch.setattr(SourceInjection, "_swap", watched)
    layout = mods.host.unet_layout(fam.model)
    lora, key = upstream_lora(fam.model)
    expected = 1.5 * float(fam.model.model_state_dict()[key].double().abs().sum())
    sums = []

    def reading(apply, args):
        sums.append(float(comfy.utils.get_attr(lora.model, key).double().abs().sum()))
        return apply(args["input"], args["timestep"], **args["c"])
    lora.set_model_unet_function_wrapper(reading)
    before = repr(fam.model.model_options), dict(fam.model.patches)
    weights = {k: v.clone() for k, v in fam.model.model.state_dict().items()}
    _, inv, _ = invert(mods.inversion, lora, fam.source, fam.latent, 2)
    out, report = sample(mods.pair, lora, fam.edit, fam.negative, inv, adapter=fresh_adapter(mods, fam.model), cfg=4.0,
                         steps=2, frames_per_chunk=3, chunk_overlap=1, **ALL_ON)
    assert (repr(fam.model.model_options), dict(fam.model.patches)) == before
    with torch.inference_mode():  # the host loads the plain model again, unloading the LoRA'd clones
        comfy_host.nodes.KSampler().sample(fam.model, 0, 1, 1.0, "euler", "normal", fam.edit, fam.edit, fam.latent)
    now = fam.model.model.state_dict()
    assert now.keys() == weights.keys() and all(torch.equal(now[k], weights[k]) for k in weights)
    assert torch.isfinite(out).all() and out.shape == fam.latent["samples"].shape
    assert len(sums) > 4 and max(abs(v / expected - 1) for v in sums) < 1e-3
    names = layout.describe()
    assert "2 chunk(s)" in report and "adapter: on" in report
    assert f"temporal filter: on ({names['filter blocks']}, kernel 5)" in report
    assert (f"source injection: on (attention 0.5 on {names['decoder attention']}; features 0.8 on "
            f"{names['feature block']})") in report
    layers = {("attn1", *b, i) for b in layout.decoder_attention_blocks() for i in range(layout.depths()[b])}
    assert {key for mode, key in recorded if mode == "inject" and key[0] == "attn1"} == layers
    if fam.name == "sdxl":
        assert ("attn1", "output", 1, 1) in layers  # the second layer of a deep block


SMALL = dict(shared_tokens=2, unshared_tokens=1, lora_rank=2, lora_alpha=2.0)


def train(mods, model, cond, latent, steps, **kw):
    """test_adapter_nodes.train with fewer tokens, rank 2 and no shared-only phase."""
    return train_adapter((mods.adapter, mods.host), (model, cond, None, latent), steps,
                         **{"shared_only_fraction": 0.0, **SMALL, **kw})


def evaluate(mods, fam, adapter, batches=3):
    """(mean total loss on fixed batches, Fig. 4 table) of `adapter`, with the model's ADM input."""
    host = mods.host
    settings = training.TrainSettings(**adapter.metadata["training"])
    blocks = [tuple(b) for b in adapter.metadata["feature_blocks"]]
    with torch.inference_mode(), host.TrainingDenoiser(fam.model, adapter, blocks) as denoise:
        latents = host.model_space(fam.model, fam.latent["samples"]).clone()
        text, sigmas = fam.source[0][0].clone(), host.model_sigmas(fam.model)
        extra = host.adm_conditioning(fam.model, fam.source, fam.latent["samples"][:1])
        objective = training.Objective(adapter, denoise, latents, text, sigmas, settings, extra)
        with torch.no_grad():
            losses = [float(objective(training.draw_batch(settings, 10_000 + i, FRAMES, latents.shape[1:],
                                                          adapter.window))[0]) for i in range(batches)]
        table = training.consistency_table(adapter, denoise, latents, text, sigmas, (999, 950, 900), 1, extra)
    return float(np.mean(losses)), table


@pytest.fixture(scope="module")
def trained(fam, mods, comfy_host):
    """8 AdamW steps of 2 adjacent frames; the shared MODEL's weights, options and KSampler output before/after."""
    def ksample():
        with torch.inference_mode():
            return comfy_host.nodes.KSampler().sample(fam.model, 3, 2, 4.0, "euler", "normal", fam.edit, fam.negative,
                                                      fam.latent)[0]["samples"]
    weights = {k: v.clone() for k, v in fam.model.model.state_dict().items()}
    options, before = repr(fam.model.model_options), ksample()
    adapter = train(mods, fam.model, fam.source, fam.latent, 8)[0]
    unchanged = (all(torch.equal(v, weights[k]) for k, v in fam.model.model.state_dict().items())
                 and repr(fam.model.model_options) == options and torch.equal(ksample(), before))
    return adapter, unchanged


def test_training_lowers_the_loss_and_leaves_the_model_bit_identical(fam, mods, trained):
    """Loss on 3 fixed batches, untrained (same seed and start) -> trained, and the theory paper's Fig. 4
    measurement (adjacent-frame cosine of decoder features and x0 per timestep) without and with the adapter."""
    adapter, unchanged = trained
    assert unchanged, "training changed the shared MODEL"
    assert adapter.metadata["family"] == mods.host.model_family(fam.model)
    assert adapter.width == mods.host.text_width(fam.model)
    assert adapter.metadata["feature_blocks"] == [list(b) for b in mods.host.unet_layout(fam.model)
                                                  .decoder_attention_blocks()]
    untrained = untrained_adapter((mods.adapter, mods.host), fam.model, fam.source, fam.latent["samples"].shape[0],
                                  **SMALL)
    untrained.metadata.update(training=adapter.metadata["training"], feature_blocks=adapter.metadata["feature_blocks"])
    (loss0, table0), (loss1, table1) = evaluate(mods, fam, untrained), evaluate(mods, fam, adapter)
    print(f"\n{fam.name}: loss on fixed batches untrained {loss0:.5f} -> trained {loss1:.5f}")
    print("   t | features without | features with | x0 without | x0 with")
    for (t, f0, x0), (_, f1, x1) in zip(table0, table1):
        print(f"{t:4d} | {f0:16.6f} | {f1:13.6f} | {x0:10.6f} | {x1:7.6f}")
    assert loss1 < loss0
    assert np.mean([r[1] for r in table1]) > np.mean([r[1] for r in table0])


@pytest.mark.parametrize("fam", ["sdxl"], indirect=True)
def test_plain_gradient_descent_with_the_lipschitz_step_never_increases_the_loss(fam, mods):
    """§1's step rule on the SDXL layout: plain GD with η = 1/L from the Hessian power-iteration estimate (its
    Hessian-vector products cost minutes on the SD2.1 UNet; test_adapter_nodes covers the SD1.5 layout)."""
    adapter = train(mods, fam.model, fam.source, fam.latent, 3, optimizer="gd")[0]
    totals = [r["total"] for r in adapter.metadata["loss_history"]]
    print(f"\n{fam.name}: plain GD totals {totals}, step {adapter.metadata['loss_history'][0]['lr']:.4g}")
    assert all(b <= a for a, b in zip(totals, totals[1:])) and totals[-1] < totals[0]


def test_save_load_apply_is_bit_identical(fam, mods, comfy_host, trained, adapter_dir):
    adapter = trained[0]
    with torch.inference_mode():
        name = mods.adapter.TA_SaveAdapter().save(adapter, f"family_{fam.name}")["result"][0]
        loaded = mods.adapter.TA_LoadAdapter().load(name, fam.model, fam.latent)[0]
        outs = []
        for a in (adapter, loaded):
            m, pos, neg = mods.adapter.TA_ApplyAdapter().apply(fam.model, fam.edit, a, False, fam.negative,
                                                               fam.latent)
            assert pos[0][0].shape == (FRAMES, 3 + 77, mods.host.text_width(fam.model))
            assert "pooled_output" in pos[0][1]
            outs.append(comfy_host.nodes.KSampler().sample(m, 3, 1, 4.0, "euler", "normal", pos, neg,
                                                           fam.latent)[0]["samples"])
    assert torch.equal(outs[0], outs[1])


def test_an_adapter_of_another_family_is_refused_naming_both(fam, mods, tiny_model, adapter_dir):
    """An SD1.5 adapter on this model and this family's adapter on SD1.5: Apply, the sampler and Load refuse."""
    family = mods.host.model_family(fam.model)
    sd15 = tiny_model[0]
    cases = [(fresh_adapter(mods, sd15), fam.model, "SD15", family), (fresh_adapter(mods, fam.model), sd15, family,
                                                                      "SD15")]
    for adapter, model, mine, theirs in cases:
        message = f"trained on a {mine} model .* but the model here is {theirs}"
        with pytest.raises(ValueError, match=message), torch.inference_mode():
            mods.adapter.TA_ApplyAdapter().apply(model, fam.edit, adapter, False)
        with pytest.raises(ValueError, match=message):
            sample(mods.pair, model, fam.edit, fam.negative, latent=fam.noise, adapter=adapter, steps=STEPS,
                   use_adapter=True)
    cases[0][0].save(str(adapter_dir / "other.safetensors"))
    with pytest.raises(ValueError, match=f"trained on a SD15 model .* but the model here is {family}"):
        mods.adapter.TA_LoadAdapter().load("other.safetensors", fam.model, fam.latent)


def test_heatmaps_map_words_and_report_the_alignment_per_block_and_layer(fam, mods):
    """Word -> token positions through the family's tokenizer (SDXL: clip_l and clip_g share positions), the
    default blocks of the layout, and ‖ΔZ‖_F per block and transformer layer."""
    text = "a man talking on a phone in a car"
    with torch.inference_mode():
        out = mods.heatmap.AttentionHeatmaps().run(
            fam.model, fam.clip, fam.source, fam.latent, text, "phone, car", "auto", "auto", "probe", STEPS, 1.0, 0,
            0.5, "jet", "map", 0, 0)
    report = out["result"][3]
    names = mods.host.unet_layout(fam.model).describe()
    assert f"blocks: {names['decoder attention']}" in report
    assert "phone = #6" in report and "car = #9" in report  # start token #0, then a man talking on a phone in a car
    assert out["result"][2].shape == (2 * FRAMES, 64, 64)
    if fam.name == "sdxl":
        # the second transformer layer of output 1 has its own row
        assert any(line.startswith("output 1.1 ") for line in report.splitlines())
    tokens, _, _ = mods.host.prompt_tokens(fam.clip, text)
    assert [piece for _, piece, _ in tokens[1:10]] == ["a</w>", "man</w>", "talking</w>", "on</w>", "a</w>",
                                                       "phone</w>", "in</w>", "a</w>", "car</w>"]


def test_temporal_filter_contracts_frame_differences_on_this_layout(fam, mods, comfy_host, clips):
    """The filter on the layout's filter blocks (default blocks: auto) pulls adjacent frames of the inversion
    together (the theory's contraction; q/k sharpened x4 as in test_inversion_nodes, 2 steps, 8 frames)."""
    latent = encode(comfy_host, fam.vae, frames_of(clips["carphone_pristine.mp4"], 8, 64))
    with torch.inference_mode():
        model = sharpened_self_attention(fam.model, 4.0)
    table = {}
    for filt in ("off", "temporal"):
        _, inv, report = invert(mods.inversion, model, fam.source, latent, 2, filt, "auto")
        table[filt] = 1 - float(cosine_similarity_adjacent(inv.noise - inv.source).mean())
    names = mods.host.unet_layout(fam.model).describe()["filter blocks"]
    assert f"filter temporal on {names}" in report
    print(f"\n{fam.name}: 1 - adjacent cosine of the added noise, off {table['off']:.6f} on {table['temporal']:.6f}")
    assert table["temporal"] < table["off"]


@pytest.mark.slow
def test_segmind_vega_checkpoint_at_its_real_width(comfy_host, mods, clips):
    """The generated 745 M-param Segmind-Vega checkpoint through the host's loader: detected as Segmind_Vega,
    the roles on its layout, inversion equal to the host's sampler and sampling all off equal to KSampler
    (2 frames, 8x8 latents, 2 steps: 10 UNet forwards)."""
    from comfy_extras import nodes_custom_sampler as ncs
    with torch.inference_mode():
        model, clip, vae = comfy_host.nodes.CheckpointLoaderSimple().load_checkpoint("ta_vega_sdxl.safetensors")[:3]
    layout = mods.host.unet_layout(model)
    assert mods.host.check_supported(model) == "Segmind_Vega"
    assert layout.describe() == {"attention blocks": "input 4, input 5, input 7, input 8, output 0, output 1, "
                                 "output 2, output 3, output 4, output 5", "filter blocks": "output 3, output 4",
                                 "feature block": "output 1", "decoder attention": "output 1, output 2, output 3, "
                                 "output 4, output 5"}
    assert layout.depths()[("output", 0)] == 2 and layout.adm_channels == 2816
    source = text_conditioning(clip, "a man talking on a phone in a car")
    negative = text_conditioning(clip, "", SDXL_SIZES)
    latent = encode(comfy_host, vae, frames_of(clips["carphone_pristine.mp4"], 2, 64))
    noise, inv, _ = invert(mods.inversion, model, source, latent, 2)
    with torch.inference_mode():
        sampler = mods.inversion.DDIMInversionSampler().get_sampler(0)[0]
        sigmas = ncs.BasicScheduler().get_sigmas(model, "ddim_uniform", 2, 1.0)[0]
        flipped = ncs.SamplerCustom().sample(model, False, 0, 1.0, source, source, sampler, sigmas.flip(0),
                                             latent)[0]["samples"]
        theirs = comfy_host.nodes.KSamplerAdvanced().sample(
            model, "disable", 0, 2, 3.0, "ddim", "ddim_uniform", source, negative, noise, 0, 10000, "disable")[0]
    torch.testing.assert_close(noise["samples"], flipped, rtol=1e-4, atol=1e-4)
    ours, _ = sample(mods.pair, model, source, negative, inv, cfg=3.0, steps=2)
    torch.testing.assert_close(ours, theirs["samples"], rtol=1e-4, atol=1e-4)
    del model
