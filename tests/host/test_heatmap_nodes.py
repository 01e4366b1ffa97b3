"""Attention heatmaps in the real host: known answer, read-only capture, token layouts, bad input."""
import os

import pytest
import torch
from PIL import Image

from temporal_adapter.adapter_core import ddim
from temporal_adapter.adapter_core.heatmaps import block_grid

pytestmark = pytest.mark.host
PROMPT = "a car on a road"


@pytest.fixture(scope="module")
def node(comfy_host):
    from temporal_adapter.nodes import heatmap_nodes
    return heatmap_nodes.AttentionHeatmaps()


@pytest.fixture(scope="module")
def host(comfy_host):
    from temporal_adapter.nodes import host
    return host


@pytest.fixture(scope="module")
def twolevel(comfy_host):
    with torch.inference_mode():
        model, clip = comfy_host.nodes.CheckpointLoaderSimple().load_checkpoint("ta_twolevel_sd15.safetensors")[:2]
        cond = comfy_host.nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
        negative = comfy_host.nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    return model, clip, cond, negative


def latent(frames=2, size=8, seed=0):
    return {"samples": torch.randn(frames, 4, size, size, generator=torch.Generator().manual_seed(seed))}


def run(node, model, clip, cond, lat, words="car, road", blocks="auto", timesteps="auto", mode="probe", steps=50,
        shared=0, unshared=0, text=PROMPT, **optional):
    with torch.inference_mode():
        return node.run(model, clip, cond, lat, text, words, blocks, timesteps, mode, steps, 1.0, 0, 0.5, "jet", "map",
                        shared, unshared, **optional)


def attn2_module(model, block, index):
    unet = model.model.diffusion_model
    group = {"input": unet.input_blocks, "output": unet.output_blocks, "middle": [unet.middle_block]}[block[0]]
    transformer = next(m for m in group[block[1]].modules() if type(m).__name__ == "SpatialTransformer")
    return transformer.transformer_blocks[index].attn2


