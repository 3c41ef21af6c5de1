"""Which ONNX graph keeps accuracy at int8 speed (issue 20's tries), measured in one process on the same
reviews: fp32 as exported, fp32 through onnxruntime's transformer optimizer, dynamic int8 (the export's),
dynamic int8 of the optimized graph, dynamic int8 keeping the last layer and the head in fp32, and static
int8 (QDQ, calibrated on training reviews).

    python benchmarks/int8_variants.py --model MODEL --data test.csv --calibration train.csv [--no-record]

MODEL must hold `finetune-bert export --quantize int8`'s files. Every graph reads the reviews as
`predict --long-texts truncate` does (head+tail at the model's max length); seconds are the model's time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import cpu_hardware, now, publish


def _classifier(model: str, graph: Path):
    from finetune_bert import Reading, load
    from finetune_bert.onnx_engine import OnnxEngine
    from finetune_bert.predict import Classifier

    base = load(model, device="cpu", backend="onnx", reading=Reading(long_texts="truncate"))
    engine = OnnxEngine(graph, base.engine.config, base.engine.pad_id)
    return Classifier(engine, base.tokenizer, base.info, model, base.reading)


def _optimized(fp32: Path, config, work: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model
    out = work / "optimized.onnx"
    optimize_model(str(fp32), model_type="bert", num_heads=config.num_attention_heads,
                   hidden_size=config.hidden_size).save_model_to_file(str(out))
    return out


def _dynamic(source: Path, out: Path, exclude: list[str] | None = None) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    # the optimizer's fused ops (com.microsoft domain) defeat shape inference: their outputs are fp32
    quantize_dynamic(str(source), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=exclude or [], extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _last_layer_nodes(fp32: Path, layers: int) -> list[str]:
    """The MatMul nodes of the last encoder layer and of the pooler/classifier: kept fp32."""
    import onnx
    graph = onnx.load(str(fp32)).graph
    marks = (f"layer.{layers - 1}/", f"layer.{layers - 1}.", "pooler", "classifier")  # node names, weight names
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
            and any(m in name for m in marks for name in (n.name, *n.input))]


def _static(fp32: Path, out: Path, clf, texts: list[str]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    encoded = clf.encode(texts)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(range(len(encoded)))

        def get_next(self):
            i = next(self.rows, None)
            if i is None:
                return None
            ids = np.asarray(encoded.ids[i], dtype=np.int64)[None]
            return {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def main() -> None:
    import pandas as pd
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--calibration", required=True, help="training reviews for static int8's ranges")
    parser.add_argument("--calibration-n", type=int, default=200)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    frame = pd.read_csv(args.data)
    texts, labels = frame["text"].tolist(), frame["label"].to_numpy()
    folder = Path(args.model) / "onnx"
    work = Path(tempfile.mkdtemp(prefix="int8-"))
    base = _classifier(args.model, folder / "model.onnx")
    config = base.engine.config
    optimized = _optimized(folder / "model.onnx", config, work)
    calibration = pd.read_csv(args.calibration)["text"].tolist()[:args.calibration_n]
    graphs = {"fp32 (export)": folder / "model.onnx", "fp32, ORT transformer optimizer": optimized,
              "dynamic int8 (export)": folder / "model.int8.onnx",
              "dynamic int8 of the optimized graph": _dynamic(optimized, work / "opt-int8.onnx"),
              "dynamic int8, last layer + head fp32": _dynamic(
                  folder / "model.onnx", work / "partial-int8.onnx",
                  _last_layer_nodes(folder / "model.onnx", config.num_hidden_layers)),
              f"static int8 (QDQ, {len(calibration)} training reviews)": _static(
                  folder / "model.onnx", work / "static-int8.onnx", base, calibration)}
    reference = None
    rows = []
    for name, graph in graphs.items():
        clf = _classifier(args.model, graph)
        clf.predict_proba(texts[:8])  # warm-up
        started = time.perf_counter()
        probs = clf.predict_proba(texts)
        seconds = time.perf_counter() - started
        reference = probs if reference is None else reference
        rows.append(f"| {name} | {seconds:.1f} | {(probs.argmax(1) == labels).mean():.2%} | "
                    f"{(probs.argmax(1) == reference.argmax(1)).mean():.2%} | {np.abs(probs - reference).max():.3f} |")
    publish("\n".join([f"\n### {now()}: int8 variants of one ONNX export ({len(texts)} IMDB test reviews, truncated "
                       "head+tail)\n", f"Hardware: {cpu_hardware()}.",
                       f"Command: `python benchmarks/int8_variants.py --model {args.model} --data {args.data} "
                       f"--calibration {args.calibration} --calibration-n {args.calibration_n}`\n",
                       "| graph | model seconds | accuracy | agrees with fp32 | max prob diff |",
                       "| --- | --- | --- | --- | --- |", *rows, ""]), record=not args.no_record)


if __name__ == "__main__":
    main()
