"""The one module that touches ComfyUI internals (comfy, folder_paths, server).

Node files call these helpers instead of the host, so a host change is fixed here. Only API that
both the 2024 host and the newest host have is used (see shared design notes, "API surface").
"""
import copy
import functools
import hashlib
import inspect
import os
import re
import sys
import textwrap
import types

import psutil
import torch

import comfy.cli_args
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

from ..adapter_core.layout import Block, UNetLayout
from ..adapter_core.lora import TimestepWindow, lora_linear

# Model families (the host's supported_models class names) whose UNet the method targets: the SD1.x/SD2.x
# layout (context 768 / 1024) and the SDXL family (context 2048, ADM input `y`: pooled text + size/crop).
SD_FAMILIES = ("SD15", "SD20", "SD21UnclipL", "SD21UnclipH", "SD15_instructpix2pix")
SDXL_FAMILIES = ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B")
SUPPORTED_FAMILIES = SD_FAMILIES + SDXL_FAMILIES


def check_interrupt():
    """Raise the host's interrupt exception if the user pressed Cancel."""
    comfy.model_management.throw_exception_if_processing_interrupted()


class Progress:
    """Progress bar on the running node; `step()` also honours interrupt.

    Usable as the core's `progress(i, total)` callback: `Progress(total).callback`.
    """

    def __init__(self, total):
        self.total = max(int(total), 1)
        self.bar = comfy.utils.ProgressBar(self.total)

    def update(self, value, preview=None):
        check_interrupt()
        self.bar.update_absolute(min(int(value), self.total), self.total, preview)

    def callback(self, done, total=None):
        if total is not None and total != self.total:
            self.total = max(int(total), 1)
        self.update(done)


def input_directory():
    return folder_paths.get_input_directory()


def output_directory():
    return folder_paths.get_output_directory()


def temp_directory():
    return folder_paths.get_temp_directory()


def allowed_roots():
    """Folders a user-typed path may point into: input (first), output and temp folders, plus
    those listed in $TEMPORAL_ADAPTER_ALLOWED_ROOTS (separated by os.pathsep)."""
    extra = [d for d in os.environ.get("TEMPORAL_ADAPTER_ALLOWED_ROOTS", "").split(os.pathsep) if d]
    return [os.path.realpath(d) for d in (input_directory(), output_directory(), temp_directory(), *extra)]


def available_memory():
    """Bytes of RAM free now (IMAGE batches live in CPU memory)."""
    return psutil.virtual_memory().available


def metadata_enabled():
    """False when the host runs with --disable-metadata."""
    return not comfy.cli_args.args.disable_metadata


# Bytes a saver may add to the last part of a prefix: "_00001_", an extension, a temporary-file suffix.
NAME_RESERVE = 32
WINDOWS_REFUSED = '<>:"|?*'


def check_file_name(text, input_name="filename_prefix", directory=None, reserve=NAME_RESERVE,
                    example="TemporalAdapter/video"):
    """Raise ValueError naming `input_name` and the fix unless every part of the relative path `text`
    is a name the file system of `directory` (default: the output folder) can store, with `reserve`
    bytes to spare in the last part: not empty, no NUL or other control character (nor <>:"|?* on
    Windows), encodable in the file system's encoding, and no part longer than its name limit.
    Checked before anything is created, so a refused name leaves no file or folder behind."""
    if not text.strip():
        raise ValueError(f"{input_name}: is empty; give a name such as {example!r}.")
    for i, char in enumerate(text):
        if ord(char) < 32 or ord(char) == 127 or (os.name == "nt" and char in WINDOWS_REFUSED):
            raise ValueError(f"{input_name}: the character U+{ord(char):04X} at position {i} cannot be part of a "
                             f"file name; remove it.")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as e:
        raise ValueError(f"{input_name}: the character U+{ord(text[e.start]):04X} at position {e.start} cannot be "
                         "stored by this file system; remove it.") from None
    directory = directory or output_directory()
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)  # the limit of the folder it will be made in
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        limit = 255
    parts = [p for p in os.path.normpath(text).replace("\\", "/").split("/") if p]
    for i, part in enumerate(parts):
        spare = reserve if i == len(parts) - 1 else 0
        if len(os.fsencode(part)) + spare > limit:
            raise ValueError(f"{input_name}: the name {part[:24]!r}... is {len(os.fsencode(part))} bytes long; this "
                             f"folder allows {limit - spare} here; shorten it.")


