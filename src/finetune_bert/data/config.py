"""The data options, shared by train, tune and inspect."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from finetune_bert.options import finite, opt, range_problems
from finetune_bert.tasks import TASKS


TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")


BAD_ROW_POLICIES = ("error", "skip")


@dataclass
class DataConfig:
    data: str = opt(None, "Training data: a CSV/TSV/JSON/JSONL/Parquet file (optionally .gz), an "
                          "aclImdb-style folder, or a Hugging Face dataset name such as 'imdb'.", required=True)
    test_data: str | None = opt(None, "Test data, same forms as --data. Folders and hub datasets bring "
                                      "their own test split.")
    val_data: str | None = opt(None, "Validation data. Without it, a stratified split is taken from train.")
    text_column: str | None = opt(None, "Name of the text column (auto-detected: text, review, sentence, content).")
    label_column: str | None = opt(None, "Name of the label column (auto-detected: label, sentiment, target, class).")
    label_names: str | None = opt(None, "Names for integer labels, in id order, e.g. 'negative,positive'. "
                                        "They become id2label in the saved model.")
    val_fraction: float = opt(0.1, "Fraction of train held out for validation when --val-data is not given.")
    max_train_samples: int | None = opt(None, "Use only the first N training rows after a seeded shuffle.", at_least=1)
    max_test_samples: int | None = opt(None, "Use only the first N test rows after a seeded shuffle.", at_least=1)
    clean: bool = opt(True, "Turn '<br />' tags and HTML entities into plain text (--no-clean turns it off).")
    max_length: int = opt(512, "Maximum tokens per text, [CLS] and [SEP] included; clamped to the model's limit.",
                          at_least=8)
    truncation: str = opt("head+tail", "Which tokens to keep from a long text: head, tail, or head+tail "
                                       "(the first 128 tokens plus the last ones; Sun et al. 2019).",
                          choices=TRUNCATION_STRATEGIES)
    on_bad_rows: str = opt("error", "What a bad row (empty text, missing label, unknown class) does: stop "
                                    "the run before training (error), or skip it and list it in "
                                    "DIR/skipped_rows.csv (skip).", choices=BAD_ROW_POLICIES)
    dedupe: bool = opt(False, "Drop train rows whose text repeats an earlier train row or appears in the "
                              "validation or test data; each dropped row is listed in skipped_rows.csv.")
    head_tokens: int = opt(128, "With head+tail: how many tokens come from the head (at most half the budget).",
                           at_least=0)
    task: str = opt("classification", "What a label is: one class per text (classification), a set of labels per "
                                      "text (multi-label), or a number (regression).", choices=TASKS)
    label_separator: str = opt(";", "Multi-label: the separator between label names in a text label cell ('joy;love'); "
                                    "JSON and Parquet can hold a list instead. An empty cell means no label.")
    text_pair_column: str | None = opt(None, "Text pairs: the column of each row's second text, read with the first "
                                             "as one sequence (auto-detected: sentence1/sentence2, premise/hypothesis, "
                                             "question/answer, text_a/text_b).")
    fold_labels: bool = opt(False, "Merge labels that differ only in case ('positive', 'Positive') into their most "
                                   "frequent spelling; without it such labels stop the run with a list of them.")
    token_cache: str | None = opt(None, "Where a training file's checked rows and token ids are kept, so that it is read and "
                                        "tokenized once, by every run, resume, trial and fold on it, and training holds "
                                        "no text in memory: a folder (default: $FINETUNE_BERT_TOKEN_CACHE, else "
                                        "~/.cache/finetune-bert/tokens), or 'off' to read it into memory each run.")

    def warnings(self) -> list[str]:
        """Options given that can have no effect: said, so that nobody believes they changed the run."""
        found = []
        if self.val_data and self.val_fraction != 0.1:
            found.append("--val-fraction has no effect with --val-data")
        if self.truncation != "head+tail" and self.head_tokens != 128:
            found.append(f"--head-tokens has no effect with --truncation {self.truncation}")
        budget = self.max_length - 2  # [CLS] and [SEP]
        # The default 128 meets short budgets all the time ("128 or half"); a value the user chose is said.
        if self.truncation == "head+tail" and self.head_tokens != 128 and self.head_tokens > budget // 2 >= 0:
            found.append(f"--head-tokens {self.head_tokens} is more than half of the {budget}-token budget: "
                         f"the first {budget // 2} tokens and the last {budget - budget // 2} are kept")
        return found

    def problems(self) -> list[str]:
        """The data options' problems (`inspect` has only these; `train` adds its own)."""
        found = range_problems(self, only=DataConfig)
        if self.label_names is not None and not all(n.strip() for n in self.label_names.split(",")):
            found.append(f"--label-names {self.label_names!r}: every name must be non-empty, e.g. 'negative,positive'")
        if not self.label_separator:
            found.append("--label-separator must not be empty, e.g. ';' or '|'")
        if finite(self.val_fraction) and not 0 < self.val_fraction < 1:
            found.append(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        return found


def output_in_data(cfg: DataConfig, output: str | Path | None = None) -> list[str]:
    """--output (default: cfg.output) that is, or lies inside, a data path: a folder inside an aclImdb-style
    folder would be read as a new class by the next run, and an output equal to a data file would replace it."""
    given_output = output if output is not None else getattr(cfg, "output", None)
    if not given_output:
        return []
    out = Path(given_output).expanduser().resolve()
    found = []
    for option in ("data", "val_data", "test_data"):
        given = getattr(cfg, option)
        if not given or not Path(given).expanduser().exists():
            continue  # a hub name, or a missing file reported when the data is read
        data = Path(given).expanduser().resolve()
        if out == data or data in out.parents:
            found.append(f"--output {given_output} must not be {'inside ' if out != data else ''}the data "
                         f"(--{option.replace('_', '-')} {given}); choose a folder outside it")
    return found
