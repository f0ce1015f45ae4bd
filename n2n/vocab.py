"""Vocabulary trimming for exported transformer students (`n2n export --trim-vocab`).

Embeddings dominate small encoders (11.7M of all-MiniLM-L6-v2's 22.7M parameters) and no layer
removal or shrinking touches them, so they bound a transformer's compression (~1.9x for MiniLM).
A student that only ever sees one task's text needs only the tokens of that text: keep the embedding
rows of the tokens that occur in the training split (plus the special tokens), and a tokenizer whose
vocabulary is exactly those tokens, in the same order. For WordPiece (greedy longest match) the
trimmed tokenizer splits every training text exactly as before (every piece it chose is still
there, and nothing longer was added); unseen words may split differently or become [UNK], which is
why the export measures validation and test accuracy on texts re-tokenised by the trimmed tokenizer.
"""

from __future__ import annotations

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


def trim_vocabulary(clf, tokenizer, train_ids: torch.Tensor):
    """Trim `clf` (an HFClassifier, in place) to the tokens in `train_ids` (N, T) plus special tokens.
    Returns the matching tokenizer."""
    from transformers import BertTokenizer

    check_trimmable(tokenizer, "the teacher folder")
    kept = sorted(set(train_ids.unique().tolist()) | set(tokenizer.all_special_ids))  # old ids, in order
    tokens = tokenizer.convert_ids_to_tokens(kept)
    new = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=tokenizer.do_lower_case,
                        unk_token=tokenizer.unk_token, sep_token=tokenizer.sep_token, pad_token=tokenizer.pad_token,
                        cls_token=tokenizer.cls_token, mask_token=tokenizer.mask_token,
                        model_max_length=tokenizer.model_max_length)
    model = clf.model
    old = model.get_input_embeddings()  # (V, H)
    pad = kept.index(tokenizer.pad_token_id)
    emb = nn.Embedding(len(kept), old.embedding_dim, padding_idx=pad)
    emb.weight.data = old.weight.data[torch.tensor(kept)].clone()  # (K, H)
    model.set_input_embeddings(emb)
    model.config.vocab_size, model.config.pad_token_id = len(kept), pad
    clf.pad_token_id = pad
    return new
