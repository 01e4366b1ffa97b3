"""The ADAPTER wire type ("TA_ADAPTER"): prompt tokens + windowed LoRA + metadata, and its file.

File format: safetensors. Tensors are the state dict of `Adapter.module` ("tokens.*" and
"loras.<attention module path with '.' -> '/'>.down|up"); the metadata entry "temporal_adapter"
holds JSON (format version, base model family and width, token counts, frame count, LoRA rank,
alpha, targets and window, training settings, loss history). The AdamW moments, when present, are
stored as "optimizer/<param index>/<name>" so a resumed run continues exactly where it stopped.
"""
import copy
import json
import math
import numbers
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .atomic import atomic_path
from .finite import count_nonfinite
from .lora import DEFAULT_WINDOW, LoRA, TimestepWindow
from .tokens import PromptTokens

FORMAT_VERSION = 1
METADATA_KEY = "temporal_adapter"
TYPE_NAME = "TA_ADAPTER"


def _key(path):
    return path.replace(".", "/")


def _whole(low):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# The metadata every adapter file holds: key -> (test, what the value must be).
FIELDS = {
    "format_version": (_whole(1), "a whole number"),
    "family": (lambda v: isinstance(v, str) and v != "", "a model family name such as 'SD15'"),
    "width": (_whole(1), "a whole number >= 1"),
    "frames": (_whole(1), "a whole number >= 1"),
    "shared_tokens": (_whole(0), "a whole number >= 0"),
    "unshared_tokens": (_whole(0), "a whole number >= 0"),
    "unshared_form": (lambda v: v in ("free", "clip_vision"), "'free' or 'clip_vision'"),
    "vision_dim": (lambda v: v is None or _whole(1)(v), "null or a whole number >= 1"),
    "rank": (_whole(1), "a whole number >= 1"),
    "alpha": (_number, "a finite number"),
    "window": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_number, v)) and 0 <= v[0] < v[1],
               "[start, end] with 0 <= start < end"),
    "targets": (lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of layer names"),
    "training": (lambda v: isinstance(v, dict), "an object"),
    "loss_history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of objects"),
}


class InvalidAdapterFile(ValueError):
    """A file that is not a valid adapter file; the message names the file and what is wrong."""

    def __init__(self, path, reason):
        super().__init__(f"{os.path.basename(path)}: not a valid adapter file: {reason}")


