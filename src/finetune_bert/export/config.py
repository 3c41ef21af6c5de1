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