def save_location(filename_prefix, width=0, height=0, directory=None):
    """ComfyUI's prefix convention: returns (folder, filename, counter, subfolder). The prefix is
    checked first (`check_file_name`, and that it stays inside `directory`, default the output
    folder): ValueError naming filename_prefix, before any folder is made."""
    directory = directory or output_directory()
    check_file_name(filename_prefix, directory=directory)
    target = os.path.abspath(os.path.join(directory, os.path.dirname(os.path.normpath(filename_prefix))))
    if os.path.commonpath((os.path.abspath(directory), target)) != os.path.abspath(directory):
        raise ValueError(f"filename_prefix: {filename_prefix!r} leads outside the output folder; give a path inside "
                         "it, such as 'TemporalAdapter/video'.")
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, directory, width, height)
    return folder, filename, counter, subfolder


def save_json(report, filename_prefix):
    """Write a JSON report under the output folder with ComfyUI's prefix convention, atomically.
    Returns the path relative to the output folder."""
    from ..adapter_core.metrics import write_json
    folder, filename, counter, subfolder = save_location(filename_prefix)
    name = f"{filename}_{counter:05}_.json"
    write_json(report, os.path.join(folder, name))
    return os.path.join(subfolder, name)


def send_event(event, data):
    """Push a message to the front end; a no-op when no server runs (in-process tests)."""
    try:
        import server
    except ImportError:
        return
    instance = getattr(server.PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data)


def image_embedder(clip_vision):
    """A CLIP_VISION model as the core's `embed(images [N, H, W, 3]) -> [N, D]` callable: its
    projected image embeddings (the space CLIP scores use). Never differentiated: without no_grad a
    caller outside inference mode (the trainer) would record autograd through the loader's
    inference-mode weights, which autograd refuses."""
    def embed(images):
        with torch.no_grad():
            return clip_vision.encode_image(images).image_embeds
    return embed


# ---- models -------------------------------------------------------------------------------------

def model_family(model):
    """ComfyUI's name for the model's architecture, e.g. "SD15", "SD20", "SDXL"."""
    return type(model.model.model_config).__name__


def check_supported(model, input_name="model"):
    family = model_family(model)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"{input_name}: {family} models are not supported; Temporal Adapter works on SD1.x/SD2.x "
                         f"and SDXL-family UNets ({', '.join(SUPPORTED_FAMILIES)}). Load one of those checkpoints.")
    return family


def model_sampling(model):
    """The ModelPatcher's noise schedule / prediction object: its `model_sampling` object patch (set by
    e.g. ModelSamplingDiscrete, put in place by the host while sampling), else the model's own."""
    return model.object_patches.get("model_sampling") or model.model.model_sampling


def model_sigmas(model):
    """The model's 1000 ascending training sigmas (its own noise schedule)."""
    return model_sampling(model).sigmas.detach().float().cpu()


