"""Shared and per-frame (unshared) prompt tokens (method.md §3, the TSC module).

Shared tokens: S learnable vectors of the text-encoder width, the same for every frame.
Unshared tokens: U vectors per frame, either free learnable parameters ([T, U, width]) or a
learnable linear projection of each frame's CLIP-vision embedding ([T, D] -> [T, U, width]), so
every frame gets tokens computed from its own image.
"""
import torch
from torch import nn


class PromptTokens(nn.Module):
    """Learnable tokens prepended to the text conditioning of each frame.

    shared, unshared: token counts S, U (each >= 0, S + U >= 1); width: text-encoder width;
    frames: T; vision: optional [T, D] CLIP-vision embeddings of the frames (selects the
    projection form); init_std: standard deviation of the random start (match the scale of the
    text tokens); generator: torch.Generator for a deterministic start.
    """

    def __init__(self, shared, unshared, width, frames, vision=None, init_std=1.0, generator=None):
        super().__init__()
        if shared < 0 or unshared < 0 or shared + unshared < 1:
            raise ValueError(f"shared_tokens and unshared_tokens: need at least one token (and no negative count), "
                             f"got {shared} and {unshared}")
        if vision is not None and vision.shape[0] != frames:
            raise ValueError(f"vision embeddings: {vision.shape[0]} frames, expected {frames}")
        self.width, self.frames, self.unshared_count = int(width), int(frames), int(unshared)
        self.shared = nn.Parameter(torch.randn(shared, width, generator=generator) * init_std)
        if vision is None:
            self.unshared = nn.Parameter(torch.randn(frames, unshared, width, generator=generator) * init_std)
            self.projection = None
        else:
            dim = vision.shape[1]
            self.register_buffer("vision", vision.detach().float().clone())
            self.projection = nn.Linear(dim, unshared * width)
            with torch.no_grad():
                self.projection.weight.copy_(torch.randn(unshared * width, dim, generator=generator) * init_std
                                             / vision.norm(dim=1).mean().clamp_min(1e-6))
                self.projection.bias.zero_()

    def unshared_tokens(self):
        """[T, U, width]: each frame's own tokens."""
        if self.projection is None:
            return self.unshared
        return self.projection(self.vision).view(self.frames, self.unshared_count, self.width)

    def unshared_parameters(self):
        return [self.unshared] if self.projection is None else list(self.projection.parameters())

    def forward(self):
        """[T, S + U, width]: shared tokens first, then the frame's unshared tokens."""
        shared = self.shared.unsqueeze(0).expand(self.frames, -1, -1)
        return torch.cat([shared, self.unshared_tokens()], dim=1)
