"""Pure functions the host layer installs as UNet attention patches (method.md §2, §4).

A patch receives the host's `extra_options` dict. The keys used here are part of the UNet's
transformer protocol in every ComfyUI version: "block" (e.g. ("output", 9)), "cond_or_uncond"
(one 0/1 entry per batch chunk: cond chunks first), and "sigmas" (the current σ per sample).
The batch of an attention call is len(cond_or_uncond) chunks of the same frames in the same order.
"""
import torch

from .bilateral import temporal_bilateral


def split_chunks(n, extra_options):
    """[B, N, C] -> list of per-chunk tensors [T, N, C] (one per CFG half / copy)."""
    return n.chunk(len(extra_options.get("cond_or_uncond", [0])))


class SharedPatch:
    """Base of the patch objects that hold state the sampler sets per run (rows, mode, skip, ...). A host
    may deep-copy a model's options whenever it clones the model (the 2024 host does; newer ones copy
    the lists only), and a copy, made by any later clone, would no longer see that state: deep copies of
    these objects are the object itself, so every clone shares it, as on newer hosts."""

    def __deepcopy__(self, memo):
        return self


class TemporalAttn1Filter(SharedPatch):
    """attn1 output patch: bilateral filter along frames, separately within each batch chunk.

    blocks: set of block ids like ("output", 9) to filter; other blocks pass through.
    kernel, sigma_s, sigma_r, relative_sigma_r: as `temporal_bilateral`.
    skipped: set to True when a call had fewer than 3 frames (the filter needs 3; the caller
    reports it instead of failing).
    skip: leading rows of each chunk left unfiltered (a sampler's extra keyframe rows, which are
    not neighbours of the frames after them); 0 filters every row.
    """

    def __init__(self, blocks, kernel=5, sigma_s=1.0, sigma_r=1.0, relative_sigma_r=False):
        self.blocks = {tuple(b) for b in blocks}
        self.kernel, self.sigma_s, self.sigma_r, self.relative = kernel, sigma_s, sigma_r, relative_sigma_r
        self.calls = 0
        self.skipped = False
        self.skip = 0

    def __call__(self, n, extra_options):
        block = extra_options.get("block")
        if block is None or tuple(block) not in self.blocks:
            return n
        out = []
        for chunk in split_chunks(n, extra_options):
            y, applied = temporal_bilateral(chunk[self.skip:], self.kernel, self.sigma_s, self.sigma_r, self.relative)
            self.skipped |= not applied
            out.append(torch.cat([chunk[:self.skip], y]) if self.skip else y)
        self.calls += 1
        return torch.cat(out) if len(out) > 1 else out[0]


def latent_bilateral(diameter=5, sigma_color=0.5, sigma_space=1.5):
    """A `latent_filter` for DDIM inversion: 2-D bilateral per channel on [B, C, H, W] latents.

    sigma_color is in units of each latent's own standard deviation (the latent's scale grows
    with σ during inversion), sigma_space in latent pixels.
    """
    from .bilateral import spatial_bilateral

    def apply(x):
        scale = x.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, *([1] * (x.ndim - 1)))
        return spatial_bilateral(x / scale, diameter, sigma_color, sigma_space) * scale
    return apply


def keyframe_indices(frames, count, stride=0):
    """Frame indices of the shared keyframes: every `stride`-th frame from 0 (at most `count`), or with
    stride 0 `count` frames spread evenly from the first to the last. Raises ValueError naming the
    input when the stride does not fit the clip."""
    if count < 1:
        raise ValueError(f"keyframes: need at least 1 keyframe, got {count}")
    if stride < 0 or stride >= frames > 1:
        raise ValueError(f"keyframe_stride: {stride} does not fit a clip of {frames} frames; use a stride "
                         f"from 1 to {frames - 1}, or 0 to spread the keyframes evenly")
    if stride:
        return list(range(0, frames, stride))[:count]
    count = min(count, frames)
    return sorted({round(i * (frames - 1) / max(count - 1, 1)) for i in range(count)})


def _repeat_chunks(stored, chunks):
    return stored.repeat(chunks, *([1] * (stored.ndim - 1))) if chunks > 1 else stored


