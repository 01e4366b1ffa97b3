"""Patches: clones of a model with our code inside its UNet, the input model untouched.

Attention and block patches, attn1/attn2 replaces wrapped around any replace already there (the
host's own attention function otherwise, called with the keywords each host version's
CrossAttention passes), a SAMPLER that adds patches per run, the adapter's LoRAs as object patches
with a timestep-aware UNet wrapper, and whether anything else already reaches inside the UNet.
"""
import comfy.utils

from ...adapter_core.lora import TimestepWindow, lora_linear
from .models import attention_linears, model_family, model_sampling, text_width, unet_layout
from .sampling import FRAMES_CHECKED, make_sampler


def with_attn1_output_patch(model, patch):
    """A clone of `model` with `patch` added to its attn1 output patches (the input is untouched)."""
    clone = model.clone()
    clone.set_model_attn1_output_patch(patch)
    return clone


def with_patches(model, attn1=(), attn1_output=(), output_block=(), input_block_after_skip=()):
    """A clone of `model` with these patches added after any already there (the input is untouched)."""
    clone = model.clone()
    for patch in attn1:
        clone.set_model_attn1_patch(patch)
    for patch in attn1_output:
        clone.set_model_attn1_output_patch(patch)
    for patch in output_block:
        clone.set_model_output_block_patch(patch)
    for patch in input_block_after_skip:
        clone.set_model_patch(patch, "input_block_patch_after_skip")
    return clone


def reaches_inside_unet(model, *conditionings):
    """Whether anything besides our own patches may act inside the UNet's blocks: patches, replaces or
    wrappers already on `model`, or control (ControlNet, T2I) or GLIGEN in the conditionings. Used to
    keep every block at full size for them (they may expect it)."""
    transformer_options = model.model_options.get("transformer_options", {})
    if any(transformer_options.get(k) for k in ("patches", "patches_replace", "wrappers")):
        return True
    if model.model_options.get("model_function_wrapper") is not None:
        return True
    return any("control" in extra or "gligen" in extra for cond in conditionings for _, extra in cond)


def patched_sampler(sampler_fn, patches, options=None, attn1_extension=None):
    """A SAMPLER whose runs add `patches` ({"attn1_patch": [...], "attn1_output_patch": [...], ...})
    to the model options the host passes in extra_args (a copy: the MODEL is untouched), and with
    attn1_extension = (extend, blocks) extend the self-attention keys/values as `with_attn1_extension`."""
    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra_args = dict(extra_args or {})
        model_options = dict(extra_args.get("model_options") or {})
        transformer_options = dict(model_options.get("transformer_options") or {})
        merged = dict(transformer_options.get("patches") or {})
        for name, fns in patches.items():
            merged[name] = list(merged.get(name, [])) + list(fns)
        transformer_options["patches"] = merged
        if attn1_extension is not None:
            extend, blocks = attn1_extension
            transformer_options = _wrap_replaces(transformer_options, "attn1", blocks, _extending(extend),
                                                 long_key_attention())
        model_options["transformer_options"] = transformer_options
        extra_args["model_options"] = model_options
        return sampler_fn(model, x, sigmas, extra_args, callback, disable, **kwargs)
    return make_sampler(run, options)


def host_attention(name="optimized_attention"):
    """The host's attention function `name` (its own choice by default; "attention_pytorch" is torch's
    scaled_dot_product_attention) as attend(q, k, v, extra_options) for an attention replace, with the
    keywords its CrossAttention passes (attn_precision / transformer_options on newer hosts, none in 2024)."""
    import inspect

    import comfy.ldm.modules.attention as attention
    fn = getattr(attention, name)
    params = inspect.signature(fn).parameters
    open_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    precision = open_kw or "attn_precision" in params
    options = open_kw or "transformer_options" in params

    def attend(q, k, v, extra_options):
        kwargs = {"transformer_options": extra_options} if options else {}
        if precision and "attn_precision" in extra_options:
            kwargs["attn_precision"] = extra_options["attn_precision"]
        return fn(q, k, v, extra_options["n_heads"], **kwargs)
    return attend


def long_key_attention():
    """attend(q, k, v, extra_options) for attention whose keys are several times longer than usual
    (keyframe attention: (1 + K)·N keys per query). The host's own function, except for CPU tensors:
    there the host's default (sub-quadratic attention, or split) builds score matrices, while torch's
    fused SDPA kernel (the host's own `attention_pytorch`) works in blocks and holds none; measured by
    `benchmarks/sampler.py --part attention`."""
    host, sdpa = host_attention(), host_attention("attention_pytorch")

    def attend(q, k, v, extra_options):
        return (sdpa if q.device.type == "cpu" else host)(q, k, v, extra_options)
    return attend


