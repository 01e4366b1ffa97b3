"""Shared/unshared token adapter with windowed LoRA (method.md §3): train, save, load, apply."""
import logging
import math
import os
import time

import torch

from ..adapter_core import training
from ..adapter_core.adapter import TYPE_NAME, Adapter
from ..adapter_core.layout import choose_blocks
from ..adapter_core.lora import DEFAULT_WINDOW
from ..adapter_core.temporal_loss import FORMS, REDUCES
from . import checks, host

CATEGORY = "Temporal Adapter/adapter"
LOSS_EVENT = "temporal_adapter.loss"
ADAPTER_INPUT = (TYPE_NAME, {"tooltip": "An adapter from Train Adapter or Load Adapter."})


def _latent_frames(latent, name="latent"):
    x = latent["samples"]
    if x.ndim != 4 or x.shape[0] < 2:
        raise ValueError(f"{name}: expected encoded frames [frames >= 2, 4, H/8, W/8], got {tuple(x.shape)}")
    return x


def _learning_rate(text):
    text = text.strip().lower()
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"learning_rate: write a positive number or 'auto', got {text!r}") from None
    if not 0 < value < math.inf:
        raise ValueError(f"learning_rate: must be a finite number > 0, got {text!r}; try 'auto' "
                         f"({training.AUTO_ADAMW_LR:g} for AdamW)")
    return value


