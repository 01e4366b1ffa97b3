"""Low-rank adapters on frozen Linear layers, active only inside a timestep window (method.md §3).

`lora_linear(base, lora, window)` returns a stand-in for `base`: an object of a subclass of
base's own class that shares base's parameters (same names: `weight`, `bias`, so the host's weight
patches, e.g. a user's LoRA, still find their keys) and computes y = base(x) + (alpha/rank)·B(A(x))
while `window.active`, plain base(x) otherwise. `base` itself is never modified.
"""
import collections

import torch
from torch import nn

# Timesteps (of the model's 1000 training steps) where the LoRA acts: the first, noisiest steps.
DEFAULT_WINDOW = (900, 1000)


class TimestepWindow:
    """Shared switch for every LoRA of one adapted model: active while `timestep` is in [lo, hi).

    The host sets `timestep` before each model call (sampling) or the trainer pins it (training).
    `timestep` None means "unknown": the LoRA stays off.
    """

    def __init__(self, lo=DEFAULT_WINDOW[0], hi=DEFAULT_WINDOW[1]):
        if not 0 <= lo < hi:
            raise ValueError(f"LoRA window: window_start must be at least 0 and below window_end, got [{lo}, {hi}); "
                             "the LoRA acts for timesteps t with window_start <= t < window_end")
        self.lo, self.hi = float(lo), float(hi)
        self.timestep = None

    def contains(self, timestep):
        return self.lo <= float(timestep) < self.hi

    @property
    def active(self):
        return self.timestep is not None and self.contains(self.timestep)


class LoRA(nn.Module):
    """The low-rank pair: x -> scale · up(down(x)), scale = alpha / rank; `up` starts at zero so a
    fresh LoRA changes nothing."""

    def __init__(self, in_features, out_features, rank=4, alpha=4.0, generator=None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank, self.alpha = int(rank), float(alpha)
        self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features ** 0.5)
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    @property
    def scale(self):
        return self.alpha / self.rank

    def forward(self, x):
        return (x @ self.down.t() @ self.up.t()) * self.scale


_CLASSES = {}


def _lora_class(base_cls):
    """The subclass of `base_cls` whose forward adds the windowed LoRA (one per base class)."""
    if base_cls not in _CLASSES:
        def forward(self, x):
            y = base_cls.forward(self, x)
            if not self.window.active:
                return y
            return y + self.lora(x.to(self.lora.up.dtype)).to(y.dtype)

        members = {"forward": forward, "is_lora_wrapper": True}
        _CLASSES[base_cls] = type(f"LoRA{base_cls.__name__}", (base_cls,), members)
    return _CLASSES[base_cls]


def lora_linear(base, lora, window):
    """A stand-in for the Linear `base` (any nn.Linear subclass) adding `lora` inside `window`.

    Shares base's attributes and its very parameter dict, so a parameter set on either object (the
    host patching or restoring a weight through whichever of the two its module path reaches) is set on
    both: a host that patched base's weight before the wrapper was installed and restores it while the
    wrapper is in place still restores base's. Registers `lora` as its submodule "lora" (so moving the
    wrapper to a device moves the LoRA with it). `base_module` gives back the original.
    """
    if getattr(base, "is_lora_wrapper", False):
        base = base.base_module
    if (lora.down.shape[1], lora.up.shape[0]) != (base.in_features, base.out_features):
        raise ValueError(f"LoRA shape {lora.down.shape[1]}->{lora.up.shape[0]} does not fit Linear "
                         f"{base.in_features}->{base.out_features}")
    cls = _lora_class(type(base))
    wrapper = cls.__new__(cls)
    wrapper.__dict__.update(base.__dict__)  # the same _parameters dict
    for name in ("_buffers", "_modules"):
        wrapper.__dict__[name] = collections.OrderedDict(base.__dict__[name])
    wrapper.__dict__["window"] = window
    wrapper.__dict__["base_module"] = base
    wrapper.lora = lora
    return wrapper
