"""`export`'s options."""

from __future__ import annotations

from dataclasses import dataclass
from finetune_bert.options import debug_option, opt, range_problems


@dataclass
class ExportConfig:
    """`export`: a fine-tuned model folder as ONNX, written beside its files (MODEL/onnx/) and checked."""

    model: str = opt(None, "A fine-tuned model folder (local: the export is written into it, unless --output).",
                     required=True)
    output: str | None = opt(None, "A new model folder to export into: it gets a copy of the model's files and the "
                                   "export beside them (DIR/onnx/). Needed for a model inside an installed package "
                                   "or the Hugging Face cache (--model minilm), where export never writes.")
    overwrite: bool = opt(False, "Replace files finetune-bert did not write: in MODEL/onnx/ (another tool's export, "
                                 "such as Optimum's onnx/model.onnx) or in the --output folder.")
    format: str = opt("onnx", "Export format.", choices=("onnx",))
    quantize: str | None = opt(None, "Also write a dynamic int8 model (per-channel weights): model.int8.onnx.",
                               choices=("int8",))
    data: str | None = opt(None, "Texts to check the export on as predict reads them (labelled: accuracy too); "
                                 "its first --rows rows.")
    rows: int = opt(512, "With --data: rows to check on.", at_least=1)
    debug: bool = debug_option()

    def problems(self) -> list[str]:
        return range_problems(self)


@dataclass
class PushConfig:
    """`push`: a trained model folder uploaded to a Hugging Face hub repository (export.hub)."""

    folder: str = opt(None, "A model folder finetune-bert trained (train's --output).", positional="?")
    repo: str = opt(None, "The hub repository: user/name or org/name (made if it does not exist).", positional="?")
    private: bool = opt(False, "Make the repository private when it is made (an existing one keeps its visibility).")
    revision: str | None = opt(None, "Push to this branch (made from main if it does not exist) instead of main.")
    commit_message: str | None = opt(None, "The commit's message (default: 'Upload NAME, trained with finetune-bert').")
    debug: bool = debug_option()

    def problems(self) -> list[str]:
        found = range_problems(self)
        if not self.folder or not self.repo:
            found.append("push takes a model folder and a hub repository: finetune-bert push DIR USER/NAME")
        return found