def unet_layout(model):
    """The model's UNet layout (`adapter_core.layout.UNetLayout`), read from its modules: every block
    with the scale of the grid its layers work on (doubled after a block that downsamples, halved after
    one that upsamples) and its transformer layers, plus the family, context width and ADM width."""
    unet = model.model.diffusion_model

    def has(block, name):
        return any(type(m).__name__ == name for m in block.modules())

    def depth(block):
        return sum(len(m.transformer_blocks) for m in block.modules() if type(m).__name__ == "SpatialTransformer")

    blocks, scale = [], 1
    for i, block in enumerate(unet.input_blocks):
        blocks.append(Block("input", i, scale, depth(block)))
        scale *= 2 if has(block, "Downsample") else 1
    if unet.middle_block is not None:
        blocks.append(Block("middle", 0, scale, depth(unet.middle_block)))
    for i, block in enumerate(unet.output_blocks):
        blocks.append(Block("output", i, scale, depth(block)))
        scale //= 2 if has(block, "Upsample") else 1
    config = model.model.model_config.unet_config
    return UNetLayout(tuple(blocks), model_family(model), int(config["context_dim"]), config.get("adm_in_channels"))


def _digest(h, value):
    """Feed a weight patch into hash `h`, the same in every process: tensors by shape and their first 4096
    values, containers item by item (sets and dicts in sorted order), functions by qualified name,
    other objects (e.g. a newer host's weight adapters) by type and attributes, plain values by repr."""
    if isinstance(value, torch.Tensor):
        h.update(repr(tuple(value.shape)).encode())
        h.update(value.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    elif isinstance(value, (tuple, list)):
        for item in value:
            _digest(h, item)
    elif isinstance(value, (set, frozenset)):
        _digest(h, sorted(map(repr, value)))
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _digest(h, value[key])
    elif callable(value) and hasattr(value, "__qualname__"):
        h.update(value.__qualname__.encode())
    elif hasattr(value, "__dict__"):
        h.update(type(value).__qualname__.encode())
        _digest(h, vars(value))
    else:
        h.update(repr(value).encode())


FINGERPRINT_SAMPLES = 4096  # values hashed per UNet tensor, spread evenly over it (all of a smaller one)


def _checkpoint_weights(model):
    """(name, tensor) of every UNet parameter and buffer as the checkpoint gave them. While a clone of
    the model is loaded, the host holds that clone's patches applied in place in the shared model:
    weight patches (the originals kept in `backup`: a tensor on the 2024 host, a (weight,
    inplace_update) tuple on newer ones) and object patches that swap whole modules (e.g. an
    adapter's LoRA layers; the originals in `object_patches_backup`). Clones share both dicts (the
    2024 host starts a new module dict at each unpatch), so the originals are read from the dicts of
    the model and of every loaded patcher of the same model."""
    weights, modules = {}, {}
    loaded = [getattr(m, "model", None) for m in comfy.model_management.current_loaded_models]
    for patcher in [model, *loaded]:
        if patcher is not None and getattr(patcher, "model", None) is model.model:
            weights.update(getattr(patcher, "backup", None) or {})
            modules.update(getattr(patcher, "object_patches_backup", None) or {})

    def walk(module, path):
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
                saved = weights.get(f"diffusion_model.{path}{name}")
                yield f"{path}{name}", tensor if saved is None else getattr(saved, "weight", saved)
        for name, child in module._modules.items():
            if child is not None:
                yield from walk(modules.get(f"diffusion_model.{path}{name}", child), f"{path}{name}.")
    return walk(model.model.diffusion_model, "")


def model_fingerprint(model):
    """Content fingerprint of a ModelPatcher, the same in every process: architecture; every UNet
    tensor's name, shape and FINGERPRINT_SAMPLES values at an even stride over it (the checkpoint's
    own values, not those of patches applied in place); its weight patches (keys, strengths and a
    sample of their values); and its noise schedule and prediction type (the `model_sampling` object
    patch that e.g. ModelSamplingDiscrete sets, else the model's own).

    A change to any tensor of at most FINGERPRINT_SAMPLES values, and any change that touches a
    larger tensor throughout (a merge, a baked-in LoRA, fine-tuning), changes it; one edited value
    of a large tensor between the sampled ones does not. Cost: `benchmarks/inversion.py --part
    fingerprint` (a small fraction of a percent of an inversion)."""
    h = hashlib.sha256(model_family(model).encode())
    samples = []
    for name, tensor in _checkpoint_weights(model):
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        stride = max(1, -(-flat.numel() // FINGERPRINT_SAMPLES))  # ceil: at most FINGERPRINT_SAMPLES values
        samples.append(flat[::stride].float())
    if samples:
        h.update(torch.cat([s.to(samples[0].device) for s in samples]).cpu().numpy().tobytes())
    for key in sorted(model.patches):
        h.update(key.encode())
        _digest(h, model.patches[key])
    sampling = model_sampling(model)
    h.update(",".join(c.__name__ for c in type(sampling).__mro__).encode())
    _digest(h, sampling.sigmas)
    return h.hexdigest()[:20]


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


def model_conds(model, conditioning, x, prompt_type="positive"):
    """The UNet's keyword inputs for the first entry of `conditioning` and a batch like x [B, C, H, W]:
    {"c_crossattn": [B, L, W], "y": [B, D] for models with an ADM input (SDXL: pooled text + size/crop
    embedding), ...}, built as the host's own sampler builds them (the model's `extra_conds` through
    `comfy.samplers.encode_model_conds`, with the image size of x's latents) and repeated to B rows."""
    tensor, extra = conditioning[0]
    conds = comfy.samplers.encode_model_conds(model.model.extra_conds, [{**extra, "cross_attn": tensor,
                                              "model_conds": {}}], x, x.device, prompt_type)
    return {k: cond.process_cond(batch_size=x.shape[0], device=x.device, area=None).cond.to(x.device)
            for k, cond in conds[0]["model_conds"].items()}


def adm_conditioning(model, conditioning, x):
    """{"y": [B, D]}: the ADM input the host builds for the first entry of `conditioning` and latents like x
    [B, C, H, W] (SDXL family: pooled text + size/crop embedding, `model_conds`); {} for models without one."""
    return {k: v.clone() for k, v in model_conds(model, conditioning, x).items() if k == "y"}


def source_denoiser(model, conditioning, rows, frames):
    """denoise(x, sigma_batch) -> x0 for use inside a sampling run of `model` (already loaded): one
    cfg-1 UNet call with the first entry of `conditioning` for the clip frames `rows` (with its ADM
    input on SDXL-family models, as the host builds it), through the model's own patches and UNet
    function wrapper, as one unconditional batch chunk."""
    selected = select_conditioning(conditioning[:1], rows, frames)

    def denoise(x, sigma):
        c = {**model_conds(model, selected, x, "negative"),
             "transformer_options": {**model.model_options.get("transformer_options", {}),
                                     "cond_or_uncond": [1], "sigmas": sigma}}
        wrapper = model.model_options.get("model_function_wrapper")
        if wrapper is not None:
            return wrapper(model.model.apply_model, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [1]})
        return model.model.apply_model(x, sigma, **c)
    return denoise


def preview_callback(model, total):
    """The host's progress bar with latent previews: update(step, x0) with x0 the model-space latent
    predicted at that step (its first frame is shown); honours interrupt."""
    import latent_preview
    callback = latent_preview.prepare_callback(model, total)

    def update(step, x0):
        check_interrupt()
        callback(step - 1, x0, None, total)
    return update


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


def _clip_tokenizer(clip):
    """(key of its tokens in `clip.tokenize(...)`, the CLIP tokenizer) whose positions the context follows.
    SD1/SD2: the single tokenizer (clip_l / clip_h). SDXL: clip_l; its context is clip_l's and clip_g's
    outputs side by side at the same positions (the same BPE tokens; clip_l pads with the end token)."""
    tokenizer = clip.tokenizer
    if hasattr(tokenizer, "clip"):
        return tokenizer.clip_name, getattr(tokenizer, tokenizer.clip)
    return "l", tokenizer.clip_l


def prompt_tokens(clip, text):
    """The prompt as the host's CLIP tokenizer gives it: ([(token_id, piece, word_id)] over all
    77-token chunks, start token id, end token id). Embeddings (tensors) get id -1."""
    key, inner = _clip_tokenizer(clip)
    chunks = clip.tokenize(text, return_word_ids=True)[key]
    tokens = []
    for chunk in chunks:
        for token, _weight, word_id in chunk:
            if torch.is_tensor(token):
                tokens.append((-1, "<embedding>", word_id))
            else:
                tokens.append((int(token), inner.inv_vocab.get(int(token), "?"), word_id))
    return tokens, inner.start_token, inner.end_token


def token_encoder(clip):
    """encode(text) -> the token ids of `text` as they appear inside a prompt (no start/end)."""
    key = _clip_tokenizer(clip)[0]

    def encode(text):
        chunks = clip.tokenize(text, return_word_ids=True)[key]
        return [int(t) for chunk in chunks for t, _w, word_id in chunk if word_id and not torch.is_tensor(t)]
    return encode


def slice_conditioning(conditioning, lo, hi, frames):
    """Conditioning for frames lo:hi: per-frame (batch == frames) tensors are sliced, others kept."""
    return select_conditioning(conditioning, range(lo, hi), frames)


def select_conditioning(conditioning, rows, frames):
    """Conditioning for the clip frames `rows` (any order, repeats allowed): per-frame (batch ==
    frames) tensors are indexed, others kept."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out = []
    for tensor, extra in conditioning:
        if tensor.shape[0] == frames and frames > 1:
            tensor = tensor[index]
            extra = {k: (v[index] if torch.is_tensor(v) and v.shape[0] == frames else v) for k, v in extra.items()}
        out.append([tensor, extra])
    return out


# ---- sampling through the host ------------------------------------------------------------------

def make_sampler(sampler_fn, options=None):
    """A host SAMPLER object (for SamplerCustom) around a k-diffusion style function."""
    return comfy.samplers.KSAMPLER(sampler_fn, extra_options=options or {})


def run_sampler(model, sampler_fn, sigmas, positive, negative, latent, cfg=1.0, options=None, progress=None,
                seed=None):
    """Run a k-diffusion style `sampler_fn(model, x, sigmas, extra_args, callback, disable, **options)`
    through the host's own sampling path (model loading, patches, conditioning, CFG).

    negative: None runs without an unconditional branch (cfg must be 1).
    latent: [B, C, H, W] in LATENT (unscaled) space, used as the starting point (no noise added:
    sigmas[0] must be below the model's σ_max, or 0 for an inversion). Returns the result in LATENT space.
    progress: optional callable(step, total_steps, denoised) called after every step.
    seed: passed to the host (for patches and conditioning that draw random numbers).
    """
    sampler = make_sampler(_frames_checked(sampler_fn), options)
    noise = torch.zeros_like(latent)
    if negative is None:  # cfg 1: the host skips the uncond pass; the same cond keeps every host happy
        negative = positive

    def callback(step, x0, x, total_steps):
        check_interrupt()
        if progress is not None:
            progress(step + 1, total_steps, x0)

    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      callback=callback, disable_pbar=True, seed=seed)


# Transformer option set during the runs of `run_sampler`: the node running it has matched every
# per-frame conditioning to the frames it samples (which may be a chunk of the clip).
FRAMES_CHECKED = "temporal_adapter_frames_checked"


def _frames_checked(sampler_fn):
    """`sampler_fn` whose runs carry the FRAMES_CHECKED transformer option (a copy of the model options)."""
    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra_args = dict(extra_args or {})
        model_options = dict(extra_args.get("model_options") or {})
        model_options["transformer_options"] = {**(model_options.get("transformer_options") or {}),
                                                FRAMES_CHECKED: True}
        extra_args["model_options"] = model_options
        return sampler_fn(model, x, sigmas, extra_args, callback, disable, **kwargs)
    return run


def model_space(model, latent):
    """LATENT (unscaled) -> the model's internal latent space, and back with `latent_space`."""
    return model.model.process_latent_in(latent)


def latent_space(model, latent):
    return model.model.process_latent_out(latent)


def inversion_cache_dir():
    return os.path.join(temp_directory(), "temporal_adapter", "inversions")


# ---- adapter (issue 6): adapter folder, LoRA on a clone, token conditioning, training denoiser ----
# The 2024-host compatibility shim for training lives here too (`inplace_add_shim`).

ADAPTER_FOLDER = "temporal_adapters"


def _register_adapter_folder():
    """models/temporal_adapters, registered with folder_paths (keeps paths added by extra_model_paths)."""
    folder_paths.add_model_folder_path(ADAPTER_FOLDER, os.path.join(folder_paths.models_dir, ADAPTER_FOLDER))
    extensions = folder_paths.folder_names_and_paths[ADAPTER_FOLDER][1]
    if isinstance(extensions, set):
        extensions.add(".safetensors")


_register_adapter_folder()


def adapter_files():
    return folder_paths.get_filename_list(ADAPTER_FOLDER)


def adapter_path(name):
    """Full path of an adapter file listed by `adapter_files` (None if it is not there)."""
    return folder_paths.get_full_path(ADAPTER_FOLDER, name)


def adapter_save_path(name):
    """Where to write adapter `name` (a plain file name ending .safetensors) in the first folder."""
    if os.path.basename(name) != name or not name.endswith(".safetensors") or name.startswith("."):
        raise ValueError(f"adapter file name must be a plain name ending in .safetensors, got {name!r}")
    folder = folder_paths.get_folder_paths(ADAPTER_FOLDER)[0]
    check_file_name(name, "filename_prefix", folder)
    return os.path.join(folder, name)


def text_width(model):
    """Width of the text conditioning the UNet's cross-attention expects (768 SD1.x, 1024 SD2.x, 2048 SDXL)."""
    return int(model.model.model_config.unet_config["context_dim"])


def _block_of(path):
    """("input"|"middle"|"output", i) of a UNet module path."""
    parts = path.split(".")
    if parts[0] == "middle_block":
        return ("middle", 0)
    return (parts[0].split("_")[0], int(parts[1]))


def attention_linears(model, blocks=None):
    """{path in the UNet: (in_features, out_features)} of the q/k/v/out projections of every
    attention (attn1 and attn2) in `blocks` (all transformer blocks when None)."""
    found = {}
    for path, module in model.model.diffusion_model.named_modules():
        if type(module).__name__ != "BasicTransformerBlock":
            continue
        if blocks is not None and _block_of(path) not in blocks:
            continue
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                linear = comfy.utils.get_attr(module, f"{attn}.{proj}")
                found[f"{path}.{attn}.{proj}"] = (linear.in_features, linear.out_features)
    return found


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


def adapter_conditioning(conditioning, adapter, frames):
    """CONDITIONING with the adapter's tokens prepended per frame: every entry becomes
    [frames, S + U + L, width] (a one-prompt entry is repeated per frame; extras are kept)."""
    tokens = adapter.context_tokens(frames)
    out = []
    for tensor, extra in conditioning:
        adapter.check_fits(tensor.shape[-1], frames)
        if tensor.shape[0] not in (1, frames):
            raise ValueError(f"conditioning: batch of {tensor.shape[0]} prompts does not match the adapter's "
                             f"{frames} frames; use one prompt, or one per frame.")
        tensor = tensor.expand(frames, -1, -1)
        out.append([torch.cat([tokens.to(tensor), tensor], dim=1), dict(extra)])
    return out


@functools.lru_cache(maxsize=None)
def _out_of_place_forward(cls):
    """BasicTransformerBlock._forward of the 2024 host rewritten with `x = x + ...` for its in-place
    `x += ...` adds (which break backward through more than one block). None when the class has no
    `_forward` or adds nothing in place (newer hosts): no shim is needed there."""
    method = getattr(cls, "_forward", None)
    if method is None:
        return None
    source = textwrap.dedent(inspect.getsource(method))
    source, count = re.subn(r"^(\s*)x \+= (.+)$", r"\1x = x + \2", source, flags=re.M)
    if count == 0:
        return None
    namespace = {}
    exec(compile(source, inspect.getsourcefile(method), "exec"), vars(sys.modules[cls.__module__]), namespace)
    return namespace["_forward"]


def inplace_add_shim(unet):
    """The 2024-host compatibility shim, scoped to one module tree: gives each BasicTransformerBlock
    in `unet` (a private copy: the shared model's classes and modules are never touched, so nothing
    needs restoring on exit, error or interrupt) an out-of-place `_forward`. Returns how many blocks
    it patched: 0 on hosts whose blocks do not add in place."""
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    forward = _out_of_place_forward(type(blocks[0])) if blocks else None
    if forward is None:
        return 0
    for block in blocks:
        block._forward = types.MethodType(forward, block)
    return len(blocks)


class TrainingDenoiser:
    """Context manager giving the trainer a differentiable `denoise(x, sigma, context, y=None) -> (denoised,
    features)` in the model's latent space (y: the ADM input of SDXL-family models, see `model_conds`),
    with the adapter's LoRAs, and `features` the attn1 outputs of `feature_blocks` captured during the call.

    Autograd cannot save the host's inference-mode weights, and the MODEL is shared with other
    nodes: the UNet is copied (frozen, detached clones of the loaded, patched weights) inside
    `torch.inference_mode(False)`; the LoRAs and the compatibility shim go into that copy only.
    `shimmed` says how many transformer blocks the shim rewrote.
    Every attention of the copy runs torch's scaled_dot_product_attention (attn1/attn2 replace
    patches: the same maths; the host's CPU default, sub-quadratic attention, made a training step
    at 64x64 latents about 1.6x slower, its backward most of all).
    """

    def __init__(self, model, adapter, feature_blocks):
        self.model, self.adapter, self.blocks = model, adapter, {tuple(b) for b in feature_blocks}
        sdpa = host_attention("attention_pytorch")
        attend = {block: sdpa for block in unet_layout(model).attention_blocks()}
        self.replace = {"attn1": attend, "attn2": dict(attend)}
        self.unet = None
        self.shimmed = 0
        self._mode = torch.inference_mode(False)

    def __enter__(self):
        comfy.model_management.load_models_gpu([self.model])
        self._mode.__enter__()
        try:
            self.unet = copy.deepcopy(self.model.model.diffusion_model).requires_grad_(False)
            self.shimmed = inplace_add_shim(self.unet)
            for path, lora in self.adapter.loras.items():
                parent, name = path.rsplit(".", 1)
                setattr(comfy.utils.get_attr(self.unet, parent), name,
                        lora_linear(comfy.utils.get_attr(self.unet, path), lora, self.adapter.window))
            self.adapter.module.to(self.model.load_device)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.unet = None
        self.adapter.module.to("cpu")
        return self._mode.__exit__(*exc)

    def __call__(self, x, sigma, context, y=None):
        """x [B, C, H, W] model-space latents, sigma [B], context [B, L, W], y [B, D]: the ADM input of
        SDXL-family models (None without); returns (denoised [B, C, H, W], attn1 features)."""
        base = self.model.model
        captured = []

        def capture(n, extra_options):
            if tuple(extra_options.get("block") or ()) in self.blocks:
                captured.append(n)
            return n

        dtype = base.manual_cast_dtype or base.get_dtype()
        device = self.model.load_device
        x, sigma, context = x.to(device), sigma.to(device), context.to(device)
        ms = model_sampling(self.model)
        y = None if y is None else y.to(device, dtype)
        out = self.unet(ms.calculate_input(sigma, x).to(dtype), ms.timestep(sigma).float(), context=context.to(dtype),
                        y=y, transformer_options={"patches": {"attn1_output_patch": [capture]},
                                                  "patches_replace": self.replace}).float()
        return ms.calculate_denoised(sigma, out, x), captured
