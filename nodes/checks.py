"""The door of every node: inputs checked against their declaration before the node runs, and the
checks that several nodes share. A bad value is refused with the input's name and what to do, and
never travels on.

`checked_inputs` (a class decorator) checks each input by its declared type:
- FLOAT: a finite number within the widget's min/max; INT: within min/max.
  The hosts' own validation is not enough: both the 2024 host and 0.8.0 convert a FLOAT with
  float(value) and then compare it with min and max, and NaN fails no comparison, so NaN (JSON's
  NaN, or the strings "nan"/"inf" over the HTTP API, or what a front end sends) reaches the node;
  +inf passes wherever no max is declared. 0.8.0 also skips min/max for every input that a
  VALIDATE_INPUTS takes, and in-process callers skip the host's validation altogether.
- LATENT, IMAGE, MASK, CONDITIONING, TA_INVERSION, TA_ADAPTER: every tensor they carry is finite.
- filename_prefix: a name the file system can store (`host.check_file_name`), so a node that saves
  refuses a bad name before it computes or writes anything.
"""
import functools
import inspect
import math

import torch

from ..adapter_core.adapter import TYPE_NAME as ADAPTER
from ..adapter_core.finite import count_nonfinite
from . import host

INVERSION = "TA_INVERSION"

# What to do about NaN/inf in a wire of each type.
ADVICE = {
    "LATENT": "check the node that made it (a VAE Encode of broken frames, or a sampler run that diverged: "
              "try a lower cfg)",
    "IMAGE": "check the node that made it (e.g. a VAE Decode of a broken latent, or an image node upstream)",
    "MASK": "check the node that made it",
    "CONDITIONING": "check the text encode or conditioning nodes that made it",
    INVERSION: "run Bilateral DDIM Inversion again on these frames (its latent input must be finite)",
    ADAPTER: "train the adapter again with a lower learning_rate, or load another adapter file",
}


def _tensors(kind, value):
    """(label, tensor) of every tensor a wire value of type `kind` carries."""
    if kind == "LATENT":
        return [("" if key == "samples" else f" {key}", v) for key, v in value.items() if torch.is_tensor(v)]
    if kind in ("IMAGE", "MASK"):
        return [("", value)]
    if kind == "CONDITIONING":
        return [(f" entry {i}" + ("" if key is None else f" {key!r}"), t) for i, (tensor, extra) in enumerate(value)
                for key, t in [(None, tensor), *extra.items()] if torch.is_tensor(t)]
    if kind == INVERSION:
        return [(" trajectory", value.trajectory), (" sigmas", value.sigmas)]
    if kind == ADAPTER:
        return [(f" {key}", t) for key, t in value.module.state_dict().items()]
    return []


def check_finite(name, kind, value):
    """Raise ValueError naming input `name` when the wire value of type `kind` holds NaN or inf."""
    for label, tensor in _tensors(kind, value):
        bad = count_nonfinite(tensor)
        if bad:
            raise ValueError(f"{name}{label}: {bad} of {tensor.numel()} values are NaN or infinite; "
                             f"{ADVICE[kind]}.")


def check_number(name, kind, value, options):
    """Raise ValueError when a FLOAT is not finite or a FLOAT/INT is outside the widget's range."""
    low, high = options.get("min"), options.get("max")
    span = f"between {low} and {high}" if low is not None and high is not None else "a finite number"
    if kind == "FLOAT" and not math.isfinite(value):
        raise ValueError(f"{name}: {value} is not a number it can use; type {span} "
                         f"(the default is {options.get('default')}).")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: {value} is outside the widget's range; type {span}.")


@functools.lru_cache(maxsize=None)
def _declared(cls):
    """{input name: (type, options)} of the node class's required and optional inputs."""
    spec = cls.INPUT_TYPES()
    return {name: (entry[0], entry[1] if len(entry) > 1 else {})
            for section in ("required", "optional") for name, entry in spec.get(section, {}).items()}


def check_inputs(cls, arguments):
    """Check `arguments` ({input name: value}) against the declarations of node class `cls`."""
    declared = _declared(cls)
    for name, value in arguments.items():
        if name not in declared or value is None:
            continue
        kind, options = declared[name]
        if not isinstance(kind, str):
            continue  # a combo: the host checks the choice
        if kind in ("FLOAT", "INT") and isinstance(value, (int, float)):
            check_number(name, kind, value, options)
        elif kind in ADVICE:
            check_finite(name, kind, value)
        elif name == "filename_prefix" and isinstance(value, str):
            host.check_file_name(value, name, example=options.get("default", "TemporalAdapter/video"))


def checked_inputs(cls):
    """Class decorator: the node's FUNCTION first checks every input (`check_inputs`)."""
    method = getattr(cls, cls.FUNCTION)
    signature = inspect.signature(method)

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs).arguments
        check_inputs(cls, arguments)
        return method(self, *args, **kwargs)

    run.inputs_checked = True
    setattr(cls, cls.FUNCTION, run)
    return cls


# ---- checks shared by the nodes that run the model over a clip ------------------------------------

def conditioning_frames(conditioning):
    """Largest batch of a CONDITIONING's tensors (1 = one prompt for all frames)."""
    return max(c[0].shape[0] for c in conditioning)


def conditioning_batch(name, conditioning, frames):
    """A CONDITIONING must hold one prompt, or one per frame of the clip."""
    count = conditioning_frames(conditioning)
    if count not in (1, frames):
        raise ValueError(f"{name}: batch of {count} prompts does not match the latent's {frames} frames; use one "
                         "prompt, or one per frame.")


def clip_inputs(model, frames, inversion=None, latent_shape=None, **conditionings):
    """The checks every node that runs `model` over a clip of `frames` frames makes, so that they
    agree: each conditioning (passed as name=CONDITIONING) holds one prompt or one per frame, and an
    inversion was made by this model (its fingerprint) from latents of `latent_shape` (when given)."""
    for name, conditioning in conditionings.items():
        if conditioning is not None:
            conditioning_batch(name, conditioning, frames)
    if inversion is not None:
        inversion.check_compatible(host.model_fingerprint(model), latent_shape)
