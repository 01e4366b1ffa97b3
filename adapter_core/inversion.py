"""The INVERSION object: a DDIM inversion trajectory, its provenance, a content cache, and the
reconstruction readout (method.md §2).

Latents here are in the model's own (scaled) latent space, as the host's samplers see them.
"""
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_path
from .finite import all_finite

FORMAT_VERSION = 1


def tensor_digest(t):
    """Short content hash of a tensor (shape, dtype and values)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


def conditioning_digest(conditioning):
    """Short content hash of a CONDITIONING ([[tensor, {extras}], ...]): each entry's tensor and every extra
    the model may read (e.g. SDXL's pooled_output and the size/crop entries its ADM input is built from):
    tensors by content, numbers and strings by value, other objects by type."""
    h = hashlib.sha256()
    for tensor, extra in conditioning:
        h.update(tensor_digest(tensor).encode())
        for key in sorted(extra):
            value = extra[key]
            if torch.is_tensor(value):
                value = tensor_digest(value)
            elif not isinstance(value, (int, float, str, bool, type(None))):
                value = type(value).__qualname__
            h.update(f"|{key}={value}".encode())
    return h.hexdigest()[:20]


def inversion_key(source_key, model_key, cond_key, settings):
    """Cache key of an inversion: same frames, model, source prompt and settings -> same key."""
    blob = json.dumps([source_key, model_key, cond_key, settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class Inversion:
    """trajectory: [K+1, T, C, H, W] latents at `sigmas` (index k at sigmas[k]; sigmas descend,
    so trajectory[0] is the inverted noise and trajectory[-1] the clean source latent).
    sigmas: [K+1] descending DDIM schedule ending in 0. settings: inversion options (JSON-able).
    source_key / model_key: fingerprints of the source latents and of the model (with its patches).
    """
    trajectory: torch.Tensor
    sigmas: torch.Tensor
    settings: dict
    source_key: str
    model_key: str
    notes: list = field(default_factory=list)

    @property
    def noise(self):
        return self.trajectory[0]

    @property
    def source(self):
        return self.trajectory[-1]

    @property
    def frames(self):
        return self.trajectory.shape[1]

    @property
    def steps(self):
        return self.sigmas.shape[0] - 1

    def latent_at(self, sigma):
        """The trajectory latent [T, C, H, W] at the schedule entry nearest to `sigma`."""
        i = int((self.sigmas - float(sigma)).abs().argmin())
        return self.trajectory[i]

    def check_compatible(self, model_key, latent_shape=None):
        """Raise ValueError naming the mismatch when this inversion does not fit a model/latent."""
        if model_key != self.model_key:
            raise ValueError("inversion: it was computed with a different model (or model patches) than the "
                             "MODEL connected here; run the inverter with this model.")
        if latent_shape is not None and tuple(latent_shape) != tuple(self.source.shape):
            raise ValueError(f"inversion: frames/latent size {tuple(self.source.shape)} differ from the "
                             f"latent here {tuple(latent_shape)}; invert the same frames.")

    def save(self, path):
        """Atomic safetensors write (temp file + rename)."""
        meta = {"format_version": str(FORMAT_VERSION), "settings": json.dumps(self.settings),
                "source_key": self.source_key, "model_key": self.model_key, "notes": json.dumps(self.notes)}
        with atomic_path(path) as tmp:
            save_file({"trajectory": self.trajectory.contiguous().cpu(), "sigmas": self.sigmas.contiguous().cpu()},
                      tmp, metadata=meta)

    @classmethod
    def load(cls, path):
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"{path}: inversion format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        t = load_file(path)
        return cls(t["trajectory"], t["sigmas"], json.loads(meta["settings"]), meta["source_key"],
                   meta["model_key"], json.loads(meta["notes"]))


class InversionCache:
    """Inversions on disk keyed by content, bounded to `max_bytes` (least recently used go first)."""

    def __init__(self, folder, max_bytes=2 << 30):
        self.folder, self.max_bytes = folder, max_bytes

    def _path(self, key):
        return os.path.join(self.folder, f"{key}.safetensors")

    def get(self, key, trajectory_shape, source_key, model_key):
        """The inversion cached under `key` for a request whose trajectory is [K+1, T, C, H, W] =
        `trajectory_shape`, from the source and model with these fingerprints; None on a miss. An entry
        that is damaged (unreadable, not finite) or does not fit the request (another shape, source or
        model) is removed and missed, never served."""
        path = self._path(key)
        if not os.path.exists(path):
            return None
        try:
            inv = Inversion.load(path)
        except Exception:  # a damaged entry is a miss, never an error
            inv = None
        if (inv is None or not all_finite(inv.trajectory, inv.sigmas)
                or tuple(inv.trajectory.shape) != tuple(trajectory_shape) or inv.sigmas.shape[0] != trajectory_shape[0]
                or (inv.source_key, inv.model_key) != (source_key, model_key)):
            os.remove(path)
            return None
        os.utime(path)
        return inv

    def put(self, key, inversion):
        os.makedirs(self.folder, exist_ok=True)
        inversion.save(self._path(key))
        entries = sorted((os.stat(p).st_mtime, os.path.getsize(p), p) for p in
                         (os.path.join(self.folder, f) for f in os.listdir(self.folder)) if p.endswith(".safetensors"))
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries[:-1]:
            if total <= self.max_bytes:
                break
            os.remove(path)
            total -= size


def psnr(a, b, peak):
    """Per-frame PSNR in dB of a vs b ([T, ...]) for a signal of peak-to-peak range `peak`."""
    mse = (a.float() - b.float()).flatten(1).square().mean(dim=1).clamp_min(1e-12)
    return 10.0 * torch.log10(peak * peak / mse)


def reconstruction_report(source, recon, label="latent", peak=None):
    """Readout of a round trip: dict with per-frame and mean PSNR and the relative L2 error.

    source, recon: [T, ...]; peak: signal range (default: the source's max − min).
    """
    peak = float(source.max() - source.min()) if peak is None else peak
    per_frame = psnr(recon, source, peak)
    rel = float((recon.float() - source.float()).norm() / source.float().norm().clamp_min(1e-12))
    return {"space": label, "psnr_per_frame": [round(float(v), 3) for v in per_frame],
            "psnr_mean": round(float(per_frame.mean()), 3), "relative_error": rel}
