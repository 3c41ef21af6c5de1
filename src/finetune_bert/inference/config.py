"""What the commands that score with a trained model share (evaluate, predict, serve), and `predict`'s own
options. Each field's `help` becomes its `--help` line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any
from finetune_bert.data.config import BAD_ROW_POLICIES
from finetune_bert.inference.backends import AUTO, CHOICES
from finetune_bert.options import debug_option, opt, overlap_option, range_problems
from finetune_bert.ranks import launched
from finetune_bert.inference.reading import Reading


def _like(name: str) -> Any:
    """A field of `ScoreConfig` defined as Reading's field of that name (same default, help and checks)."""
    source = next(f for f in dataclasses.fields(Reading) if f.name == name)
    return field(default=source.default, metadata=source.metadata)


STREAM = "-"  # --input - / --output -: standard input and output, as Unix tools read and write them
OUTPUT_FORMATS = ("csv", "tsv", "jsonl", "json")


@dataclass
class ModelReading:
    """A trained model and how it reads texts: what every command that scores with one shares (evaluate,
    predict, serve)."""

    model: str = opt(None, "A fine-tuned model folder (or hub id).", required=True)
    batch_size: int = opt(64, "Texts per batch.", at_least=1)
    long_texts: str | None = _like("long_texts")
    stride: int | None = _like("stride")
    aggregate: str | None = _like("aggregate")
    truncation: str | None = _like("truncation")
    backend: str = opt(AUTO, "What runs the model: auto (the fastest that gives the model's own answers here: "
                             "torch on a GPU or a CPU with AMX, where it runs bf16; on other CPUs the folder's ONNX "
                             "fp32 export, if current, else torch; torch whenever explanations are asked; the "
                             "choice is said on stderr), torch (bf16 on a GPU or an AMX CPU, else fp32), "
                             "torch-fp32, or onnx / onnx-int8 on the CPU (train writes the onnx export; "
                             "`finetune-bert export --quantize int8` the int8 one).", choices=CHOICES)
    debug: bool = debug_option()

    def problems(self) -> list[str]:
        return range_problems(self, skip=Reading) + self.reading().problems()

    def reading(self) -> Reading:
        return Reading(self.long_texts, self.stride, self.aggregate, self.truncation)


@dataclass
class ScoreConfig(ModelReading):
    """What `evaluate` and `predict` share beside the model: how rows of a file are read."""

    text_column: str | None = opt(None, "Name of the text column (auto-detected: text, review, sentence, content; "
                                        "for a model trained on pairs, the first text's column in training).")
    text_pair_column: str | None = opt(None, "A model trained on text pairs: the column of each row's second text "
                                             "(default: the one in training, or a usual name such as sentence2).")
    on_bad_rows: str = opt("error", "What a bad row does: stop before any scoring (error), or skip it and list it "
                                    "in OUTPUT_NAME.skipped.csv (skip).", choices=BAD_ROW_POLICIES)
    overlap: bool = overlap_option()
    nproc_per_node: int = opt(1, "Score with this many processes on this machine (one per GPU, or a share of the CPU "
                                 "cores each; torchrun started for you). predict --input: each process scores a "
                                 "contiguous share of the rows and rank 0 writes --output whole, in input order, byte "
                                 "for byte one process's; evaluate: each process scores every N-th batch and the "
                                 "metrics are exactly one process's (torch backends only). Under your own torchrun, "
                                 "leave it out (docs/distributed.md).", at_least=1)

    def several(self) -> bool:
        """Scored by several processes: started for the user (nproc_per_node), or under torchrun."""
        return self.nproc_per_node > 1 or launched()


@dataclass
class PredictConfig(ScoreConfig):
    """`predict`: texts given as arguments, printed with their label; or every row of --input into --output."""

    texts: tuple[str, ...] = opt((), "texts to classify", positional="*")
    input: str | None = opt(None, "A file of texts (any form `train --data` takes, or .txt with one text per line); "
                                  "- reads standard input (JSON Lines, CSV/TSV with a text column, or one text a "
                                  "line).")
    output: str | None = opt(None, "With --input: where to write the predictions; .csv, .tsv, .jsonl, .ndjson or "
                                   ".json (an array), by its extension; - writes standard output (messages go to "
                                   "stderr).")
    label_column: str | None = opt(None, "A column copied to the output as true_label (auto-detected: label, "
                                         "sentiment, target, class); empty cells are fine, predict needs no labels.")
    ignore_labels: bool = opt(False, "Do not look for a label column: the output has no true_label.")
    output_format: str | None = opt(None, "Format of the predictions written to standard output (--output -); a "
                                          "file's format is its extension (default: csv).", choices=OUTPUT_FORMATS)
    explain: bool = opt(False, "Also say which words moved each answer, and how much (Integrated Gradients: a "
                               "forward and a backward pass of the text per step, some 85 times a prediction's cost "
                               "at 32 steps; torch backends only). Texts as arguments: the top words under each "
                               "prediction; --output gains an explanation column (CSV/TSV: the top words; JSON/JSONL: "
                               "every word with its weight).")
    top_words: int | None = opt(None, "With --explain: how many words to show, largest weights first (default: 10).",
                                at_least=1)
    explain_steps: int | None = opt(None, "With --explain: steps of the integral (default: 32); an explanation whose "
                                          "weights miss the change in the answer by over 5% is tried once with 4 "
                                          "times as many.", at_least=1)

    def problems(self) -> list[str]:
        """The options and how they combine; the texts and the files are predict()'s to check."""
        found = super().problems()
        if not self.texts and not self.input:
            found.append("predict needs texts as arguments or --input FILE")
        if self.input and not self.output:
            found.append("--input needs --output FILE for the predictions")
        if not self.input:
            given = [f"--{n.replace('_', '-')}" for n in ("output", "text_column", "label_column", "ignore_labels")
                     if getattr(self, n)] + (["--on-bad-rows"] if self.on_bad_rows != "error" else [])
            if given:
                found.append(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only for --input FILE; texts "
                             "given as arguments are printed")
        elif self.texts:
            found.append("give texts as arguments or --input FILE, not both")
        if self.output_format and self.output not in (None, STREAM):
            found.append(f"--output-format is for --output - (standard output); {self.output} is written as its "
                         "extension says")
        if self.explain and self.backend.startswith("onnx"):
            found.append(f"--explain needs the model's gradients, which --backend {self.backend} cannot give "
                         "(onnxruntime runs the model forward only); use --backend torch or torch-fp32")
        if not self.explain and (self.top_words is not None or self.explain_steps is not None):
            found.append("--top-words and --explain-steps are for --explain")
        if self.ignore_labels and self.label_column:
            found.append("--ignore-labels and --label-column contradict each other; give one")
        if self.several():
            if not self.input:
                found.append("several processes (--nproc-per-node, torchrun) score --input FILE; texts given as "
                             "arguments are scored by one")
            elif STREAM in (self.input, self.output):
                found.append("several processes (--nproc-per-node, torchrun) need --input and --output files, not "
                             "standard input or output (-): each reads its own share of the input, and rank 0 "
                             "writes the output")
        return found
