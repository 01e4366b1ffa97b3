"""The one module that touches ComfyUI internals (comfy, folder_paths, server).

Node files call these helpers instead of the host, so a host change is fixed here. Only API that
both the 2024 host and the newest host have is used (see shared design notes, "API surface").
"""
import hashlib
import os

import psutil
import torch

import comfy.cli_args
import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths

# Model families (ComfyUI's supported_models class names) whose UNet layout the method targets.
SUPPORTED_FAMILIES = ("SD15", "SD20", "SD21UnclipL", "SD21UnclipH", "SD15_instructpix2pix")


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


def save_location(filename_prefix, width=0, height=0, directory=None):
    """ComfyUI's prefix convention: returns (folder, filename, counter, subfolder)."""
    directory = directory or output_directory()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, directory, width, height)
    return folder, filename, counter, subfolder


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
    projected image embeddings (the space CLIP scores use)."""
    return lambda images: clip_vision.encode_image(images).image_embeds


# ---- models -------------------------------------------------------------------------------------

def model_family(model):
    """ComfyUI's name for the model's architecture, e.g. "SD15", "SD20", "SDXL"."""
    return type(model.model.model_config).__name__


def check_supported(model, input_name="model"):
    family = model_family(model)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"{input_name}: {family} models are not supported; Temporal Adapter works on "
                         f"SD1.x/SD2.x UNets ({', '.join(SUPPORTED_FAMILIES)}). Load an SD1.5/SD2 checkpoint.")
    return family


def model_sigmas(model):
    """The model's 1000 ascending training sigmas (its own noise schedule)."""
    return model.model.model_sampling.sigmas.detach().float().cpu()


def transformer_blocks(model):
    """Blocks of the UNet that hold transformer (attention) layers, as ("input"|"middle"|"output", i)."""
    unet = model.model.diffusion_model
    found = []
    groups = [("input", unet.input_blocks), ("middle", [unet.middle_block] if unet.middle_block is not None else []),
              ("output", unet.output_blocks)]
    for name, blocks in groups:
        for i, block in enumerate(blocks):
            if any(type(m).__name__ == "SpatialTransformer" for m in block.modules()):
                found.append((name, i))
    return found


def model_fingerprint(model):
    """Content fingerprint of a ModelPatcher: architecture, a sample of weights, and its patches."""
    h = hashlib.sha256(model_family(model).encode())
    params = list(model.model.diffusion_model.parameters())
    for p in params[:4] + params[-4:]:
        h.update(p.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    for key in sorted(model.patches):
        h.update(key.encode())
        h.update(repr([(p[0], tuple(getattr(p[1], "shape", ()))) for p in model.patches[key]]).encode())
    return h.hexdigest()[:20]


def with_attn1_output_patch(model, patch):
    """A clone of `model` with `patch` added to its attn1 output patches (the input is untouched)."""
    clone = model.clone()
    clone.set_model_attn1_output_patch(patch)
    return clone


def slice_conditioning(conditioning, lo, hi, frames):
    """Conditioning for frames lo:hi: per-frame (batch == frames) tensors are sliced, others kept."""
    out = []
    for tensor, extra in conditioning:
        if tensor.shape[0] == frames and frames > 1:
            tensor = tensor[lo:hi]
            extra = {k: (v[lo:hi] if torch.is_tensor(v) and v.shape[0] == frames else v) for k, v in extra.items()}
        out.append([tensor, extra])
    return out


def conditioning_frames(conditioning):
    """Largest batch of a CONDITIONING's tensors (1 = one prompt for all frames)."""
    return max(c[0].shape[0] for c in conditioning)


# ---- sampling through the host ------------------------------------------------------------------

def make_sampler(sampler_fn, options=None):
    """A host SAMPLER object (for SamplerCustom) around a k-diffusion style function."""
    return comfy.samplers.KSAMPLER(sampler_fn, extra_options=options or {})


def run_sampler(model, sampler_fn, sigmas, positive, negative, latent, cfg=1.0, options=None, progress=None):
    """Run a k-diffusion style `sampler_fn(model, x, sigmas, extra_args, callback, disable, **options)`
    through the host's own sampling path (model loading, patches, conditioning, CFG).

    negative: None runs without an unconditional branch (cfg must be 1).
    latent: [B, C, H, W] in LATENT (unscaled) space, used as the starting point (no noise added:
    sigmas[0] must be below the model's σ_max, or 0 for an inversion). Returns the result in LATENT space.
    progress: optional callable(step, total_steps, denoised) called after every step.
    """
    sampler = make_sampler(sampler_fn, options)
    noise = torch.zeros_like(latent)
    if negative is None:  # cfg 1: the host skips the uncond pass; the same cond keeps every host happy
        negative = positive

    def callback(step, x0, x, total_steps):
        check_interrupt()
        if progress is not None:
            progress(step + 1, total_steps, x0)

    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      callback=callback, disable_pbar=True)


def model_space(model, latent):
    """LATENT (unscaled) -> the model's internal latent space, and back with `latent_space`."""
    return model.model.process_latent_in(latent)


def latent_space(model, latent):
    return model.model.process_latent_out(latent)


def inversion_cache_dir():
    return os.path.join(temp_directory(), "temporal_adapter", "inversions")
