"""Cross-attention heatmaps, DAAM style (method.md §5).

A recorder receives the projected query/key of a cross-attention (attn2) call and keeps, on the
fly, only what the figures need:
- per selected context token, softmax(QKᵀ/√d) of each head, upsampled to the latent grid (bicubic),
  clamped ≥ 0, averaged over heads, then summed over calls (layers × timesteps): [T, K, H, W];
- per block and per pair of adjacent frames, ‖Z_{t+1} − Z_t‖_F of the head-averaged attention
  matrix Z [queries, context tokens] of each call (the theory paper's alignment error ‖ΔZ‖_F),
  summed over calls of that block.
The probabilities are computed in chunks of queries, so a call never holds more than
`chunk_bytes` of them; nothing grows with the number of steps or layers.

Token layout of a context (method.md §3): S shared adapter tokens, U unshared (per-frame) tokens,
then the prompt's CLIP tokens (77 per chunk: start token, words, end token, padding).
Tokens are selected by word, by context index (#5, #3-7) or by group (<shared>, <unshared>,
<start>, <end>).
"""
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .ddim import timesteps_for

DEFAULT_TIMESTEPS = (932, 941)  # the theory paper's figure
COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
             "viridis": cv2.COLORMAP_VIRIDIS}
GROUPS = ("<shared>", "<unshared>", "<start>", "<end>")
CHUNK_BYTES = 64 << 20
EPS = 1e-12


# ---- tokens -------------------------------------------------------------------------------------