class KeyframeAttention(SharedPatch):
    """Extended self-attention (method.md §4), applied after the attn1 projections: within each batch
    chunk (CFG half), every row's keys/values [N, C] get the keyframe rows' projected keys/values
    [K·N, C] appended, so each frame also attends to the keyframes. Appending after the projections
    gives the same attention as appending the keyframes' inputs before them (the projections act per
    token) without projecting the keyframes again for every row. The query is unchanged.

    blocks: block ids to extend (None: every attention block).
    rows: keyframe rows within a chunk, set by the sampler per run; None picks them per call with
    `keyframe_indices(chunk rows, count, stride)` (a SAMPLER that sees only the batch).
    """

    def __init__(self, blocks=None, count=3, stride=0):
        self.blocks = None if blocks is None else {tuple(b) for b in blocks}
        self.count, self.stride = count, stride
        self.rows = None

    def extend(self, k, v, extra_options):
        """Projected keys and values [B, N, C] -> [B, (1 + K)·N, C] each (unchanged outside `blocks`)."""
        block = tuple(extra_options.get("block") or ())
        if self.blocks is not None and block not in self.blocks:
            return k, v
        return self._extend(k, extra_options), self._extend(v, extra_options)

    def _extend(self, t, extra_options):
        """[B, N, C] -> [B, (1 + K)·N, C], written once into one new tensor."""
        chunks = split_chunks(t, extra_options)
        frames, tokens, channels = chunks[0].shape
        rows = self.rows if self.rows is not None else keyframe_indices(frames, self.count, self.stride)
        out = t.new_empty(len(chunks), frames, tokens * (1 + len(rows)), channels)
        out[:, :, :tokens] = t.reshape(len(chunks), frames, tokens, channels)
        for i, chunk in enumerate(chunks):
            out[i, :, tokens:] = chunk[rows].reshape(1, -1, channels)
        return out.view(-1, out.shape[2], channels)


class ContextTokens(SharedPatch):
    """The adapter's tokens in cross-attention (method.md §3) for the cond chunks only, the CONDITIONING
    itself unchanged: the host then still runs the cond and uncond halves as one batch (a positive
    prompt longer than the negative would make it run them one after the other).

    `prepend` (an attn2 patch, before the projections) puts the tokens [T, S + U, W] in front of every
    chunk's context [T, L, W]; `wrap(attend)` (around the attn2 attention, after the projections) drops
    their keys/values again from uncond chunks. A cond chunk thus attends to exactly the [S + U + L]
    context that prepending the tokens to the positive prompt gives; an uncond chunk to its own L.
    tokens: [F, S + U, W], one row per clip frame; rows: the clip frame of each batch row within a chunk
    (set by the sampler per run; None: all F frames in order).
    """

    def __init__(self, tokens):
        self.tokens, self.rows = tokens, None

    def prepend(self, n, context, value, extra_options):
        chunks = len(extra_options.get("cond_or_uncond", [0]))
        tokens = self.tokens if self.rows is None else self.tokens[list(self.rows)]
        tokens = _repeat_chunks(tokens, chunks).to(context)
        if tokens.shape[0] != context.shape[0]:
            raise RuntimeError(f"adapter tokens: {tokens.shape[0]} token rows for a batch of {context.shape[0]}")
        value = context if value is None else value
        return n, torch.cat([tokens, context], 1), torch.cat([tokens.to(value), value], 1)

    def wrap(self, attend):
        """attend(q, k, v, extra_options) -> the same with the tokens' keys/values dropped for uncond chunks."""
        count = self.tokens.shape[1]

        def replace(q, k, v, extra_options):
            flags = list(extra_options.get("cond_or_uncond", [0]))
            if 1 not in flags:
                return attend(q, k, v, extra_options)
            out = []
            for flag, qc, kc, vc in zip(flags, q.chunk(len(flags)), k.chunk(len(flags)), v.chunk(len(flags))):
                skip = count if flag == 1 else 0
                out.append(attend(qc, kc[:, skip:], vc[:, skip:], {**extra_options, "cond_or_uncond": [flag]}))
            return torch.cat(out)
        return replace


