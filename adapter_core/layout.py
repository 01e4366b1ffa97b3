"""UNet layouts as data, and the blocks each mechanism uses, chosen by their role in the layout.

A `UNetLayout` lists the blocks of a ComfyUI UNet in forward order — ("input", i), ("middle", 0),
("output", j) — each with the scale of the grid its layers work on (1 = the latent's size, 2 = half
of it, 4 = a quarter, ...) and its number of transformer layers (0: no attention), plus the
model's family, context (text) width and ADM width. The host layer reads it from the loaded model
(`nodes.host.unet_layout`); this module never sees a model.

The method papers name SD1.5 blocks; each name is a role here (SD1.5 and SD2.x numbering first,
then the SDXL family, whose three levels sit at scales 1, 2, 4, attention at 2 and 4 only):

=========================  ======================================================  ================  ==============
role                       definition                                              SD1.x / SD2.x     SDXL family
=========================  ======================================================  ================  ==============
attention blocks           every block with transformer layers                     input 1,2,4,5,    input 4,5,7,8,
                                                                                   7,8, middle,      middle,
                                                                                   output 3-11       output 0-5
filter blocks (§2, §4)     the two highest-resolution decoder attention blocks     output 9, 10      output 3, 4
feature block (§4)         plug-and-play's "layer 4": the second decoder block at  output 4          output 1
                           1/4 of the latent size
decoder attention          the decoder attention blocks from the feature block on  output 4-11       output 1-5
(§3 loss, §4 injection,    (the papers' "decoder blocks 4-11")
§5 heatmaps)
=========================  ======================================================  ================  ==============

A layout without a decoder level at 1/4 of the latent size (the small test UNets) has no "layer 4":
there the decoder attention is every decoder attention block and the feature block the last one.
Every role covers all transformer layers of a block (patches act per block, on each of its layers;
captures key them by (kind, number, transformer index)).
"""
from dataclasses import dataclass

FEATURE_SCALE = 4  # plug-and-play's feature layer works on a grid of 1/4 of the latent's size
FILTER_COUNT = 2


@dataclass(frozen=True)
class Block:
    """kind: "input" | "middle" | "output"; number: its index among the blocks of that kind; scale: the
    latent size over the size of the grid its layers work on; depth: its transformer layers."""
    kind: str
    number: int
    scale: int
    depth: int

    @property
    def id(self):
        return (self.kind, self.number)


@dataclass(frozen=True)
class UNetLayout:
    """blocks: every block in forward order; family: the host's model class name (e.g. "SD15", "SDXL");
    context_dim: the cross-attention context width (768 SD1.x, 1024 SD2.x, 2048 SDXL);
    adm_channels: the width of the ADM vector `y` (None without; 2816 for SDXL)."""
    blocks: tuple
    family: str
    context_dim: int
    adm_channels: int | None = None

    # ---- data -------------------------------------------------------------------------------
    def attention_blocks(self):
        """Block ids with transformer layers, in forward order."""
        return [b.id for b in self.blocks if b.depth]

    def depths(self):
        """{block id: transformer layers} of the attention blocks, in forward order."""
        return {b.id: b.depth for b in self.blocks if b.depth}

    def input_count(self):
        """Number of input blocks (output block j reads the skip of input block count - 1 - j)."""
        return sum(b.kind == "input" for b in self.blocks)

    def decoder(self, attention=False):
        """The output blocks in order (only those with transformer layers when `attention`)."""
        return [b for b in self.blocks if b.kind == "output" and (b.depth or not attention)]

    # ---- roles ------------------------------------------------------------------------------
    def filter_blocks(self):
        """The two highest-resolution decoder attention blocks (in decoder order on ties): where the
        temporal bilateral filter acts on attn1 outputs (method.md §2)."""
        ranked = sorted(self.decoder(attention=True), key=lambda b: (b.scale, b.number))
        return sorted(b.id for b in ranked[:FILTER_COUNT])

    def _feature_level(self):
        return [b for b in self.decoder() if b.scale == FEATURE_SCALE]

    def feature_block(self):
        """Plug-and-play's feature layer (decoder "layer 4"): the second decoder block on a grid of 1/4 of
        the latent's size (or the level's only one); without such a level, the last decoder attention block."""
        level = self._feature_level()
        if level:
            return level[min(1, len(level) - 1)].id
        return self.decoder(attention=True)[-1].id

    def decoder_attention_blocks(self):
        """The papers' "decoder blocks 4-11": the decoder attention blocks from the feature block on (the
        temporal loss's features, source attention injection, heatmaps); without a decoder level at 1/4 of
        the latent size, every decoder attention block."""
        blocks = self.decoder(attention=True)
        if self._feature_level():
            first = self.feature_block()[1]
            blocks = [b for b in blocks if b.number >= first]
        return [b.id for b in blocks]

    def fallback_note(self):
        """A sentence for reports when this layout has no decoder level at 1/4 of the latent size, else None."""
        if self._feature_level():
            return None
        return (f"this {self.family} UNet has no decoder blocks at 1/4 of the latent size (plug-and-play's layer 4); "
                f"decoder attention roles use every decoder attention block")

    def describe(self):
        """One line per role, for reports and docs: e.g. "filter blocks: output 9, output 10"."""
        return {"attention blocks": names(self.attention_blocks()), "filter blocks": names(self.filter_blocks()),
                "feature block": names([self.feature_block()]),
                "decoder attention": names(self.decoder_attention_blocks())}


def parse_blocks(text, available):
    """Parse "output 9, output 10" (or "9, 10" for output blocks) into block ids, checked against
    `available` (the model's blocks with attention); raises ValueError listing what exists."""
    blocks = []
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        words = part.replace("_", " ").split()
        try:
            block = (words[0].lower(), int(words[1])) if len(words) == 2 else ("output", int(words[0]))
        except (ValueError, IndexError):
            raise ValueError(f"blocks: cannot read {part!r}; write e.g. 'output 9, output 10'") from None
        if block not in available:
            raise ValueError(f"blocks: the model has no attention block '{block[0]} {block[1]}'. "
                             f"Its attention blocks are: {names(available)}")
        blocks.append(block)
    if not blocks:
        raise ValueError("blocks: empty; name at least one block, e.g. 'output 9, output 10'")
    return blocks


def choose_blocks(text, layout, role):
    """(block ids, note) for a node's blocks input: "auto" (or empty) -> the layout's `role` (a method name:
    "filter_blocks", "decoder_attention_blocks", "attention_blocks"), with the layout's `fallback_note` for
    the decoder attention role; else (`parse_blocks` against the layout's attention blocks, None)."""
    if text.strip().lower() not in ("", "auto"):
        return parse_blocks(text, layout.attention_blocks()), None
    return getattr(layout, role)(), layout.fallback_note() if role == "decoder_attention_blocks" else None


def names(ids):
    """"output 9, output 10" for [("output", 9), ("output", 10)]."""
    return ", ".join(f"{kind} {number}" for kind, number in ids)