def _byte_level_alphabet():
    """{character: byte} of CLIP's byte-level BPE (OpenAI CLIP's simple_tokenizer.bytes_to_unicode, as in
    GPT-2): printable Latin-1 bytes stand for themselves, the other bytes for the characters from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


_BYTE_OF = _byte_level_alphabet()


def decode_pieces(text):
    """The text that joined byte-level BPE pieces stand for ("cafÃ©" -> "café", "ðŁĽ´" -> "🛴"); a
    character outside the alphabet (e.g. "<embedding>") is kept as it is."""
    data = b"".join(bytes([_BYTE_OF[c]]) if c in _BYTE_OF else c.encode() for c in text)
    return data.decode("utf-8", errors="replace")


def prompt_words(tokens):
    """Words of a tokenised prompt: [(text, [positions in the prompt])], in order.

    tokens: [(token_id, piece, word_id)] over all 77-token chunks, as the host's tokenizer gives
    them (word_id 0 = start/end/padding; CLIP pieces end a word with "</w>").
    Word boundaries come from the tokens themselves, so every host gives the same words: a word ends
    with a piece that CLIP's BPE marks as a word end ("</w>") or where the word id changes (an
    embedding's vectors share one id and carry no mark); a piece of punctuation joins the word before
    it ("car," as typed). Word ids alone are not enough: ComfyUI 0.8.0 gives a whole weighted segment
    of the prompt one id. A word's text is decoded from its pieces' bytes (one character may span
    pieces), so "café" and "🛴" read as typed.
    """
    words = []
    previous_id, ended = None, True
    for position, (_, piece, word_id) in enumerate(tokens):
        if not word_id:
            continue
        text = piece.replace("</w>", "")
        punctuation = bool(text) and not any(c.isalnum() for c in text) and not piece.startswith("<")
        if words and (punctuation or (not ended and word_id == previous_id)):
            words[-1][0] += text
            words[-1][1].append(position)
        else:
            words.append([text, [position]])
        previous_id, ended = word_id, piece.endswith("</w>")
    return [(decode_pieces(text), positions) for text, positions in words]


def _find(sequence, ids):
    """Start positions where `ids` occurs in `sequence`."""
    n = len(ids)
    return [i for i in range(len(sequence) - n + 1) if n and sequence[i:i + n] == ids]


def _index_range(entry, context_len):
    try:
        lo, _, hi = entry[1:].partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise ValueError(f"words: cannot read {entry!r}; write a context index as #5 or a range as #5-8") from None
    if not 0 <= lo <= hi < context_len:
        raise ValueError(f"words: {entry} is outside the context's {context_len} tokens (#0-{context_len - 1})")
    return list(range(lo, hi + 1))


def select_tokens(spec, tokens, encode, start_id, end_id, shared=0, unshared=0):
    """Parse the `words` input into [(label, [context indices])].

    spec: comma-separated entries: a word or phrase of the prompt (all its occurrences, multi-token
        words merged), "#i" / "#i-j" (context indices), or a group <shared>, <unshared>, <start>,
        <end>. Empty: every word of the prompt.
    tokens: the prompt's [(token_id, piece, word_id)] (see `prompt_words`); encode(text) -> the
        token ids the host's tokenizer gives `text` (no start/end tokens).
    shared, unshared: adapter tokens prepended to the prompt (context index = S + U + position).
    Raises ValueError naming the entry and listing the prompt's words.
    """
    offset = shared + unshared
    context_len = offset + len(tokens)
    ids = [t[0] for t in tokens]
    words = prompt_words(tokens)
    listing = ", ".join(w for w, _ in words) or "(none)"
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if not entries:
        if not words:
            raise ValueError("words: the prompt has no words; name a token group such as <start> or an index #0")
        return [(w, [offset + i for i in pos]) for w, pos in words]
    out = []
    for entry in entries:
        key = entry.lower()
        if key == "<shared>" or key == "<unshared>":
            count, first = (shared, 0) if key == "<shared>" else (unshared, shared)
            if not count:
                raise ValueError(f"words: {entry} selects the adapter's {key[1:-1]} tokens, but "
                                 f"{key[1:-1]}_tokens is 0; set it to the adapter's token count")
            out.append((entry, list(range(first, first + count))))
        elif key == "<start>":
            out.append((entry, [offset + i for i, t in enumerate(ids) if t == start_id]))
        elif key == "<end>":  # the end token after the words of each chunk, not the padding
            out.append((entry, [offset + i for i, t in enumerate(ids) if t == end_id and (i == 0 or ids[i - 1] != end_id)]))
        elif key.startswith("#"):
            out.append((entry, _index_range(key, context_len)))
        else:
            wanted = list(encode(entry))
            found = _find(ids, wanted)
            if not found:
                raise ValueError(f"words: {entry!r} is not in the prompt. The prompt's words are: {listing}. "
                                 f"Groups: {', '.join(GROUPS)}; indices: #0-{context_len - 1}")
            out.append((entry, [offset + s + j for s in found for j in range(len(wanted))]))
    return out


# ---- timesteps -----------------------------------------------------------------------------

def choose_timesteps(text, schedule_timesteps):
    """Timesteps to capture, as schedule entries (ints, descending).

    text: "auto" (or empty): the two schedule steps nearest to 932 and 941 (the theory paper's
        figure); "all": every step; else comma-separated training timesteps, each one inside the
        schedule's span snapped to the nearest schedule step.
    schedule_timesteps: the run's timesteps (descending ints).
    A value outside the span (below the schedule's lowest step or above its highest, e.g. 0 or -3
    for a schedule ending at 1) or not a number raises ValueError listing the schedule.
    """
    schedule = [int(t) for t in schedule_timesteps]
    key = text.strip().lower()
    if key in ("", "auto"):
        ranked = sorted(schedule, key=lambda t: (min(abs(t - d) for d in DEFAULT_TIMESTEPS), -t))
        return sorted(ranked[:2], reverse=True)
    if key == "all":
        return schedule
    listing = _listing(schedule)
    chosen = set()
    for part in filter(None, (p.strip() for p in key.replace(";", ",").split(","))):
        try:
            value = round(float(part))
        except (ValueError, OverflowError):  # not a number, or nan / inf
            raise ValueError(f"timesteps: cannot read {part!r} as a step of the schedule of {len(schedule)} steps "
                             f"({listing}); choose from these, or 'auto' / 'all'") from None
        if not min(schedule) <= value <= max(schedule):
            raise ValueError(f"timesteps: {part} is outside the schedule of {len(schedule)} steps "
                             f"({listing}); choose from these, or 'auto' / 'all'")
        chosen.add(min(schedule, key=lambda t: abs(t - value)))
    if not chosen:
        raise ValueError("timesteps: empty; write e.g. '941, 921', 'auto' or 'all'")
    return sorted(chosen, reverse=True)


def _listing(schedule, head=24):
    """The schedule's timesteps as text, the middle elided when there are more than `head`."""
    if len(schedule) <= head:
        return ", ".join(map(str, schedule))
    return f"{', '.join(map(str, schedule[:head - 4]))}, ..., {', '.join(map(str, schedule[-3:]))}"


