"""Cross-attention heatmap maths (adapter_core.heatmaps): capture, aggregation, tokens, rendering."""
import pytest
import torch

from temporal_adapter.adapter_core import ddim
from temporal_adapter.adapter_core import heatmaps as hm

START, END = 49406, 49407
# "a red car, motorway" as CLIP pieces: "car," is one word of two tokens, "motorway" two tokens of one word.
PROMPT = [(START, "<|startoftext|>", 0), (320, "a</w>", 1), (736, "red</w>", 2), (1615, "car</w>", 3),
          (267, ",</w>", 3), (9, "motor", 4), (10, "way</w>", 4), (320, "a</w>", 5), (1615, "car</w>", 6)]
PROMPT += [(END, "<|endoftext|>", 0)] * (77 - len(PROMPT))
VOCAB = {"a": [320], "red": [736], "car": [1615], "motorway": [9, 10], "red car": [736, 1615], "bus": [999]}
SIGMAS = ddim.scaled_linear_sigmas(dtype=torch.float32)


def select(spec, shared=0, unshared=0):
    return hm.select_tokens(spec, PROMPT, VOCAB.__getitem__, START, END, shared, unshared)


def options(t=941, chunks=(0,), block=("output", 4)):
    return {"sigmas": SIGMAS[t:t + 1], "cond_or_uncond": list(chunks), "n_heads": 2, "block": block, "block_index": 0}


def test_words_merge_tokens_and_find_every_occurrence():
    assert hm.prompt_words(PROMPT)[:4] == [("a", [1]), ("red", [2]), ("car,", [3, 4]), ("motorway", [5, 6])]
    assert select("car") == [("car", [3, 8])]
    assert select("motorway, red car") == [("motorway", [5, 6]), ("red car", [2, 3])]
    assert [w for w, _ in select("")] == ["a", "red", "car,", "motorway", "a", "car"]


def test_words_come_from_the_tokens_on_every_host():
    """ComfyUI 0.8.0 gives every token of a weighted segment one word id (the 2024 host one per
    space-separated word): the words must come out the same from both."""
    one_id = [(t, piece, 1 if word_id else 0) for t, piece, word_id in PROMPT]
    assert hm.prompt_words(one_id) == hm.prompt_words(PROMPT)
    # a weighted segment "(red car:1.2)" then ", motorway": punctuation joins the word before it
    segments = [(START, "<|startoftext|>", 0), (736, "red</w>", 1), (1615, "car</w>", 1), (267, ",</w>", 2),
                (9, "motor", 2), (10, "way</w>", 2)]
    assert hm.prompt_words(segments) == [("red", [1]), ("car,", [2, 3]), ("motorway", [4, 5])]
    # an embedding's vectors (no word-end mark) make one word; the next id starts a new one
    embedded = [(-1, "<embedding>", 1), (-1, "<embedding>", 1), (320, "a</w>", 2), (-1, "<embedding>", 3)]
    assert hm.prompt_words(embedded) == [("<embedding><embedding>", [0, 1]), ("a", [2]), ("<embedding>", [3])]


def test_words_are_decoded_from_the_bytes_of_their_pieces():
    """CLIP's BPE is byte-level: "café" is the piece "cafÃ©</w>" and one character can span pieces (the
    scooter emoji is "ðŁĽ" + "´</w>", each CJK character three pieces); words read as typed (pieces of
    "a café, naïve 自転 🛴" as the host's CLIP tokenizer gives them)."""
    pieces = ["a</w>", "cafÃ©</w>", ",</w>", "na", "Ã¯", "ve</w>", "è", "ĩ", "ª</w>", "è", "»", "¢</w>", "ðŁĽ", "´</w>"]
    ids = [1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5, 5]
    tokens = [(START, "<|startoftext|>", 0)] + [(100 + i, p, w) for i, (p, w) in enumerate(zip(pieces, ids))]
    assert [w for w, _ in hm.prompt_words(tokens)] == ["a", "café,", "naïve", "自", "転", "🛴"]
    assert hm.prompt_words(tokens)[-1] == ("🛴", [13, 14])
    with pytest.raises(ValueError, match="The prompt's words are: a, café,, naïve, 自, 転, 🛴"):
        hm.select_tokens("bus", tokens, lambda text: [999], START, END)


