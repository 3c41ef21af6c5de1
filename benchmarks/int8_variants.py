"""Which ONNX graph keeps accuracy at int8 speed (issue 20's tries), measured in one process on the same
reviews: fp32 as exported, dynamic int8 (the export's), dynamic int8 keeping in fp32 the layers most
sensitive to activation outliers (the feed-forward output dense, or the whole feed-forward block, of every
layer; or the last layer and the head), and static int8 (QDQ, calibrated on training reviews).
(onnxruntime's transformer optimizer was measured too and bought nothing: benchmarks/NOTES.md.)

    python benchmarks/int8_variants.py --model MODEL --data test.csv --calibration train.csv [--no-record]

MODEL must hold `finetune-bert export --quantize int8`'s files. Every graph reads the reviews as
`predict --long-texts truncate` does (head+tail at the model's max length); seconds are the model's time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import cpu_hardware, now, publish


def _classifier(model: str, graph: Path):
    from finetune_bert import Reading, load
    from finetune_bert.engine.onnx_engine import OnnxEngine
    from finetune_bert.inference.classifier import Classifier

    base = load(model, device="cpu", backend="onnx", reading=Reading(long_texts="truncate"))
    engine = OnnxEngine(graph, base.engine.config, base.engine.pad_id)
    return Classifier(engine, base.tokenizer, base.folder, base.reading, backend="onnx")


def _dynamic(source: Path, out: Path, exclude: list[str] | None = None) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(str(source), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     nodes_to_exclude=exclude or [])
    return out


def _weight_matmuls(fp32: Path) -> list[str]:
    """The graph's MatMul/Gemm nodes that multiply by a weight, in graph order: six per encoder layer
    (query, key, value, attention output, intermediate, output; the export traces them in that order, named
    by position), then the pooler and the classifier."""
    import onnx
    graph = onnx.load(str(fp32)).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(x in weights for x in n.input)]


def _roles(nodes: list[str], layers: int, roles: tuple[int, ...] = (), last_layers: int = 0) -> list[str]:
    """Nodes to keep fp32: `roles` (0-5 as in _weight_matmuls) of every layer, all of the last `last_layers`
    layers, and with the last layers also the head."""
    per_layer = [nodes[6 * k:6 * k + 6] for k in range(layers)]
    keep = [layer[r] for layer in per_layer for r in roles]
    if last_layers:
        keep += [n for layer in per_layer[layers - last_layers:] for n in layer] + nodes[6 * layers:]
    return keep


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
    calibration = pd.read_csv(args.calibration)["text"].tolist()[:args.calibration_n]
    fp32, layers = folder / "model.onnx", json.loads((Path(args.model) / "config.json").read_text())["num_hidden_layers"]
    nodes = _weight_matmuls(fp32)
    assert len(nodes) == 6 * layers + 2, f"{len(nodes)} weight MatMuls: not the traced BERT this script knows"
    graphs = {"fp32 (export)": fp32, "dynamic int8 (export)": folder / "model.int8.onnx",
              "dynamic int8, FFN output dense fp32": _dynamic(fp32, work / "ffn-out.onnx", _roles(nodes, layers, (5,))),
              "dynamic int8, FFN (both dense) fp32": _dynamic(fp32, work / "ffn.onnx", _roles(nodes, layers, (4, 5))),
              "dynamic int8, last layer + head fp32": _dynamic(fp32, work / "last.onnx",
                                                               _roles(nodes, layers, last_layers=1)),
              f"static int8 (QDQ, {len(calibration)} training reviews)": _static(
                  fp32, work / "static-int8.onnx", base, calibration)}
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
