"""CPU inference, whole processes, start-up included (issue 20): `transformers.pipeline` against
`finetune-bert predict` with each backend, on the same reviews, in one run.

    python benchmarks/infer_speed.py --model runs/imdb-minilm --data test.csv [--no-record]

MODEL is a fine-tuned folder; it is exported here (fp32 and int8) if it has no export yet. Each setup runs
as a fresh process over DATA (a labelled CSV) and is timed from its start to its last prediction; reviews/s
and accuracy are reported, and the speed as a ratio to the pipeline's. Then, in this process: sorted
against unsorted batches (the model's time only), and the time to a first result for one sentence.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

from bench import PIPELINE, accuracy, cpu_hardware, cpu_isa, csv_head, int8_export, now, publish, timed_process


def _ours(model: str, data: str, backend: str, reading: list[str], work: Path) -> tuple[float, float]:
    out = work / f"{backend}-{'-'.join(reading) or 'chunks'}.csv"
    out.unlink(missing_ok=True)
    seconds, _, _ = timed_process([sys.executable, "-m", "finetune_bert.cli", "predict", "--model", model, "--input",
                                   data, "--output", str(out), "--backend", backend, *reading])
    return seconds, accuracy(out)


def _sorting(model: str, data: str, batch_size: int) -> list[str]:
    """The model's time alone, in this process: batches sorted by length (ours) against batches in file
    order (each padded to its own longest text, as a plain loop pads)."""
    import pandas as pd

    from finetune_bert import Reading, load
    texts = pd.read_csv(data)["text"].tolist()
    lines = []
    for backend in ("torch", "torch-fp32", "onnx", "onnx-int8"):
        clf = load(model, device="cpu", backend=backend, reading=Reading(long_texts="truncate"))
        encoded = clf.encode(texts)
        started = time.perf_counter()
        clf.engine.logits(encoded, batch_size)
        sorted_s = time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, len(encoded), batch_size):
            part = encoded.ids[start:start + batch_size]
            clf.engine.logits(type(encoded)(part, encoded.full_lengths[start:start + batch_size], None), batch_size)
        unsorted_s = time.perf_counter() - started
        lines.append(f"| {backend} | {sorted_s:.1f} | {unsorted_s:.1f} | {unsorted_s / sorted_s:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="labelled CSV (text, label 0/1)")
    parser.add_argument("--max-length", type=int, default=256, help="the pipeline's truncation")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    int8_export(args.model)
    n = sum(1 for _ in csv.DictReader(open(args.data)))
    work = Path(tempfile.mkdtemp(prefix="infer-speed-"))
    # a first, untimed pass: the pipeline ran first on a cold page cache and CPU (50.9 s against 38.6-39.2 s
    # alternated with ours in the same hour, 2026-12-03), which flattered every ratio
    pipeline = [sys.executable, "-c", PIPELINE, args.model]
    timed_process([*pipeline, csv_head(args.data, work / "warm-up.csv", 64), str(args.max_length), "32", "-"])
    base_s, out, _ = timed_process([*pipeline, args.data, str(args.max_length), "32", "-"])
    base_acc = float(out.split("ACCURACY")[1])
    rows = [f"| transformers.pipeline (batch 32, truncation at {args.max_length}) | {base_s:.1f} | {n / base_s:.1f} "
            f"| 1.00x | {base_acc:.2%} |"]
    for reading, label in (([], "reading long reviews whole (chunks, the default)"),
                           (["--long-texts", "truncate"], "truncating head+tail (the pipeline's work)")):
        for backend in ("torch", "torch-fp32", "onnx", "onnx-int8"):
            seconds, acc = _ours(args.model, args.data, backend, reading, work)
            rows.append(f"| predict --backend {backend}, {label} | {seconds:.1f} | {n / seconds:.1f} | "
                        f"{base_s / seconds:.2f}x | {acc:.2%} |")
    first = []
    for backend in ("torch", "torch-fp32", "onnx", "onnx-int8"):
        seconds, _, _ = timed_process([sys.executable, "-m", "finetune_bert.cli", "predict", "--model", args.model,
                                       "--backend", backend, "I loved this film"])
        first.append(f"{backend} {seconds:.2f} s")
    text = [f"\n### {now()}: CPU inference, whole processes ({n} IMDB test reviews)\n",
            f"Hardware: {cpu_hardware()}; {cpu_isa()}.",
            f"Command: `python benchmarks/infer_speed.py --model {args.model} --data {args.data} "
            f"--max-length {args.max_length}`\n",
            "| setup | seconds | reviews/s | vs pipeline | accuracy |", "| --- | --- | --- | --- | --- |", *rows,
            f"\nOne sentence, whole process to its printed result: {', '.join(first)}.\n",
            "Model time alone (in one process, truncating), sorted batches against file order:\n",
            "| backend | sorted s | file order s | sorting buys |", "| --- | --- | --- | --- |",
            *_sorting(args.model, args.data, 64), ""]
    publish("\n".join(text), record=not args.no_record)


if __name__ == "__main__":
    main()
