"""The ADAPTER wire type ("TA_ADAPTER"): prompt tokens + windowed LoRA + metadata, and its file.

File format: safetensors. Tensors are the state dict of `Adapter.module` ("tokens.*" and
"loras.<attention module path with '.' -> '/'>.down|up"); the metadata entry "temporal_adapter"
holds JSON (format version, base model family and width, token counts, frame count, LoRA rank,
alpha, targets and window, training settings, loss history). The AdamW moments, when present, are
stored as "optimizer/<param index>/<name>" so a resumed run continues exactly where it stopped.
"""
import copy
import json
import os
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .lora import DEFAULT_WINDOW, LoRA, TimestepWindow
from .tokens import PromptTokens

FORMAT_VERSION = 1
METADATA_KEY = "temporal_adapter"
TYPE_NAME = "TA_ADAPTER"


def _key(path):
    return path.replace(".", "/")


class Adapter:
    """Tokens (`tokens`, a PromptTokens), LoRAs keyed by attention module path (`loras`, paths
    relative to the UNet, e.g. "output_blocks.4.1.transformer_blocks.0.attn1.to_q"), the LoRA
    timestep `window` and `metadata` (a JSON-able dict). `module` holds every learnable tensor."""

    def __init__(self, tokens, loras, window, metadata):
        self.tokens, self.loras, self.window = tokens, dict(loras), window
        self.metadata = dict(metadata)
        self.optimizer_state = None  # AdamW state_dict of the last training run (for exact resume)
        self.module = nn.Module()
        self.module.tokens = tokens
        self.module.loras = nn.ModuleDict({_key(p): m for p, m in self.loras.items()})

    @classmethod
    def create(cls, width, frames, lora_shapes, shared=4, unshared=1, rank=4, alpha=4.0, window=DEFAULT_WINDOW,
               vision=None, init_std=1.0, seed=0, family="SD15"):
        """A fresh adapter. lora_shapes: {module path: (in_features, out_features)}; vision: optional
        [frames, D] CLIP-vision embeddings (projection form of the unshared tokens)."""
        g = torch.Generator().manual_seed(int(seed))
        tokens = PromptTokens(shared, unshared, width, frames, vision, init_std, g)
        loras = {p: LoRA(i, o, rank, alpha, g) for p, (i, o) in sorted(lora_shapes.items())}
        meta = {"format_version": FORMAT_VERSION, "family": family, "width": int(width), "frames": int(frames),
                "shared_tokens": int(shared), "unshared_tokens": int(unshared),
                "unshared_form": "free" if vision is None else "clip_vision",
                "vision_dim": None if vision is None else int(vision.shape[1]),
                "rank": int(rank), "alpha": float(alpha), "window": [float(window[0]), float(window[1])],
                "targets": sorted(lora_shapes), "training": {}, "loss_history": []}
        return cls(tokens, loras, TimestepWindow(*window), meta)

    # ---- groups of learnable tensors --------------------------------------------------------
    def shared_parameters(self):
        return [self.tokens.shared]

    def unshared_parameters(self):
        return self.tokens.unshared_parameters()

    def lora_parameters(self):
        return [p for m in self.loras.values() for p in m.parameters()]

    def parameter_count(self):
        return sum(p.numel() for p in self.module.parameters())

    @property
    def frames(self):
        return self.metadata["frames"]

    @property
    def width(self):
        return self.metadata["width"]

    def context_tokens(self, frames):
        """[frames, S + U, width] tokens to prepend to each frame's text conditioning (no grad)."""
        self.check_fits(self.width, frames)
        with torch.no_grad():
            return self.tokens().detach().float().clone()

    def check_fits(self, model_width, frames, targets=None, family=None):
        """Raise ValueError naming the field and both values when the adapter does not fit a model
        of text width `model_width` and a clip of `frames` frames (and, given `targets`, the model's
        attention module paths; given `family`, the model's family: an adapter trained on one family,
        e.g. SD15, is refused on another, e.g. SDXL, naming both)."""
        mine = self.metadata.get("family")
        if family is not None and mine != family:
            raise ValueError(f"adapter does not fit: it was trained on a {mine} model (text width {self.width}) but "
                             f"the model here is {family} (text width {model_width}); an adapter works only on the "
                             f"model family it was trained on: train one on this model")
        for field, mine, theirs in (("width", self.width, model_width), ("frames", self.frames, frames)):
            if int(mine) != int(theirs):
                raise ValueError(f"adapter does not fit: {field} is {mine} in the adapter but {theirs} in the "
                                 f"{'model' if field == 'width' else 'clip'}")
        if targets is not None:
            missing = sorted(set(self.loras) - set(targets))
            if missing:
                raise ValueError(f"adapter does not fit: LoRA target {missing[0]!r} is in the adapter but not in "
                                 f"the model ({len(missing)} of {len(self.loras)} targets missing)")

    def copy(self):
        """An independent deep copy (training a copy never changes this adapter)."""
        other = Adapter(*copy.deepcopy((self.tokens, self.loras)), TimestepWindow(self.window.lo, self.window.hi),
                        copy.deepcopy(self.metadata))
        other.optimizer_state = copy.deepcopy(self.optimizer_state)
        return other

    # ---- file --------------------------------------------------------------------------------
    def save(self, path):
        """Write atomically: a temp file in the same folder, then rename over `path`."""
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.module.state_dict().items()}
        meta = dict(self.metadata)
        if self.optimizer_state is not None:
            for i, entry in self.optimizer_state["state"].items():
                tensors.update({f"optimizer/{i}/{k}": torch.as_tensor(v).detach().float().cpu().contiguous()
                                for k, v in entry.items()})
            meta["optimizer_groups"] = self.optimizer_state["param_groups"]
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".safetensors", dir=folder)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta)})
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path):
        """Read an adapter file; ValueError with the reason for anything that is not one."""
        try:
            with safe_open(path, framework="pt") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{os.path.basename(path)} is not a readable adapter file ({e})") from None
        if raw is None:
            raise ValueError(f"{os.path.basename(path)} is a safetensors file but not a Temporal Adapter "
                             f"(no '{METADATA_KEY}' metadata)")
        meta = json.loads(raw)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{os.path.basename(path)}: format_version is {meta.get('format_version')} in the file "
                             f"but {FORMAT_VERSION} in this plugin")
        vision = tensors.get("tokens.vision")
        loras = {p: (tensors[f"loras.{_key(p)}.down"].shape[1], tensors[f"loras.{_key(p)}.up"].shape[0])
                 for p in meta["targets"] if f"loras.{_key(p)}.down" in tensors}
        adapter = cls.create(meta["width"], meta["frames"], loras, meta["shared_tokens"], meta["unshared_tokens"],
                             meta["rank"], meta["alpha"], meta["window"], vision, family=meta["family"])
        state = {}
        for key in [k for k in tensors if k.startswith("optimizer/")]:
            _, i, name = key.split("/")
            state.setdefault(int(i), {})[name] = tensors.pop(key)
        groups = meta.pop("optimizer_groups", None)
        if groups is not None:
            adapter.optimizer_state = {"state": state, "param_groups": groups}
        try:
            adapter.module.load_state_dict(tensors, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{os.path.basename(path)}: tensors do not match its metadata ({e})") from None
        adapter.metadata = meta
        return adapter