class SourceInjection(SharedPatch):
    """Plug-and-play source-feature injection (method.md §4), as UNet patches. The sampler runs a
    source pass (`mode` "record": the source latent of the same frames at the same σ) and then the
    edit pass (`mode` "inject"), whose every batch chunk gets:
    - attention blocks (`attention` on): the source's attn1 input as query and key, the edit's own
      value (the edit keeps the source's self-attention map);
    - feature blocks (`features` on): the source's hidden features entering the output block.
    `mode` None passes everything through. `store` holds one step's source tensors.
    attention_blocks, feature_blocks: block ids (feature blocks are output blocks);
    input_blocks: the UNet's number of input blocks (output block j reads the skip of input block
        input_blocks - 1 - j);
    depths: transformer layers per attention block ({block: count}, 1 where missing).

    Work nobody reads is not done:
    - with features on, the edit's hidden state entering the first feature block is replaced, so
      the blocks that only feed it (`unread`: later input blocks, the middle block, earlier output
      blocks) cannot change the edit: no source attention is recorded or injected there, and with
      `shrink_unread` set (the sampler sets it when no other patch or control reaches inside the
      UNet) the edit pass runs them on a 1x1 latent (`input_block`, an after-skip input block patch);
    - a source pass ends as soon as it has recorded every tensor the step injects (`needed`): the
      patch raises `SourceRecorded` (the caller catches it), so the rest of the UNet is not run.
    """

    def __init__(self, attention_blocks, feature_blocks, input_blocks, depths=None):
        self.attention_blocks = {tuple(b) for b in attention_blocks}
        self.feature_blocks = {tuple(b) for b in feature_blocks}
        self.depths = {tuple(b): d for b, d in (depths or {}).items()}
        self.first_feature = min((number for _, number in self.feature_blocks), default=None)
        self.last_read_input = None if self.first_feature is None else input_blocks - 1 - self.first_feature
        self.shrink_unread = False
        self.mode = None
        self.attention = self.features = False
        self.store = {}

    def unread(self, block):
        """Whether, in this step, the edit's output does not depend on what `block` computes."""
        if not self.features or self.first_feature is None:
            return False
        kind, number = block
        return (kind == "middle" or (kind == "output" and number < self.first_feature)
                or (kind == "input" and number > self.last_read_input))

    def needed(self):
        """The store keys this step's switches inject."""
        keys = {("features", *b) for b in self.feature_blocks} if self.features else set()
        if self.attention:
            keys |= {("attn1", *b, i) for b in self.attention_blocks if not self.unread(b)
                     for i in range(self.depths.get(b, 1))}
        return keys

    def _swap(self, key, x, chunks):
        if self.mode == "record":
            self.store[key] = x
            if self.needed() <= self.store.keys():
                raise SourceRecorded
            return x
        stored = self.store[key]
        if stored.shape[0] * chunks != x.shape[0]:
            raise RuntimeError(f"source injection: source batch {stored.shape[0]} x {chunks} chunks does not match "
                               f"the edit batch {x.shape[0]}")
        return _repeat_chunks(stored, chunks).to(x)

    def attn1(self, n, context, value, extra_options):
        block = tuple(extra_options.get("block") or ())
        if self.mode is None or not self.attention or block not in self.attention_blocks or self.unread(block):
            return n, context, value
        chunks = len(extra_options.get("cond_or_uncond", [0]))
        source = self._swap(("attn1", *block, extra_options.get("block_index", 0)), n, chunks)
        return source, source, n if value is None else value

    def output_block(self, h, hsp, transformer_options):
        block = tuple(transformer_options.get("block") or ())
        if self.mode is not None and self.features and block in self.feature_blocks:
            h = self._swap(("features", *block), h, len(transformer_options.get("cond_or_uncond", [0])))
        return h, hsp

    def input_block(self, h, transformer_options):
        """After-skip input block patch: in an edit pass with `shrink_unread`, the hidden state [B, C, H, W]
        leaving the last input block read by a feature block becomes its [B, C, 1, 1] corner (the batch
        stays, so the timestep embedding still adds; its skip was already stored at full size)."""
        if (self.mode == "inject" and self.shrink_unread and self.features
                and tuple(transformer_options.get("block") or ()) == ("input", self.last_read_input)):
            return h[:, :, :1, :1]
        return h


class SourceRecorded(Exception):
    """Raised by `SourceInjection` to end a source pass once it has recorded what the edit needs."""
