"""Tokens: the host's CLIP tokenizer as the heatmaps and the adapter's token words need it.

The prompt's tokens with their pieces and word ids, and an encoder of words into the token ids they
get inside a prompt; on SDXL the clip_l tokenizer, whose positions the context follows.
"""
import torch


def _clip_tokenizer(clip):
    """(key of its tokens in `clip.tokenize(...)`, the CLIP tokenizer) whose positions the context follows.
    SD1/SD2: the single tokenizer (clip_l / clip_h). SDXL: clip_l; its context is clip_l's and clip_g's
    outputs side by side at the same positions (the same BPE tokens; clip_l pads with the end token)."""
    tokenizer = clip.tokenizer
    if hasattr(tokenizer, "clip"):
        return tokenizer.clip_name, getattr(tokenizer, tokenizer.clip)
    return "l", tokenizer.clip_l


def prompt_tokens(clip, text):
    """The prompt as the host's CLIP tokenizer gives it: ([(token_id, piece, word_id)] over all
    77-token chunks, start token id, end token id). Embeddings (tensors) get id -1."""
    key, inner = _clip_tokenizer(clip)
    chunks = clip.tokenize(text, return_word_ids=True)[key]
    tokens = []
    for chunk in chunks:
        for token, _weight, word_id in chunk:
            if torch.is_tensor(token):
                tokens.append((-1, "<embedding>", word_id))
            else:
                tokens.append((int(token), inner.inv_vocab.get(int(token), "?"), word_id))
    return tokens, inner.start_token, inner.end_token


def token_encoder(clip):
    """encode(text) -> the token ids of `text` as they appear inside a prompt (no start/end)."""
    key = _clip_tokenizer(clip)[0]

    def encode(text):
        chunks = clip.tokenize(text, return_word_ids=True)[key]
        return [int(t) for chunk in chunks for t, _w, word_id in chunk if word_id and not torch.is_tensor(t)]
    return encode