def _wrap_replaces(transformer_options, kind, blocks, wrap, attend=None):
    """A copy of `transformer_options` whose `kind` ("attn1"/"attn2") replace for each block in `blocks`
    ([("output", 4), ...]) is wrap(replace): `replace` being the replace already there for that block
    (per transformer index too), else `attend` (default: the host's own attention)."""
    replaces = dict(transformer_options.get("patches_replace") or {})
    existing = dict(replaces.get(kind) or {})
    attend = attend or host_attention()
    for name, number in blocks:
        for key in [key for key in existing if tuple(key[:2]) == (name, number) and len(key) == 3]:
            existing[key] = wrap(existing[key])
        existing[(name, number)] = wrap(existing.get((name, number)) or attend)
    replaces[kind] = existing
    return {**transformer_options, "patches_replace": replaces}


def _with_replaces(model, kind, blocks, wrap, attend=None):
    clone = model.clone()
    options = clone.model_options
    options["transformer_options"] = _wrap_replaces(options.get("transformer_options", {}), kind, blocks, wrap, attend)
    return clone


def _extending(extend):
    """wrap(attend) for attn1 replaces: keys/values extended by extend(k, v, extra_options) first."""
    def wrap(attend):
        def replace(q, k, v, extra_options):
            k, v = extend(k, v, extra_options)
            return attend(q, k, v, extra_options)
        return replace
    return wrap


def with_attn1_extension(model, extend, blocks=None):
    """A clone of `model` whose self-attention (attn1) in `blocks` (None: every attention block) attends
    to keys/values extended by extend(k, v, extra_options) (projected [B, N, C] each), computed by any
    attn1 replace already on the model, else by `long_key_attention` (the input model is untouched)."""
    blocks = unet_layout(model).attention_blocks() if blocks is None else blocks
    return _with_replaces(model, "attn1", blocks, _extending(extend), long_key_attention())


def with_attn2_capture(model, blocks, record):
    """A clone of `model` whose cross-attention (attn2) in `blocks` ([("output", 4), ...]) also calls
    `record(q, k, extra_options)` with the projected query and key. The output is computed exactly
    as without the patch: by an attn2 replace already on the model for that block, else by the
    host's own attention function (the input model is untouched)."""
    def capture(attend):
        def replace(q, k, v, extra_options):
            record(q, k, extra_options)
            return attend(q, k, v, extra_options)
        return replace
    return _with_replaces(model, "attn2", blocks, capture)


def adapter_model(model, adapter):
    """A CLONE of `model` with the adapter's LoRAs installed as object patches (the host puts them in
    at load and restores the originals after) and a UNet function wrapper that tells the LoRAs the
    current timestep, so they act only inside the adapter's window. An existing wrapper is kept
    (called inside ours); existing patches are kept. The incoming MODEL is untouched.

    Outside our own nodes' runs (which check the frames themselves, see FRAMES_CHECKED), the wrapper
    refuses (ValueError) a model call whose batch holds another number of frames than the adapter's:
    the host would otherwise cut or repeat the per-frame conditioning to fit, without a word."""
    adapter.check_fits(text_width(model), adapter.frames, attention_linears(model), model_family(model))
    clone = model.clone()
    window = TimestepWindow(adapter.window.lo, adapter.window.hi)  # this clone's own switch
    unet = model.model.diffusion_model
    for path, lora in adapter.loras.items():
        key = f"diffusion_model.{path}"
        base = clone.object_patches.get(key) or comfy.utils.get_attr(unet, path)
        clone.add_object_patch(key, lora_linear(base, lora, window))
    previous = clone.model_options.get("model_function_wrapper")
    schedule = model_sampling(model)

    def unet_function(apply_model, args):
        if not (args["c"].get("transformer_options") or {}).get(FRAMES_CHECKED):
            frames = args["input"].shape[0] // max(len(args.get("cond_or_uncond") or ()), 1)
            if frames != adapter.frames:
                raise ValueError(f"adapter: it was trained on {adapter.frames} frames but the sampler runs {frames} "
                                 f"frames at once; sample a latent of {adapter.frames} frames (connect the latent "
                                 "to Apply Adapter to have this checked before sampling).")
        window.timestep = float(schedule.timestep(args["timestep"]).max())
        try:
            if previous is not None:
                return previous(apply_model, args)
            return apply_model(args["input"], args["timestep"], **args["c"])
        finally:
            window.timestep = None

    clone.set_model_unet_function_wrapper(unet_function)
    return clone


def with_context_tokens(model, tokens):
    """A clone of `model` whose cross-attention gives the cond chunks the adapter's tokens
    (`adapter_core.attention.ContextTokens`, installed as an attn2 patch and around every attn2 replace
    already on the model, else the host's attention); the input model is untouched."""
    clone = _with_replaces(model, "attn2", unet_layout(model).attention_blocks(), tokens.wrap)
    clone.set_model_attn2_patch(tokens.prepend)
    return clone
