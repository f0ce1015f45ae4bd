"""Vocabulary trimming for exported transformer students (`n2n export --trim-vocab`).

Embeddings dominate small encoders (11.7M of all-MiniLM-L6-v2's 22.7M parameters) and no layer
removal or shrinking touches them, so they bound a transformer's compression (~1.9x for MiniLM).
A student that only ever sees one task's text needs only the tokens of that text: keep the embedding
rows of the tokens of the words it reads in the training texts (plus the special tokens), and a tokenizer whose
vocabulary is exactly those tokens, in the same order. For WordPiece (greedy longest match) the
trimmed tokenizer splits every training text exactly as before (every piece it chose is still
there, and nothing longer was added); unseen words may split differently or become [UNK], which is
why the export measures validation and test accuracy on texts re-tokenised by the trimmed tokenizer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .data import DataError


def check_trimmable(tokenizer, where: str) -> None:
    """Only transformers' BertTokenizer is rebuilt from a trimmed vocabulary as it tokenised before
    (helper-49, helper-51: a WordPiece tokenizer.json saved by `tokenizers`, loaded as another class, was
    refused as "not WordPiece"; its normaliser and pre-tokeniser are its own, which a trim would drop)."""
    from transformers import BertTokenizer

    if not isinstance(tokenizer, BertTokenizer):
        found = type(tokenizer).__name__ if tokenizer is not None else "no tokenizer"
        raise DataError(f"--trim-vocab: expected a tokenizer that loads as transformers' BertTokenizer (its "
                        f"tokenizer_config.json names that class), found {found} in {where}; n2n rebuilds only that class "
                        f"from a trimmed vocabulary. Export without --trim-vocab, or save the teacher's tokenizer as "
                        f"BertTokenizer(vocab_file) if it tokenises your texts the same")


class Trimmed(NamedTuple):
    tokenizer: object  # the trimmed BertTokenizer
    config: dict  # the config entries the trim changed (vocab size, token ids)
    differ: int  # training texts the trimmed tokenizer splits otherwise than the full one (0 expected)


# config entries naming a token by id: each follows its token to the trimmed vocabulary
TOKEN_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "unk_token_id",
                 "mask_token_id")


def _tokens_read(tokenizer, texts: list[str], max_length: int) -> set[int]:
    """The token ids of every word the student reads of `texts` at `max_length`, whole: a word cut at
    the end kept only its first pieces, so the trimmed vocabulary split it into [UNK] (helper-92);
    the words past it are never read (helper-94: whole texts kept 2.7x the tokens)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # whole texts may be longer than the model reads: no warning of it
    try:
        whole = tokenizer(texts, truncation=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    if not tokenizer.is_fast:  # no word ids (transformers 4's Python BertTokenizer): every word of the texts
        return {i for ids in whole["input_ids"] for i in ids}
    read = tokenizer(texts, truncation=True, max_length=max_length)
    seen = set()
    for n, ids in enumerate(whole["input_ids"]):
        words = {w for w in read.word_ids(n) if w is not None}
        seen.update(i for i, w in zip(ids, whole.word_ids(n)) if w in words)
    return seen


def trim_vocabulary(clf, tokenizer, texts: list[str], max_length: int) -> Trimmed:
    """Trim `clf` (an HFClassifier, in place) to the tokens of the words the student reads of the
    training `texts` (`_tokens_read`), plus the special tokens and those the config names by id."""
    from transformers import BertTokenizer

    from .data import token_ids

    check_trimmable(tokenizer, "the teacher folder")
    model = clf.model
    size = model.config.vocab_size
    named = {getattr(model.config, k, None) for k in TOKEN_ID_KEYS}
    seen = _tokens_read(tokenizer, texts, max_length) | set(tokenizer.all_special_ids)
    kept = sorted(seen | {i for i in named if isinstance(i, int) and 0 <= i < size})  # old ids, in order
    tokens = tokenizer.convert_ids_to_tokens(kept)
    # the normaliser's settings as the teacher's (helper-92: accents and Chinese characters went to defaults)
    new = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=tokenizer.do_lower_case,
                        tokenize_chinese_chars=tokenizer.tokenize_chinese_chars, strip_accents=tokenizer.strip_accents,
                        unk_token=tokenizer.unk_token, sep_token=tokenizer.sep_token, pad_token=tokenizer.pad_token,
                        cls_token=tokenizer.cls_token, mask_token=tokenizer.mask_token,
                        model_max_length=tokenizer.model_max_length)
    old = model.get_input_embeddings()  # (V, H)
    remap = torch.full((size,), -1, dtype=torch.long)  # old id -> new id, -1 where dropped
    remap[torch.tensor(kept)] = torch.arange(len(kept))
    pad = int(remap[tokenizer.pad_token_id])
    emb = nn.Embedding(len(kept), old.embedding_dim, padding_idx=pad)
    emb.weight.data = old.weight.data[torch.tensor(kept)].clone()  # (K, H)
    model.set_input_embeddings(emb)
    config = {"vocab_size": len(kept)}
    for k in TOKEN_ID_KEYS:
        if isinstance(i := getattr(model.config, k, None), int):
            config[k] = int(remap[i]) if 0 <= i < size else None
    for k, v in config.items():
        setattr(model.config, k, v)
    clf.pad_token_id = pad
    # what the student was trained on, in new ids, against the trimmed tokenizer's split of the same texts
    before = remap[torch.as_tensor(token_ids(tokenizer, texts, max_length))]  # (N, T)
    after = torch.as_tensor(token_ids(new, texts, max_length))  # (N, T)
    return Trimmed(new, config, int((before != after).any(1).sum()))