def test_groups_and_indices_follow_the_adapter_layout():
    sel = dict(select("<shared>, <unshared>, <start>, <end>, #0-1, car", shared=4, unshared=2))
    assert sel["<shared>"] == [0, 1, 2, 3] and sel["<unshared>"] == [4, 5]
    assert sel["<start>"] == [6] and sel["<end>"] == [6 + 9]  # the end token after the words, not padding
    assert sel["#0-1"] == [0, 1] and sel["car"] == [6 + 3, 6 + 8]


@pytest.mark.parametrize("spec,message", [
    ("bus", r"'bus' is not in the prompt. The prompt's words are: a, red, car,, motorway, a, car"),
    ("<shared>", r"shared_tokens is 0"),
    ("#77", r"outside the context's 77 tokens"),
    ("#x", r"cannot read '#x'"),
])
def test_bad_words_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        select(spec)


def test_timesteps_default_to_the_two_nearest_932_and_941():
    schedule = ddim.timesteps_for(SIGMAS, ddim.schedule(SIGMAS, 50)[:-1]).tolist()
    assert schedule[:4] == [981, 961, 941, 921]
    assert hm.choose_timesteps("auto", schedule) == [941, 921]
    assert hm.choose_timesteps("930, 941", schedule) == [941, 921]
    assert hm.choose_timesteps("all", schedule) == schedule
    with pytest.raises(ValueError, match=r"timesteps: 999 is outside the schedule of 50 steps \(981, 961"):
        hm.choose_timesteps("999", schedule)
    with pytest.raises(ValueError, match="cannot read 'late'"):
        hm.choose_timesteps("late", schedule)


@pytest.mark.parametrize("text", ["-3", "0", "982", "nan", "inf", "1e400"])
def test_timesteps_outside_the_schedule_are_refused_with_the_valid_ones(text):
    """The schedule of 50 steps runs from 981 down to 1: inside that span a value snaps to the nearest step,
    outside it (0 and -3 used to snap to 1 without a word) it is refused with the list to choose from."""
    schedule = ddim.timesteps_for(SIGMAS, ddim.schedule(SIGMAS, 50)[:-1]).tolist()
    assert hm.choose_timesteps("1, 980.6, 12", schedule) == [981, 21, 1]
    with pytest.raises(ValueError, match=rf"timesteps: .*{text}.* the schedule of 50 steps \(981, 961, 941, .*, "
                                         r"\.\.\., 41, 21, 1\); choose"):
        hm.choose_timesteps(f"941, {text}", schedule)


