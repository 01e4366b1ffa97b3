"""UNet layouts as data: every role gives the method's SD1.5 blocks on the SD1.5 layout, and the blocks of
the same role on the SD2.x, SDXL-family and small test layouts; block names are parsed and checked."""
import pytest

from temporal_adapter.adapter_core.layout import Block, UNetLayout, choose_blocks, names, parse_blocks


def layout_of(channel_mult, num_res_blocks, depth, depth_output, depth_middle, family="SD15", context=768, adm=None):
    """The layout ComfyUI's UNetModel builds from these unet_config entries (openaimodel.UNetModel: per level
    `num_res_blocks` input blocks then a downsample, the middle block, per level reversed `num_res_blocks + 1`
    output blocks, the last one of a level upsampling; depth_output is in the host's order, which its decoder
    pops from the end; depth_middle -1 = no transformer, -2 = no middle block)."""
    blocks, scale, depth, depth_output = [Block("input", 0, 1, 0)], 1, iter(depth), reversed(depth_output)
    for level in range(len(channel_mult)):
        for _ in range(num_res_blocks[level]):
            blocks.append(Block("input", len(blocks), scale, next(depth)))
        if level < len(channel_mult) - 1:
            blocks.append(Block("input", len(blocks), scale, 0))
            scale *= 2
    if depth_middle != -2:
        blocks.append(Block("middle", 0, scale, max(depth_middle, 0)))
    number = 0
    for level in reversed(range(len(channel_mult))):
        for r in range(num_res_blocks[level] + 1):
            blocks.append(Block("output", number, scale, next(depth_output)))
            number += 1
        scale //= 2 if level else 1
    return UNetLayout(tuple(blocks), family, context, adm)


# The host's own configs (comfy/model_detection.py, unet_config_from_diffusers_unet).
SD15 = layout_of([1, 2, 4, 4], [2] * 4, [1, 1, 1, 1, 1, 1, 0, 0], [1] * 9 + [0, 0, 0], 1)
SD21 = layout_of([1, 2, 4, 4], [2] * 4, [1, 1, 1, 1, 1, 1, 0, 0], [1] * 9 + [0, 0, 0], 1, "SD20", 1024)
SDXL = layout_of([1, 2, 4], [2] * 3, [0, 0, 2, 2, 10, 10], [0, 0, 0, 2, 2, 2, 10, 10, 10], 10, "SDXL", 2048, 2816)
VEGA = layout_of([1, 2, 4], [2] * 3, [0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2], -1, "Segmind_Vega", 2048, 2816)
KOALA = layout_of([1, 2, 4], [1] * 3, [0, 2, 5], [0, 0, 2, 2, 5, 5], -2, "KOALA_700M", 2048, 2816)
TINY = layout_of([1], [1], [1], [1, 1], -2)
TWOLEVEL = layout_of([1, 1], [1, 1], [1, 1], [1, 1, 1, 1], 1)


def out(*numbers):
    return [("output", n) for n in numbers]


def test_sd15_roles_are_the_method_blocks():
    assert SD15.attention_blocks() == [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + out(*range(3, 12))
    assert SD15.filter_blocks() == out(9, 10)  # the two highest-resolution decoder blocks
    assert SD15.feature_block() == ("output", 4)  # plug-and-play's feature layer
    assert SD15.decoder_attention_blocks() == out(*range(4, 12))  # the papers' decoder blocks 4-11
    assert SD15.fallback_note() is None and SD15.input_count() == 12
    assert [b.scale for b in SD15.decoder()] == [8] * 3 + [4] * 3 + [2] * 3 + [1] * 3
    # SD2.x has the SD1.5 layout at another width: the same blocks.
    assert SD21.describe() == SD15.describe()


@pytest.mark.parametrize("layout", [SDXL, VEGA], ids=["SDXL", "Segmind_Vega"])
def test_sdxl_family_roles(layout):
    assert layout.attention_blocks() == [("input", i) for i in (4, 5, 7, 8)] + [("middle", 0)] * (
        layout is SDXL) + out(*range(6))
    assert [b.scale for b in layout.decoder()] == [4] * 3 + [2] * 3 + [1] * 3
    assert layout.filter_blocks() == out(3, 4)  # the first two decoder attention blocks at 1/2 size
    assert layout.feature_block() == ("output", 1)  # the second decoder block at 1/4 size
    assert layout.decoder_attention_blocks() == out(1, 2, 3, 4, 5)
    assert layout.depths()[("output", 0)] == (10 if layout is SDXL else 2)


def test_koala_roles_on_one_res_block_per_level():
    assert KOALA.filter_blocks() == out(2, 3)
    assert KOALA.feature_block() == ("output", 1)
    assert KOALA.decoder_attention_blocks() == out(1, 2, 3)


def test_small_test_layouts_fall_back_to_every_decoder_attention_block():
    assert TINY.filter_blocks() == out(0, 1) and TINY.feature_block() == ("output", 1)
    assert TINY.decoder_attention_blocks() == out(0, 1)
    assert TWOLEVEL.filter_blocks() == out(2, 3) and TWOLEVEL.feature_block() == ("output", 3)
    assert TWOLEVEL.decoder_attention_blocks() == out(0, 1, 2, 3)
    assert "no decoder blocks at 1/4 of the latent size" in TWOLEVEL.fallback_note()


def test_choose_blocks_auto_is_the_role_and_text_is_checked():
    assert choose_blocks("auto", SD15, "filter_blocks") == (out(9, 10), None)
    assert choose_blocks("", SDXL, "decoder_attention_blocks") == (out(1, 2, 3, 4, 5), None)
    blocks, note = choose_blocks("auto", TINY, "decoder_attention_blocks")
    assert blocks == out(0, 1) and "1/4" in note
    assert choose_blocks("output 3, 4", SDXL, "filter_blocks") == (out(3, 4), None)
    with pytest.raises(ValueError, match="no attention block 'output 9'. Its attention blocks are: input 4, "):
        choose_blocks("output 9", SDXL, "filter_blocks")
    with pytest.raises(ValueError, match="cannot read 'upper'"):
        parse_blocks("upper", SD15.attention_blocks())
    assert names(out(9, 10)) == "output 9, output 10"
