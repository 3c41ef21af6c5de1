"""How a trained model reads a text at prediction time: long texts cut or read whole as windows."""

from __future__ import annotations

from dataclasses import dataclass
from finetune_bert.data.config import TRUNCATION_STRATEGIES
from finetune_bert.options import opt, range_problems


LONG_TEXTS = ("truncate", "chunks")


DEFAULT_STRIDE = 128


AGGREGATES = ("mean", "max")


@dataclass(frozen=True)
class Reading:
    """How a trained model reads a text at prediction time (see classifier.Classifier)."""

    long_texts: str | None = opt(None, "A text longer than the model's max length: read whole as overlapping "
                                       "windows whose logits are aggregated (chunks, the default: what a long review says at its middle "
                                       "counts too), or cut as the model was trained (truncate; the default "
                                       "when --truncation is given).", choices=LONG_TEXTS)
    stride: int | None = opt(None, "With --long-texts chunks: tokens of overlap between consecutive windows "
                                   "(default: 128, or half the window for a model with a shorter one).", at_least=0)
    aggregate: str | None = opt(None, "With --long-texts chunks: each class's logit is the mean over the windows "
                                      "(mean, the default) or the largest (max).", choices=AGGREGATES)
    truncation: str | None = opt(None, "With --long-texts truncate: head, tail or head+tail (default: as the "
                                       "model was trained).", choices=TRUNCATION_STRATEGIES)

    @property
    def how(self) -> str:
        return self.aggregate or "mean"

    @property
    def mode(self) -> str:
        """chunks, unless truncate was asked for or a --truncation given."""
        return self.long_texts or ("truncate" if self.truncation else "chunks")

    def overlap(self, window: int) -> int:
        """The stride used with windows of `window` tokens: as given, else 128 (at most half the window)."""
        return self.stride if self.stride is not None else min(DEFAULT_STRIDE, window // 2)

    def problems(self, window: int | None = None, max_length: int | None = None) -> list[str]:
        """What cannot be combined; given the model's `window` (its max length less its special tokens), also
        a stride the windows could not step by."""
        found = range_problems(self)
        if self.mode == "truncate" and self.aggregate is not None:
            found.append("--aggregate is for --long-texts chunks; with truncate each text is read once")
        if self.mode == "truncate" and self.stride is not None:
            found.append("--stride is for --long-texts chunks; with truncate each text is read once, cut, with no "
                         "windows to overlap")
        if self.long_texts == "chunks" and self.truncation is not None:
            found.append("--truncation is for --long-texts truncate; with chunks the whole text is read")
        if window is not None and self.mode == "chunks" and isinstance(self.stride, int) \
                and not isinstance(self.stride, bool) and self.stride >= window:
            found.append(f"--stride {self.stride} must be less than the model's window of {window} tokens (its max "
                         f"length {max_length or window} less the special tokens): windows overlapping by that much "
                         "would never move forward")
        return found
