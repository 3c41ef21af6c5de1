"""The tokens stage, one for train, tune and inspect: the data read and checked, tokenized, and reported on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from finetune_bert.console import console
from finetune_bert.data.dataset import Dataset
from finetune_bert.data.report import build_report, format_report
from finetune_bert.data.tokens import TokenizedSplits, encode_splits


@dataclass(frozen=True)
class Prepared:
    """What runs on the same data share (tune's trials read, validate and tokenize once): the data, its
    tokenizer and tokens, and the data report. `model`: the model folder the tokenizer came from."""

    ds: Dataset
    tokenizer: Any
    tokens: TokenizedSplits
    report: dict[str, Any]
    model: Any = None
    unlabeled: Any = None  # distill's --unlabeled texts (a Split): learned from, so listed in seen_texts.txt

    def without(self, split: str) -> Prepared:
        """The same, with one split's tokens left out (tune's trials never see test)."""
        kept = {k: v for k, v in self.tokens.splits.items() if k != split}
        return dataclasses.replace(self, tokens=dataclasses.replace(self.tokens, splits=kept))

    @property
    def report_text(self) -> str:
        return format_report(self.report)


def prepare(cfg: Any, ds: Dataset, tokenizer, model_config) -> Prepared:
    """Tokenize `ds` as `cfg` says (max_length, truncation, head_tokens; the length clamped to the model's
    limit, with a warning) and build its report. `cfg`: the data options (data.config.DataConfig)."""
    tokens = encode_splits(ds, tokenizer, model_config, max_length=cfg.max_length, truncation=cfg.truncation,
                           head_tokens=cfg.head_tokens)
    if tokens.warning:
        console.warn(tokens.warning)
    return Prepared(ds, tokenizer, tokens, build_report(ds, tokens.splits, tokens.max_length, cfg.truncation,
                                                        cfg.clean))
