"""A model's tokenizer run by the `tokenizers` library alone, for the ONNX path.

Importing transformers' tokenizer classes costs 2-4 s of start-up (they import torch and the model zoo's
registries); the Rust tokenizer underneath them loads in milliseconds. `finetune-bert export` saves the
exact tokenizer the Hugging Face one runs (its `backend_tokenizer`) beside the graph, and checks on a set
of awkward texts that both give the same ids; only then does `load(..., backend="onnx")` use this one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

FILE = "tokenizer.json"
# Texts whose ids the two tokenizers must agree on: case, accents, scripts without spaces, emoji, markup,
# numbers, odd whitespace and control characters, and one long text (no truncation may creep in).
PROBE_TEXTS = [
    "I loved this movie!", "WORST. FILM. EVER.", "Café au lait, naïve façade, Ångström, Straße",
    "これは素晴らしい映画でした。", "这部电影很好看", "Фильм отличный", "Great 👍🏽🎬 !!!",
    "<br /><br />Not bad &amp; not great", "It's 10/10, $5.99 - 3.5 stars (or 2,000 votes)",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em space", "zero\u200bwidth \ufeffbom \x07bell",
    "don't can't won't y'all", "UPPERCASE lowercase MiXeD", " ", "a",
    " ".join(["a long review that goes on and on"] * 300),
]


class TokenizerFile:
    """The calls tokens.py makes of a Hugging Face tokenizer (`tok(texts, add_special_tokens=...)
    ["input_ids"]`, a text pair `tok(first, second)` with its "token_type_ids", `pad_token_id`,
    `model_max_length`), answered by a tokenizers.Tokenizer. `type_ids`: whether the Hugging Face tokenizer
    gives token type ids unasked (its model_input_names name them), as BERT's does and RoBERTa's does not."""

    is_fast = True

    def __init__(self, path: Path, pad_token_id: int | None, model_max_length: int | None, type_ids: bool = True):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()  # as the HF tokenizer runs it for tokens.py (truncation=False)
        self._tokenizer.no_padding()
        self.pad_token_id, self.model_max_length = pad_token_id, model_max_length
        self.model_input_names = ["input_ids", *(["token_type_ids"] if type_ids else []), "attention_mask"]

    def __call__(self, texts: str | list[str], text_pair: str | list[str] | None = None, *,
                 add_special_tokens: bool = True, return_attention_mask: bool = False,
                 return_token_type_ids: bool | None = None, verbose: bool = False) -> dict[str, Any]:
        single = isinstance(texts, str)
        if text_pair is None:
            inputs = [texts] if single else list(texts)
        else:
            inputs = [(texts, text_pair)] if single else list(zip(texts, text_pair, strict=True))
        encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        out = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids or (return_token_type_ids is None and "token_type_ids" in self.model_input_names):
            out["token_type_ids"] = [e.type_ids for e in encodings]
        return {key: value[0] if single else value for key, value in out.items()}


def save(hf_tokenizer, path: Path) -> dict[str, Any] | None:
    """Write the Rust tokenizer of `hf_tokenizer` to `path` and what it needs beside it; None (and no file)
    when the two disagree on any probe text, with or without special tokens, or on a pair of probe texts."""
    path.write_text(hf_tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    info = {"file": path.name, "pad_token_id": hf_tokenizer.pad_token_id,
            "model_max_length": finite(getattr(hf_tokenizer, "model_max_length", None)),
            "type_ids": "token_type_ids" in getattr(hf_tokenizer, "model_input_names", ()),
            "sha256": stamps(path.parent, (path.name,))[path.name]}
    ours = TokenizerFile(path, info["pad_token_id"], info["model_max_length"], info["type_ids"])
    same = all(ours(PROBE_TEXTS, add_special_tokens=special)["input_ids"] ==
               hf_tokenizer(PROBE_TEXTS, add_special_tokens=special, verbose=False)["input_ids"]
               for special in (False, True))
    if not (same and _same_pairs(ours, hf_tokenizer)):
        path.unlink()
        return None
    return info


def _same_pairs(ours: TokenizerFile, hf_tokenizer) -> bool:
    """Both give the same ids and token type ids for text pairs (each probe text with the next one)."""
    keys = ("input_ids", "token_type_ids")
    mine = ours(PROBE_TEXTS[:-1], PROBE_TEXTS[1:])
    theirs = hf_tokenizer(PROBE_TEXTS[:-1], PROBE_TEXTS[1:], verbose=False)
    return all(mine.get(key) == (list(theirs[key]) if key in theirs else None) for key in keys)


def finite(limit: int | None) -> int | None:
    return limit if limit and limit < 1_000_000 else None  # HF's "no limit" is int(1e30)


def stamps(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each of `names` present in `folder`: the files an export's tokenizer and labels came from."""
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names
            if (folder / name).is_file()}
