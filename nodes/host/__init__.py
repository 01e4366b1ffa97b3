"""The one package that touches ComfyUI internals (comfy, folder_paths, server).

Node files call these helpers (`from . import host`, then `host.run_sampler(...)`) instead of the
host, so a host change is fixed here. Only API that both the 2024 host and the newest host have is
used (see shared design notes, "API surface"); where host versions differ, the feature detection
stays inside this package. One module per concern: `progress` (progress bar, interrupt, front-end
events, free memory), `files` (folders, file names, save locations, the adapter folder), `models`
(family, noise schedule, latent space, UNet layout, fingerprint), `patches` (attention and block
patches on clones, the adapter's LoRAs), `conditioning`, `sampling` (samplers through the host's
sampling path), `tokens` (the CLIP tokenizer) and `training` (the differentiable UNet copy and the
2024-host shim). Relative imports only: the plugin is imported under a name of the host's choosing.
"""
from .conditioning import adapter_conditioning, adm_conditioning, model_conds, select_conditioning, slice_conditioning
from .files import (ADAPTER_FOLDER, NAME_RESERVE, WINDOWS_REFUSED, adapter_files, adapter_path, adapter_save_path,
                    allowed_roots, check_file_name, input_directory, inversion_cache_dir, metadata_enabled,
                    output_directory, save_json, save_location, temp_directory)
from .models import (FINGERPRINT_SAMPLES, SD_FAMILIES, SDXL_FAMILIES, SUPPORTED_FAMILIES, attention_linears,
                     check_supported, image_embedder, latent_space, model_family, model_fingerprint, model_sampling,
                     model_sigmas, model_space, text_width, unet_layout)
from .patches import (adapter_model, host_attention, long_key_attention, patched_sampler, reaches_inside_unet,
                      with_attn1_extension, with_attn1_output_patch, with_attn2_capture, with_context_tokens,
                      with_patches)
from .progress import Progress, available_memory, check_interrupt, preview_callback, send_event
from .sampling import FRAMES_CHECKED, make_sampler, run_sampler, source_denoiser
from .tokens import prompt_tokens, token_encoder
from .training import TrainingDenoiser, inplace_add_shim

__all__ = [
    "ADAPTER_FOLDER", "FINGERPRINT_SAMPLES", "FRAMES_CHECKED", "NAME_RESERVE", "SDXL_FAMILIES", "SD_FAMILIES",
    "SUPPORTED_FAMILIES", "WINDOWS_REFUSED", "Progress", "TrainingDenoiser", "adapter_conditioning", "adapter_files",
    "adapter_model", "adapter_path", "adapter_save_path", "adm_conditioning", "allowed_roots", "attention_linears",
    "available_memory", "check_file_name", "check_interrupt", "check_supported", "host_attention", "image_embedder",
    "inplace_add_shim", "input_directory", "inversion_cache_dir", "latent_space", "long_key_attention",
    "make_sampler", "metadata_enabled", "model_conds", "model_family", "model_fingerprint", "model_sampling",
    "model_sigmas", "model_space", "output_directory", "patched_sampler", "preview_callback", "prompt_tokens",
    "reaches_inside_unet", "run_sampler", "save_json", "save_location", "select_conditioning", "send_event",
    "slice_conditioning", "source_denoiser", "temp_directory", "text_width", "token_encoder", "unet_layout",
    "with_attn1_extension", "with_attn1_output_patch", "with_attn2_capture", "with_context_tokens", "with_patches",
]