def test_block_grid_places_the_queries_of_each_level():
    assert hm.block_grid(64 * 64 // 4, 64, 64) == (32, 32) and hm.block_grid(4 * 2, 7, 3) == (4, 2)


def forced_qk(frames=2, height=8, width=8, heads=2, d=4, token=3, tokens=6, beta=30.0):
    """q, k where every head of the queries in the top-left quadrant attends to `token` (known answer);
    the other queries are zero (uniform attention)."""
    k = torch.randn(frames, tokens, heads * d, generator=torch.Generator().manual_seed(0))
    region = torch.zeros(height, width, dtype=torch.bool)
    region[:height // 2, :width // 2] = True
    q = torch.zeros(frames, height * width, heads * d)
    q[:, region.flatten()] = beta * k[:, token:token + 1] / k[:, token:token + 1].norm(dim=-1, keepdim=True)
    return q, k, region


def test_probabilities_match_a_direct_softmax():
    q, k, _ = forced_qk()
    p = hm.attention_probabilities(q, k, 2, slice(10, 20))
    qh, kh = q.view(2, 64, 2, 4).transpose(1, 2), k.view(2, 6, 2, 4).transpose(1, 2)
    direct = torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, dim=-1)[:, :, 10:20]
    torch.testing.assert_close(p, direct)


def test_known_region_peaks_and_chunking_changes_nothing():
    q, k, region = forced_qk()
    whole = hm.CrossAttentionRecorder([3, 5], (8, 8), [941], SIGMAS)
    tiny = hm.CrossAttentionRecorder([3, 5], (8, 8), [941], SIGMAS, chunk_bytes=1)  # one query at a time
    for rec in (whole, tiny):
        rec(q, k, options())
    maps = hm.normalize_maps(whole.maps([("forced", [3]), ("other", [5])]))
    torch.testing.assert_close(tiny.maps([("x", [3, 5])]), whole.maps([("x", [3, 5])]))
    forced = maps[0, 0]
    assert forced[region].min() > 0.9 and forced[~region].max() < 0.1
    assert maps[1, 0][~region].mean() > maps[1, 0][region].mean()


def test_maps_are_upsampled_from_coarse_blocks_and_averaged():
    q, k, region = forced_qk(height=4, width=4)
    rec = hm.CrossAttentionRecorder([3], (8, 8), [941], SIGMAS)
    rec(q, k, options(block=("output", 1)))
    coarse = rec.maps([("w", [3])])
    assert coarse.shape == (1, 2, 8, 8) and coarse.min() >= 0
    assert coarse[0, 0, :4, :4].mean() > 3 * coarse[0, 0, 4:, 4:].mean()
    q8, k8, _ = forced_qk()
    rec(q8, k8, options(block=("output", 2)))
    assert rec.calls == 2


def test_only_chosen_timesteps_and_the_conditional_half_are_recorded():
    q, k, _ = forced_qk()
    rec = hm.CrossAttentionRecorder([3], (8, 8), [941], SIGMAS)
    rec(q, k, options(t=921))
    rec(q, k, options(chunks=(1,)))
    assert rec.calls == 0
    noise = torch.randn_like(q)
    rec(torch.cat([noise, q]), torch.cat([k.flip(0), k]), options(chunks=(1, 0)))  # uncond first
    reference = hm.CrossAttentionRecorder([3], (8, 8), [941], SIGMAS)
    reference(q, k, options())
    assert rec.calls == 1 and rec.seen == {941}
    torch.testing.assert_close(rec.maps([("w", [3])]), reference.maps([("w", [3])]))


def test_alignment_error_is_the_frobenius_norm_of_adjacent_differences():
    q, k, _ = forced_qk(frames=3)
    q[1] += 0.5 * torch.randn(q.shape[1:], generator=torch.Generator().manual_seed(1))
    k[2] = k[1]
    q[2] = q[1]
    rec = hm.CrossAttentionRecorder([], (8, 8), [941], SIGMAS, chunk_bytes=4096)
    rec(q, k, options())
    rec(q, k, options())
    z = hm.attention_probabilities(q, k, 2, slice(None)).mean(dim=1)
    expected = torch.stack([(z[1] - z[0]).norm(), (z[2] - z[1]).norm()])
    delta = rec.alignment()[("output", 4, 0)]
    torch.testing.assert_close(delta, expected)
    assert delta[1] == 0 and delta[0] > 0
    table = hm.alignment_table([("run", rec.alignment()), ("base", {})])
    assert "output 4" in table and f"{float(expected.mean()):.5f}" in table and "-" in table.splitlines()[1]
    with pytest.raises(ValueError, match="no cross-attention was recorded"):
        rec.maps([("w", [])])


def test_normalisation_per_map_and_per_word():
    maps = torch.stack([torch.linspace(0, 1, 16).view(4, 4), 3 * torch.linspace(0, 1, 16).view(4, 4) + 1,
                        torch.full((4, 4), 2.0)])[None]
    per_map = hm.normalize_maps(maps, "map")
    assert torch.allclose(per_map[0, 0], per_map[0, 1]) and per_map[0, 2].abs().max() == 0
    per_word = hm.normalize_maps(maps, "word")
    assert per_word.min() == 0 and per_word.max() == 1 and per_word[0, 0].max() < per_word[0, 1].max()


def test_rendering_overlay_caption_grid_and_sheet():
    frames = torch.rand(3, 16, 24, 3)
    maps = torch.rand(3, 16, 24)
    assert torch.equal(hm.overlay(frames, maps, alpha=0.0), frames)
    colour = hm.colorize(torch.tensor([[[0.0, 1.0]]]), "jet")
    assert colour[0, 0, 0, 2] > 0.4 and colour[0, 0, 1, 0] > 0.4  # jet: 0 is blue, 1 is red
    tall = torch.rand(3, 96, 64, 3)
    captioned = hm.caption(tall, ["car f1", "car f2", "car f3"])
    changed = (captioned - tall).abs().sum(dim=-1) > 0.02
    assert changed[:, :8].all(dim=0).any() and not changed[:, 40:].any()
    grid = hm.tile(torch.arange(6.0).view(6, 1, 1, 1).expand(6, 2, 2, 1), 2, 3)
    assert grid.shape == (4, 6, 1) and grid[0, 2, 0] == 1 and grid[2, 0, 0] == 3
    sheet = hm.sprite_sheet(frames, 2)
    assert sheet.shape == (32, 48, 3) and sheet.dtype.name == "uint8" and sheet[16:, 24:].max() == 0
    assert hm.resize_images(frames, 0.5).shape == (3, 8, 12, 3) and hm.resize_images(frames, 2) is frames
    assert hm.resize_maps(maps, (8, 12)).shape == (3, 8, 12)
