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
    ["input_ids"]`, `pad_token_id`, `model_max_length`), answered by a tokenizers.Tokenizer."""

    is_fast = True

    def __init__(self, path: Path, pad_token_id: int | None, model_max_length: int | None):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()  # as the HF tokenizer runs it for tokens.py (truncation=False)
        self._tokenizer.no_padding()
        self.pad_token_id, self.model_max_length = pad_token_id, model_max_length

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True, return_attention_mask: bool = False,
                 return_token_type_ids: bool = False, verbose: bool = False) -> dict[str, Any]:
        single = isinstance(texts, str)
        encodings = self._tokenizer.encode_batch([texts] if single else list(texts),
                                                 add_special_tokens=add_special_tokens)
        ids = [e.ids for e in encodings]
        return {"input_ids": ids[0] if single else ids}


def save(hf_tokenizer, path: Path) -> dict[str, Any] | None:
    """Write the Rust tokenizer of `hf_tokenizer` to `path` and what it needs beside it; None (and no file)
    when the two disagree on any probe text, with or without special tokens."""
    path.write_text(hf_tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    info = {"file": path.name, "pad_token_id": hf_tokenizer.pad_token_id,
            "model_max_length": finite(getattr(hf_tokenizer, "model_max_length", None)),
            "sha256": stamps(path.parent, (path.name,))[path.name]}
    ours = TokenizerFile(path, info["pad_token_id"], info["model_max_length"])
    for special in (False, True):
        if ours(PROBE_TEXTS, add_special_tokens=special)["input_ids"] != \
                hf_tokenizer(PROBE_TEXTS, add_special_tokens=special, verbose=False)["input_ids"]:
            path.unlink()
            return None
    return info


def finite(limit: int | None) -> int | None:
    return limit if limit and limit < 1_000_000 else None  # HF's "no limit" is int(1e30)


def stamps(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each of `names` present in `folder`: the files an export's tokenizer and labels came from."""
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in names
            if (folder / name).is_file()}