def _autosave(adapter, reason):
    """Write the adapter of the last completed step next to the user's adapters; returns the path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = host.adapter_save_path(f"{reason}-{stamp}-step{len(adapter.metadata['loss_history'])}.safetensors")
    return adapter.save(path)


@checks.checked_inputs
class TA_TrainAdapter:
    DESCRIPTION = ("Trains a temporal adapter on the user's own clip: S shared tokens (same for every frame), U "
                   "tokens per frame, and rank-r LoRA on q/k/v/out of the UNet's attention, active only inside a "
                   "timestep window. Loss = noise-prediction MSE at timesteps drawn from the window + lambda x "
                   "temporal loss between adjacent frames' self-attention outputs. The final fraction of steps "
                   "updates only the shared tokens. The MODEL itself is never changed. Interrupting saves the "
                   "adapter of the last completed step to models/temporal_adapters; a loss that becomes NaN or "
                   "explodes saves the adapter from before the update that diverged and names a learning rate to "
                   "try.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (TYPE_NAME, "IMAGE", "INT")
    RETURN_NAMES = ("adapter", "loss_curve", "steps")
    OUTPUT_TOOLTIPS = ("The trained adapter (tokens, LoRA, window, metadata).",
                       "Total, denoising and temporal loss per step (log scale).",
                       "Optimiser steps the adapter has taken in all (resumed runs included).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x/SD2.x or SDXL-family model to adapt (it is not modified)."}),
            "conditioning": ("CONDITIONING", {"tooltip": "The SOURCE prompt describing the clip (one prompt, or "
                             "one per frame)."}),
            "latent": ("LATENT", {"tooltip": "The clip's frames encoded with VAE Encode (at least 2)."}),
            "steps": ("INT", {"default": 200, "min": 1, "max": 100000, "tooltip": "Total optimiser steps. When "
                      "resuming from an adapter, training continues up to this total."}),
            "learning_rate": ("STRING", {"default": "auto", "tooltip": "A number, or 'auto': "
                              f"{training.AUTO_ADAMW_LR:g} for AdamW; for plain GD the step 1/L from a "
                              "Lipschitz estimate of the loss."}),
            "optimizer": (list(training.OPTIMIZERS), {"default": "adamw", "tooltip": "adamw: AdamW on random "
                          "batches. gd: plain gradient descent on one fixed batch with a decrease check (the "
                          "step is halved until the loss does not increase)."}),
            "temporal_weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.01, "tooltip":
                                "lambda: weight of the temporal loss against the denoising loss."}),
            "temporal_form": (list(FORMS), {"default": "adjacent", "tooltip": "adjacent: 1 - cosine of "
                              "neighbouring frames. second_order: change of that cosine along the clip. "
                              "cross_timestep: the same pairs at two noise levels should agree (doubles the "
                              "batch)."}),
            "temporal_reduce": (list(REDUCES), {"default": "frame", "tooltip": "Cosine over each whole frame, "
                                "or per token over channels, averaged."}),
            "feature_blocks": ("STRING", {"default": "auto", "tooltip": "UNet blocks whose self-attention "
                               "outputs (every transformer layer) enter the temporal loss, e.g. 'output 4, "
                               "output 5'. auto: the papers' decoder blocks 4-11 on the model's layout (SD1.x/SD2.x: "
                               "output 4-11; SDXL family: output 1-5)."}),
            "shared_only_fraction": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                     "Fraction of the final steps that update only the shared tokens."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Seeds the initial "
                     "tokens/LoRA and every batch (frames, timesteps, noise): same seed, same adapter."}),
            "frames_per_step": ("INT", {"default": 4, "min": 2, "max": 64, "tooltip": "Adjacent frames per "
                                "optimiser step (memory grows with it)."}),
            "shared_tokens": ("INT", {"default": 4, "min": 0, "max": 64, "tooltip": "S: tokens shared by all "
                              "frames."}),
            "unshared_tokens": ("INT", {"default": 2, "min": 0, "max": 64, "tooltip": "U: tokens of each "
                                "frame (free per frame, or projected from CLIP vision when connected)."}),
            "lora_rank": ("INT", {"default": 4, "min": 1, "max": 128, "tooltip": "Rank of the LoRA on every "
                          "attention q/k/v/out projection."}),
            "lora_alpha": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip":
                           "LoRA scale alpha (the update is multiplied by alpha/rank)."}),
            "lora_blocks": ("STRING", {"default": "auto", "tooltip": "Blocks whose attentions get LoRA, e.g. "
                            "'output 4, output 5'. auto: every attention of the UNet."}),
            "window_start": ("INT", {"default": DEFAULT_WINDOW[0], "min": 0, "max": 999, "tooltip": "The LoRA "
                             "acts (and training samples timesteps) for t in [window_start, window_end)."}),
            "window_end": ("INT", {"default": DEFAULT_WINDOW[1], "min": 1, "max": 1000, "tooltip": "End of the "
                           "LoRA timestep window (exclusive); 1000 is the noisiest step."}),
        }, "optional": {
            "adapter": (TYPE_NAME, {"tooltip": "Resume: continue training this adapter (its tokens, LoRA and "
                        "loss history) up to `steps`; the token/LoRA/window settings come from it."}),
            "clip_vision": ("CLIP_VISION", {"tooltip": "Make each frame's unshared tokens a learnable "
                            "projection of that frame's CLIP-vision embedding (needs `images`)."}),
            "images": ("IMAGE", {"tooltip": "The clip's frames (as given to VAE Encode), for clip_vision."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def train(self, model, conditioning, latent, steps, learning_rate, optimizer, temporal_weight, temporal_form,
              temporal_reduce, feature_blocks, shared_only_fraction, seed, frames_per_step, shared_tokens,
              unshared_tokens, lora_rank, lora_alpha, lora_blocks, window_start, window_end, adapter=None,
              clip_vision=None, images=None, unique_id=None):
        family = host.check_supported(model)
        x = _latent_frames(latent)
        frames = x.shape[0]
        checks.clip_inputs(model, frames, conditioning=conditioning)
        text = conditioning[0][0]
        settings = training.TrainSettings(
            steps=steps, lr=_learning_rate(learning_rate), optimizer=optimizer, lam=temporal_weight, form=temporal_form,
            reduce=temporal_reduce, shared_only_fraction=shared_only_fraction, seed=seed,
            frames_per_step=frames_per_step)
        settings.validate(frames)
        features, note = choose_blocks(feature_blocks, host.unet_layout(model), "decoder_attention_blocks")
        with torch.inference_mode(False):  # trainable tensors must not be inference tensors
            if adapter is None:
                adapter = self._new_adapter(model, family, frames, text, shared_tokens, unshared_tokens, lora_rank,
                                            lora_alpha, lora_blocks, (window_start, window_end), seed, clip_vision,
                                            images)
            else:
                adapter.check_fits(host.text_width(model), frames, host.attention_linears(model), family)
                adapter = adapter.copy()  # the incoming adapter may be cached or used elsewhere
        adapter.metadata["feature_blocks"] = [list(b) for b in features]
        if note:
            logging.info("Temporal Adapter trainer: %s", note)
        bar = host.Progress(steps)

        def progress(step, total, record):
            bar.update(step)
            host.send_event(LOSS_EVENT, {"node": unique_id, "steps": total, **record})

        done_before = len(adapter.metadata.get("loss_history", []))
        try:
            with host.TrainingDenoiser(model, adapter, features) as denoise:
                training.train(adapter, denoise, host.model_space(model, x).clone(), text.clone(),
                               host.model_sigmas(model), settings, progress, host.check_interrupt,
                               host.adm_conditioning(model, conditioning, x[:text.shape[0]]))
        except training.TrainingDiverged as e:
            raise ValueError(f"{e}. {self._kept(adapter, done_before, 'diverged')}") from None
        except BaseException:  # interrupt (or any error): nothing trained so far is lost
            logging.warning("Temporal Adapter trainer stopped. %s", self._kept(adapter, done_before, "interrupted"))
            raise
        history = adapter.metadata["loss_history"]
        curve = torch.from_numpy(training.loss_curve_image(history)).unsqueeze(0)
        text_out = (f"{len(history)} steps; loss {history[0]['total']:.5g} -> {history[-1]['total']:.5g}"
                    if history else "no steps") + (f"\n{note}" if note else "")
        return {"ui": {"text": [text_out]}, "result": (adapter, curve, len(history))}

    @staticmethod
    def _kept(adapter, done_before, reason):
        if len(adapter.metadata["loss_history"]) == done_before:
            return "No step of this run had completed, so nothing was saved" + (
                " (the adapter it resumed from is unchanged)." if done_before else ".")
        return f"The adapter of the last completed step was saved to {_autosave(adapter, reason)}."

    @staticmethod
    def _new_adapter(model, family, frames, text, shared, unshared, rank, alpha, lora_blocks, window, seed,
                     clip_vision, images):
        vision = None
        if clip_vision is not None:
            if images is None or images.shape[0] != frames:
                raise ValueError(f"images: clip_vision needs the clip's {frames} frames, got "
                                 f"{None if images is None else images.shape[0]}")
            vision = host.image_embedder(clip_vision)(images).float()
        blocks, _ = choose_blocks(lora_blocks, host.unet_layout(model), "attention_blocks")
        return Adapter.create(host.text_width(model), frames, host.attention_linears(model, blocks), shared, unshared,
                              rank, alpha, window, vision, init_std=float(text.float().std()), seed=seed,
                              family=family)


@checks.checked_inputs
class TA_SaveAdapter:
    DESCRIPTION = ("Saves an adapter as safetensors (atomic write) in models/temporal_adapters, with its metadata: "
                   "format version, base model family and width, token counts, frame count, training settings "
                   "and loss history.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("The file name written (inside models/temporal_adapters).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter": ADAPTER_INPUT,
            "filename_prefix": ("STRING", {"default": "temporal_adapter", "tooltip": "File name start; a "
                                "counter is appended so nothing is overwritten (name_00001.safetensors)."}),
        }}

    def save(self, adapter, filename_prefix):
        prefix = filename_prefix.strip()
        if not prefix or os.path.basename(prefix) != prefix:
            raise ValueError(f"filename_prefix: give a plain name without folders, got {filename_prefix!r}")
        if prefix.startswith("."):
            raise ValueError(f"filename_prefix: {filename_prefix!r} starts with '.', which makes a hidden file that "
                             "Load Adapter does not list; start the name with a letter or digit")
        taken = set(host.adapter_files())
        counter = 1
        while f"{prefix}_{counter:05}.safetensors" in taken:
            counter += 1
        name = f"{prefix}_{counter:05}.safetensors"
        adapter.save(host.adapter_save_path(name))
        return {"ui": {"text": [f"saved {name}"]}, "result": (name,)}


@checks.checked_inputs
class TA_LoadAdapter:
    DESCRIPTION = ("Loads an adapter from models/temporal_adapters and checks that it fits the model (text width, "
                   "attention layers) and the clip (frame count); a mismatch names the field and both values.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (TYPE_NAME,)
    RETURN_NAMES = ("adapter",)
    OUTPUT_TOOLTIPS = ("The adapter, ready for Apply Adapter, the sampler, or to resume training.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "adapter_name": (host.adapter_files(), {"tooltip": "A file in models/temporal_adapters."}),
            "model": ("MODEL", {"tooltip": "The model the adapter will be used with."}),
            "latent": ("LATENT", {"tooltip": "The clip (encoded frames) the adapter will be used with."}),
        }}

    @classmethod
    def IS_CHANGED(cls, adapter_name, **_):
        path = host.adapter_path(adapter_name)
        return f"{path}:{os.path.getmtime(path)}" if path else adapter_name

    @classmethod
    def VALIDATE_INPUTS(cls, adapter_name):
        return True if host.adapter_path(adapter_name) else f"adapter file not found: {adapter_name}"

    def load(self, adapter_name, model, latent):
        path = host.adapter_path(adapter_name)
        if path is None:
            raise ValueError(f"adapter_name: {adapter_name} is not in models/temporal_adapters")
        frames = _latent_frames(latent).shape[0]
        adapter = Adapter.load(path)
        try:
            adapter.check_fits(host.text_width(model), frames, host.attention_linears(model), host.model_family(model))
        except ValueError as e:
            raise ValueError(f"{adapter_name}: {e}") from None
        return (adapter,)


@checks.checked_inputs
class TA_ApplyAdapter:
    DESCRIPTION = ("Applies an adapter: returns a clone of the model with the adapter's LoRA (active only inside its "
                   "timestep window) and the conditioning with the adapter's tokens prepended for each frame. "
                   "Feed both to a sampler with a latent of the adapter's frame count.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    OUTPUT_TOOLTIPS = ("A clone of the model with the windowed LoRA (the input model is unchanged).",
                       "The positive prompt with the adapter's tokens per frame.",
                       "The negative prompt, with the tokens when apply_to_negative is on (empty if not "
                       "connected).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the adapter was trained on."}),
            "positive": ("CONDITIONING", {"tooltip": "The edit prompt (one, or one per frame)."}),
            "adapter": ADAPTER_INPUT,
            "apply_to_negative": ("BOOLEAN", {"default": False, "tooltip": "Also prepend the tokens to the "
                                  "negative prompt."}),
        }, "optional": {
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt."}),
            "latent": ("LATENT", {"tooltip": "Optional: the clip to be sampled, to check its frame count."}),
        }}

    def apply(self, model, positive, adapter, apply_to_negative, negative=None, latent=None):
        family = host.check_supported(model)
        clip_frames = adapter.frames if latent is None else _latent_frames(latent).shape[0]
        adapter.check_fits(host.text_width(model), clip_frames, family=family)
        frames = adapter.frames
        positive = host.adapter_conditioning(positive, adapter, frames)
        if negative is not None and apply_to_negative:
            negative = host.adapter_conditioning(negative, adapter, frames)
        return (host.adapter_model(model, adapter), positive, negative if negative is not None else [])


NODE_CLASS_MAPPINGS = {"TA_TrainAdapter": TA_TrainAdapter, "TA_SaveAdapter": TA_SaveAdapter,
                       "TA_LoadAdapter": TA_LoadAdapter, "TA_ApplyAdapter": TA_ApplyAdapter}
NODE_DISPLAY_NAME_MAPPINGS = {"TA_TrainAdapter": "Train Adapter (Temporal Adapter)",
                              "TA_SaveAdapter": "Save Adapter (Temporal Adapter)",
                              "TA_LoadAdapter": "Load Adapter (Temporal Adapter)",
                              "TA_ApplyAdapter": "Apply Adapter (Temporal Adapter)"}