def _nonfinite_in(value, where="metadata"):
    """Where the JSON-able `value` holds NaN or ±Infinity (which JSON cannot store), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nonfinite_in(item, f"{where}[{key!r}]")
        if found:
            return found
    return None


def _read_metadata(path, raw):
    """The adapter metadata of file `path` from its JSON text `raw`, checked field by field."""
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InvalidAdapterFile(path, f"its '{METADATA_KEY}' metadata is not JSON ({e})") from None
    if not isinstance(meta, dict):
        raise InvalidAdapterFile(path, f"its '{METADATA_KEY}' metadata is not a JSON object")
    version = meta.get("format_version")
    if FIELDS["format_version"][0](version) and version != FORMAT_VERSION:
        raise ValueError(f"{os.path.basename(path)}: format_version is {version} in the file but "
                         f"{FORMAT_VERSION} in this plugin; update the plugin to read it")
    missing = [key for key in FIELDS if key not in meta]
    if missing:
        raise InvalidAdapterFile(path, f"its metadata lacks {', '.join(map(repr, missing))}")
    for key, (test, what) in FIELDS.items():
        if not test(meta[key]):
            raise InvalidAdapterFile(path, f"metadata {key!r} must be {what}, got {meta[key]!r}")
    bad = _nonfinite_in(meta)
    if bad:
        raise InvalidAdapterFile(path, f"{bad} is NaN or infinite")
    return meta


def _optimizer_state(path, tensors, groups):
    """AdamW state_dict from the "optimizer/<param index>/<name>" tensors (removed from `tensors`)."""
    state = {}
    for key in [k for k in tensors if k.startswith("optimizer/")]:
        parts = key.split("/")
        if len(parts) != 3 or not parts[1].isdigit():
            raise InvalidAdapterFile(path, f"unexpected tensor {key!r}")
        state.setdefault(int(parts[1]), {})[parts[2]] = tensors.pop(key)
    if groups is None:
        return None
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups):
        raise InvalidAdapterFile(path, "metadata 'optimizer_groups' must be a list of parameter groups")
    return {"state": state, "param_groups": groups}


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
            for path, lora in sorted(self.loras.items()):
                mine, theirs = (lora.down.shape[1], lora.up.shape[0]), tuple(targets[path])
                if mine != theirs:
                    raise ValueError(f"adapter does not fit: the LoRA on layer {path} is {mine[0]}->{mine[1]} "
                                     f"(in->out features) in the adapter but {theirs[0]}->{theirs[1]} in the model; "
                                     "use the adapter with the model it was trained on")

    def copy(self):
        """An independent deep copy (training a copy never changes this adapter)."""
        other = Adapter(*copy.deepcopy((self.tokens, self.loras)), TimestepWindow(self.window.lo, self.window.hi),
                        copy.deepcopy(self.metadata))
        other.optimizer_state = copy.deepcopy(self.optimizer_state)
        return other

    # ---- file --------------------------------------------------------------------------------
    def save(self, path):
        """Write atomically: a temp file in the same folder, then rename over `path`.
        ValueError, and nothing written, when a tensor or the metadata holds NaN/inf."""
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.module.state_dict().items()}
        meta = dict(self.metadata)
        if self.optimizer_state is not None:
            for i, entry in self.optimizer_state["state"].items():
                tensors.update({f"optimizer/{i}/{k}": torch.as_tensor(v).detach().float().cpu().contiguous()
                                for k, v in entry.items()})
            meta["optimizer_groups"] = self.optimizer_state["param_groups"]
        bad = next((k for k, v in tensors.items() if count_nonfinite(v)), None) or _nonfinite_in(meta)
        if bad:
            raise ValueError(f"adapter: {bad} holds NaN or infinite values; {os.path.basename(path)} was not "
                             "written (train the adapter again with a lower learning_rate)")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(meta, allow_nan=False)})
        return path

    @classmethod
    def load(cls, path):
        """Read an adapter file. InvalidAdapterFile ("<file>: not a valid adapter file: <reason>") for
        anything that is not one: not safetensors, no or malformed metadata (not JSON, a field
        missing or of the wrong type), tensors that do not match the metadata or hold NaN/inf;
        ValueError for a valid file of another format version."""
        try:
            with safe_open(path, framework="pt") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise InvalidAdapterFile(path, f"it cannot be read as safetensors ({e})") from None
        if raw is None:
            raise InvalidAdapterFile(path, f"a safetensors file without the '{METADATA_KEY}' metadata of a "
                                           "Temporal Adapter")
        meta = _read_metadata(path, raw)
        bad = next((k for k, v in tensors.items() if count_nonfinite(v)), None)
        if bad is not None:
            raise InvalidAdapterFile(path, f"tensor {bad!r} holds NaN or infinite values (saved from a training run "
                                           "that diverged); train the adapter again with a lower learning_rate")
        adapter_state = _optimizer_state(path, tensors, meta.pop("optimizer_groups", None))
        loras = {}
        for target in meta["targets"]:
            down, up = (tensors.get(f"loras.{_key(target)}.{name}") for name in ("down", "up"))
            if down is None or up is None or down.ndim != 2 or up.ndim != 2:
                raise InvalidAdapterFile(path, f"the LoRA tensors of target {target!r} are missing or not matrices")
            loras[target] = (down.shape[1], up.shape[0])
        vision = tensors.get("tokens.vision")
        if (vision is None) != (meta["unshared_form"] == "free") or (vision is not None and vision.ndim != 2):
            raise InvalidAdapterFile(path, f"unshared_form is {meta['unshared_form']!r} but the 'tokens.vision' "
                                           "tensor is " + ("missing" if vision is None else f"{tuple(vision.shape)}"))
        try:
            adapter = cls.create(meta["width"], meta["frames"], loras, meta["shared_tokens"],
                                 meta["unshared_tokens"], meta["rank"], meta["alpha"], meta["window"], vision,
                                 family=meta["family"])
            adapter.module.load_state_dict(tensors, strict=True)
        except (RuntimeError, ValueError) as e:
            reason = " ".join(str(e).split())  # torch's message, on one line
            raise InvalidAdapterFile(path, f"its tensors do not match its metadata ({reason})") from None
        adapter.optimizer_state = adapter_state
        adapter.metadata = meta
        return adapter