def force_token_onto_top_left(model, token):
    """A model patch with a known answer: in every attn2, the keys of all tokens but `token` are zeroed and
    the queries of the top-left quadrant are set so that every head attends to `token` (score >= 15);
    the other queries are zero, so they attend uniformly."""
    patched = model.clone()

    def patch(n, context, value, extra_options):
        attn = attn2_module(model, extra_options["block"], extra_options["block_index"])
        heads = extra_options["n_heads"]
        h, w = block_grid(n.shape[1], *extra_options["original_shape"][-2:])
        region = torch.zeros(h, w, dtype=torch.bool)
        region[:h // 2, :w // 2] = True
        kept = torch.zeros_like(context)
        kept[:, token] = context[:, token]
        k = attn.to_k(kept[:, token])  # [B, heads * d]
        per_head = k.view(k.shape[0], heads, -1).square().sum(-1)  # ||k_h||^2
        beta = 15.0 * (k.shape[1] // heads) ** 0.5 / per_head.min(dim=1).values  # q = beta * k: score_h >= 15
        u = (beta[:, None] * k) @ torch.linalg.pinv(attn.to_q.weight.float()).T
        queries = torch.zeros_like(n)
        queries[:, region.flatten()] = u[:, None, :].to(n.dtype)
        return queries, kept, kept

    patched.set_model_attn2_patch(patch)
    return patched


def test_forced_attention_peaks_in_the_known_region(node, twolevel):
    model, clip, cond, _ = twolevel
    forced = force_token_onto_top_left(model, token=2)  # "car": start token, "a", "car"
    out = run(node, forced, clip, cond, latent(), words="car, road")
    overlays, grid, maps, report = out["result"]
    assert maps.shape == (4, 64, 64) and overlays.shape == (4, 64, 64, 3) and grid.shape == (1, 128, 128, 3)
    region = torch.zeros(64, 64, dtype=torch.bool)
    region[:32, :32] = True
    car, road = maps[:2], maps[2:]
    for frame in car:
        assert frame[region].mean() > 0.8 and frame[~region].mean() < 0.2
        assert region.flatten()[frame.argmax()]
    for frame in road:  # keys zeroed: uniform attention outside the region, none inside
        assert frame[~region].mean() > 3 * frame[region].mean()
    assert "car = #2" in report and "road = #5" in report


def test_capture_leaves_the_sampler_output_bit_identical(host, twolevel):
    model, clip, cond, negative = twolevel
    from temporal_adapter.adapter_core.heatmaps import CrossAttentionRecorder
    x = latent(frames=2, seed=1)["samples"] * 8
    sigmas = ddim.schedule(host.model_sigmas(model), 3)
    schedule = ddim.timesteps_for(host.model_sigmas(model), sigmas[:-1]).tolist()
    blocks = host.unet_layout(model).attention_blocks()
    halved = model.clone()  # a model that already has an attn2 replace: the capture must chain it
    attend = host.host_attention()
    halved.set_model_attn2_replace(lambda q, k, v, extra_options: 0.5 * attend(q, k, v, extra_options), "output", 1)
    plain = {}
    with torch.inference_mode():
        for base in (model, halved):
            recorder = CrossAttentionRecorder([2], (8, 8), schedule, host.model_sigmas(model))
            plain[base] = host.run_sampler(base, ddim.sample_ddim, sigmas, cond, negative, x, cfg=3.0)
            captured = host.run_sampler(host.with_attn2_capture(base, blocks, recorder), ddim.sample_ddim, sigmas,
                                        cond, negative, x, cfg=3.0)
            assert torch.equal(plain[base], captured)
            assert recorder.calls == len(blocks) * 3 and recorder.seen == set(schedule)
    assert not torch.equal(plain[model], plain[halved])  # the chained replace was active


@pytest.mark.parametrize("mode", ["sample", "invert"])
def test_sampling_and_inversion_runs_record_the_chosen_steps(node, twolevel, comfy_host, mode):
    model, clip, cond, negative = twolevel
    images = torch.rand(3, 64, 64, 3)
    out = run(node, model, clip, cond, latent(frames=3), words="car", mode=mode, steps=4, timesteps="751, 600",
              blocks="output 2, output 3", images=images, negative=negative)
    overlays, grid, maps, report = out["result"]
    assert overlays.shape == (3, 64, 64, 3) and maps.shape == (3, 64, 64) and maps.amax(dim=(1, 2)).min() > 0.9
    assert "timesteps 751, 501 (recorded 4 attention calls)" in report and "blocks: output 2, output 3" in report
    data = out["ui"]["ta_heatmaps"][0]
    assert data["words"] == ["car"] and data["frames"] == 3 and data["columns"] == 3 and data["cell"] == [64, 64]
    sheet = data["sheets"][0]
    path = os.path.join(comfy_host.folder_paths.get_temp_directory(), sheet["subfolder"], sheet["filename"])
    with Image.open(path) as im:
        assert im.size == (192, 64)


def test_adapter_token_groups_and_baseline_report(node, twolevel):
    model, clip, cond, _ = twolevel
    adapter_tokens = torch.randn(1, 3, 768, generator=torch.Generator().manual_seed(3))
    with_tokens = [[torch.cat([adapter_tokens, cond[0][0]], dim=1), cond[0][1]]]
    out = run(node, model, clip, with_tokens, latent(), words="<shared>, <unshared>, car, <start>", shared=2,
              unshared=1, baseline_conditioning=cond)
    report = out["result"][3]
    assert "<shared> = #0, #1; <unshared> = #2; car = #5; <start> = #3" in report
    assert "this run" in report and "baseline" in report
    rows = [line.split() for line in report.splitlines() if line.startswith("output ")]
    assert len(rows) == 4 and all(float(r[2]) > 0 and float(r[3]) > 0 and r[2] != r[3] for r in rows)
    with pytest.raises(ValueError, match=r"conditioning: 80 context tokens, but shared_tokens \(0\)"):
        run(node, model, clip, with_tokens, latent())


@pytest.mark.parametrize("change,message", [
    ({"words": "car, bus"}, r"words: 'bus' is not in the prompt. The prompt's words are: a, car, on, a, road"),
    ({"blocks": "output 7"}, r"blocks: the model has no attention block 'output 7'. Its attention blocks are: "
                             r"input 1, input 3, middle 0, output 0, output 1, output 2, output 3"),
    ({"timesteps": "990", "steps": 10}, r"timesteps: 990 is outside the schedule of 10 steps \(901, 801,"),
    ({"images": torch.rand(3, 64, 64, 3)}, r"images: 3 frames, but the latent has 2"),
])
def test_bad_input_fails_clearly(node, twolevel, change, message):
    model, clip, cond, _ = twolevel
    with pytest.raises(ValueError, match=message):
        run(node, model, clip, cond, latent(), **change)


def test_words_beyond_ascii_are_listed_and_selected_as_written(node, twolevel, comfy_host):
    """café, naïve, zürich, 自転車 and an emoji: listed as typed (not as CLIP's byte-level pieces) and
    selectable by the word as written."""
    model, clip = twolevel[:2]
    text = "a café, naïve zürich 自転車 🛴 bike"
    with torch.inference_mode():
        cond = comfy_host.nodes.CLIPTextEncode().encode(clip, text)[0]
    # the host's tokenizer decides where CJK words end: the 2024 host's marks each character as a word
    with pytest.raises(ValueError, match=r"'bus' is not in the prompt. The prompt's words are: a, café,, naïve, "
                                         r"zürich, (自転車|自, 転, 車), 🛴, bike\."):
        run(node, model, clip, cond, latent(), words="bus", text=text)
    report = run(node, model, clip, cond, latent(), words="café, 自転車, 🛴", text=text)["result"][3]
    positions = ", ".join(f"#{i}" for i in range(10, 19))
    assert f"tokens: café = #2; 自転車 = {positions}; 🛴 = #19, #20" in report, report


def test_a_model_that_gives_nan_attention_is_refused(node, twolevel, comfy_host):
    """A model whose cross-attention comes out NaN (a patch upstream with broken weights, like a LoRA at
    strength NaN) is refused naming the model, as the inverter refuses it; nothing is saved."""
    model, clip, cond, _ = twolevel
    broken = model.clone()
    broken.set_model_attn2_patch(lambda n, context, value, extra_options: (n, context * float("nan"), value))
    output = comfy_host.folder_paths.get_output_directory()
    before = sorted(os.listdir(output)) if os.path.isdir(output) else []
    with pytest.raises(ValueError, match=r"model: its cross-attention came out NaN or infinite \(nothing was saved\)"):
        run(node, broken, clip, cond, latent())
    with pytest.raises(ValueError, match=r"baseline_model: its cross-attention came out NaN or infinite"):
        run(node, model, clip, cond, latent(), baseline_model=broken)
    assert (sorted(os.listdir(output)) if os.path.isdir(output) else []) == before


@pytest.mark.parametrize("text", ["-3", "0"])
def test_timesteps_outside_the_schedule_are_refused_not_snapped(node, twolevel, text):
    """Steps 50 run from 981 down to 1: 0 and -3 used to become 1 without a word."""
    model, clip, cond, _ = twolevel
    with pytest.raises(ValueError, match=rf"timesteps: {text} is outside the schedule of 50 steps \(981, 961, .*, "
                                         r"21, 1\); choose from these"):
        run(node, model, clip, cond, latent(), timesteps=f"941, {text}")


def test_the_steps_widget_maximum_runs(node, twolevel):
    model, clip, cond, _ = twolevel
    assert node.INPUT_TYPES()["required"]["steps"][1]["max"] == ddim.MAX_STEPS
    report = run(node, model, clip, cond, latent(), steps=ddim.MAX_STEPS, timesteps="941, 1")["result"][3]
    assert f"{ddim.MAX_STEPS}-step schedule; timesteps 941, 1" in report


def test_the_sampler_checks_apply_conditioning_batch_and_inversion(node, host, twolevel):
    """The sampler's own checks (conditioning batch vs frames, an inversion made by another model or
    from other latents) run here too."""
    from temporal_adapter.nodes import inversion_nodes
    model, clip, cond, negative = twolevel
    lat = latent()
    with torch.inference_mode():
        inv = inversion_nodes.BilateralDDIMInversion().invert(model, cond, lat, 2, "off", 5, 1.0, 1.0, False, "",
                                                              0, 0)[1]
    three = [[cond[0][0].expand(3, -1, -1), cond[0][1]]]
    other = model.clone()
    other.add_patches({k: (torch.ones_like(v),) for k, v in list(model.model_state_dict().items())[-2:]}, 0.1)
    cases = [(dict(cond=three), "conditioning: batch of 3 prompts does not match the latent's 2 frames"),
             (dict(negative=three), "negative: batch of 3 prompts does not match the latent's 2 frames"),
             (dict(baseline_conditioning=three), "baseline_conditioning: batch of 3 prompts does not match"),
             (dict(model=other, inversion=inv), "inversion: it was computed with a different model"),
             (dict(lat=latent(frames=3), inversion=inv), r"inversion: frames/latent size \(2, 4, 8, 8\) differ "
                                                         r"from the latent here \(3, 4, 8, 8\)")]
    for change, message in cases:
        args = {"model": model, "cond": cond, "lat": lat, **change}
        with pytest.raises(ValueError, match=message):
            run(node, args.pop("model"), clip, args.pop("cond"), args.pop("lat"), **args)
    report = run(node, model, clip, cond, lat, inversion=inv, steps=2, timesteps="all")["result"][3]
    assert "2-step schedule" in report