def block_grid(tokens, height, width):
    """(h, w) of a UNet block with `tokens` spatial positions for a latent of height × width
    (each level halves the size, rounding up)."""
    for level in range(8):
        h, w = math.ceil(height / 2 ** level), math.ceil(width / 2 ** level)
        if h * w == tokens:
            return h, w
    raise ValueError(f"cannot place {tokens} attention queries on a {height}x{width} latent grid")


# ---- capture ------------------------------------------------------------------------------------

def attention_probabilities(q, k, heads, rows):
    """softmax(QKᵀ/√d) in float32 for query rows `rows` (a slice): [B, heads, len(rows), M]."""
    b, _, inner = q.shape
    d = inner // heads
    qh = q[:, rows].float().reshape(b, -1, heads, d).transpose(1, 2)
    kh = k.float().reshape(b, -1, heads, d).transpose(1, 2)
    return torch.softmax(qh @ kh.transpose(-1, -2) * d ** -0.5, dim=-1)


class CrossAttentionRecorder:
    """Called as record(q, k, extra_options) from an attn2 replace patch (read-only).

    token_index: context indices whose maps are kept (may be empty: alignment only).
    grid: (H, W) latent size; timesteps: training timesteps to record (others are skipped);
    model_sigmas: the model's ascending sigmas (to read the timestep of a call).
    Only the first conditional chunk of a call is recorded (cond_or_uncond == 0).
    """

    def __init__(self, token_index, grid, timesteps, model_sigmas, chunk_bytes=CHUNK_BYTES):
        self.tokens = list(token_index)
        self.grid = tuple(grid)
        self.timesteps = {int(t) for t in timesteps}
        self.model_sigmas = model_sigmas.float().cpu()
        self.chunk_bytes = chunk_bytes
        self.sum = None
        self.calls = 0
        self.seen = set()
        self.delta = {}  # block -> [sum over calls of ‖ΔZ‖_F per pair [T-1], calls]

    def __call__(self, q, k, extra_options):
        sigma = extra_options["sigmas"].detach().flatten()[:1].float().cpu()
        t = int(timesteps_for(self.model_sigmas, sigma)[0])
        chunks = list(extra_options.get("cond_or_uncond", [0]))
        if t not in self.timesteps or 0 not in chunks:
            return
        frames = q.shape[0] // len(chunks)
        lo = chunks.index(0) * frames
        self.record(q[lo:lo + frames], k[lo:lo + frames], extra_options["n_heads"],
                    tuple(extra_options.get("block") or ("?", 0)) + (extra_options.get("block_index", 0),))
        self.seen.add(t)

    def record(self, q, k, heads, block):
        frames, queries, _ = q.shape
        if self.tokens and max(self.tokens) >= k.shape[1]:
            raise ValueError(f"selected token #{max(self.tokens)} but the conditioning has {k.shape[1]} tokens")
        step = max(1, self.chunk_bytes // (4 * frames * heads * k.shape[1]))
        picked, delta_sq = [], q.new_zeros(max(frames - 1, 0), dtype=torch.float32)
        for start in range(0, queries, step):
            p = attention_probabilities(q, k, heads, slice(start, start + step))
            picked.append(p[..., self.tokens])
            z = p.mean(dim=1)
            delta_sq += (z[1:] - z[:-1]).square().flatten(1).sum(dim=1)
            del p, z
        norms = delta_sq.sqrt().cpu()
        total, count = self.delta.get(block, (torch.zeros_like(norms), 0))
        self.delta[block] = (total + norms, count + 1)
        self.calls += 1
        if self.tokens:
            self._add_maps(torch.cat(picked, dim=2), queries)

    def _add_maps(self, probs, queries):
        """probs [T, heads, N, K] -> upsampled per head (bicubic), clamped, head mean, summed."""
        frames, heads, _, count = probs.shape
        h, w = block_grid(queries, *self.grid)
        maps = probs.permute(0, 1, 3, 2).reshape(frames * heads, count, h, w)
        maps = F.interpolate(maps, size=self.grid, mode="bicubic", align_corners=False).clamp_min(0)
        maps = maps.view(frames, heads, count, *self.grid).mean(dim=1).cpu()
        self.sum = maps if self.sum is None else self.sum + maps

    def maps(self, words):
        """Per word ([(label, indices)] with indices among `token_index`): [words, T, H, W], the
        mean over heads, layers and timesteps (not yet normalised)."""
        if self.sum is None:
            raise ValueError("no cross-attention was recorded: the chosen blocks or timesteps never ran")
        mean = self.sum / self.calls
        where = {t: i for i, t in enumerate(self.tokens)}
        return torch.stack([mean[:, [where[i] for i in idx]].mean(dim=1) for _, idx in words])

    def alignment(self):
        """{block: per-pair mean ‖Z_{t+1} − Z_t‖_F over the recorded calls [T-1]}."""
        return {block: total / count for block, (total, count) in self.delta.items()}


def normalize_maps(maps, per="map"):
    """Min-max normalise [words, T, H, W] to 0..1 per map ("map") or per word across frames
    ("word"); a constant map becomes 0."""
    dims = (-2, -1) if per == "map" else (-3, -2, -1)
    lo = maps.amin(dim=dims, keepdim=True)
    hi = maps.amax(dim=dims, keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(EPS) * (hi > lo + EPS)


# ---- rendering ----------------------------------------------------------------------------------

def resize_maps(maps, size):
    """[..., H, W] -> [..., h, w] (bilinear), clamped to 0..1."""
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=tuple(size), mode="bilinear",
                        align_corners=False)
    return out.reshape(*lead, *size).clamp(0, 1)


def colorize(maps, colormap="jet"):
    """[N, H, W] in 0..1 -> [N, H, W, 3] RGB float 0..1 through an OpenCV colour map."""
    u8 = (maps.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    rgb = [cv2.cvtColor(cv2.applyColorMap(m, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB) for m in u8]
    return torch.from_numpy(np.stack(rgb)).float() / 255.0


def caption(images, texts):
    """Draw one caption per image at its top-left on a dark band: [N, H, W, 3] float 0..1."""
    out = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy().copy()
    height = out.shape[1]
    scale = max(0.3, height / 320)
    thickness = max(1, round(scale * 1.5))
    for image, text in zip(out, texts):
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        pad = max(2, h // 3)
        band = image[:h + base + 2 * pad, :w + 2 * pad]
        band[:] = band // 3
        cv2.putText(image, text, (pad, pad + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return torch.from_numpy(out).float() / 255.0


def overlay(frames, maps, alpha=0.5, colormap="jet"):
    """Colour-mapped maps over frames: (1 − α)·frame + α·colour. frames [T, h, w, 3]; maps [T, h, w]."""
    return (1 - alpha) * frames.float() + alpha * colorize(maps, colormap)


def resize_images(images, scale):
    """[N, H, W, C] scaled down by `scale` (area averaging); unchanged when scale >= 1."""
    if scale >= 1:
        return images
    size = (max(1, round(images.shape[1] * scale)), max(1, round(images.shape[2] * scale)))
    return F.interpolate(images.permute(0, 3, 1, 2), size=size, mode="area").permute(0, 2, 3, 1)


def sprite_sheet(frames, columns):
    """[T, H, W, 3] float 0..1 -> one uint8 array of the frames row by row, `columns` wide (the last
    row padded with black)."""
    rows = math.ceil(frames.shape[0] / columns)
    padded = torch.cat([frames, frames.new_zeros(rows * columns - frames.shape[0], *frames.shape[1:])])
    return (tile(padded, rows, columns).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def tile(images, rows, cols):
    """[rows·cols, H, W, C] (row-major) -> one [rows·H, cols·W, C] grid image."""
    _, h, w, c = images.shape
    return images.reshape(rows, cols, h, w, c).permute(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def _mean(values):
    values = [v for v in values if v.numel()]
    return float(torch.cat(values).mean()) if values else float("nan")


def alignment_table(runs):
    """Text table of the mean ‖ΔZ‖_F over adjacent frame pairs, per block (rows) and run (columns):
    runs = [(label, {block: [T-1]})]; "-" where a run lacks the block or has a single frame."""
    blocks = sorted({b for _, table in runs for b in table}, key=lambda b: (b[0] != "input", b[0], b[1], b[2]))
    rows = [(f"{b[0]} {b[1]}" + (f".{b[2]}" if b[2] else ""), [_mean([t[b]] if b in t else []) for _, t in runs])
            for b in blocks]
    rows.append(("mean", [_mean(list(t.values())) for _, t in runs]))
    lines = [f"{'block':<16}" + "".join(f"{label:>18}" for label, _ in runs)]
    lines += [f"{name:<16}" + "".join(f"{v:>18.5f}" if v == v else f"{'-':>18}" for v in values)
              for name, values in rows]
    return "\n".join(lines)
