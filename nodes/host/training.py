"""Training: a differentiable copy of the model's UNet for the adapter's training loop.

`TrainingDenoiser` copies the loaded, patched UNet outside inference mode with the adapter's LoRAs
and torch's SDPA in every attention, and captures attn1 features; `inplace_add_shim` is the 2024-host
compatibility shim (its transformer blocks add in place, which breaks backward), applied to that
copy only.
"""
import copy
import functools
import inspect
import re
import sys
import textwrap
import types

import torch

import comfy.model_management
import comfy.utils

from ...adapter_core.lora import lora_linear
from .models import model_sampling, unet_layout
from .patches import host_attention


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
