"""Calibration and long reviews on IMDB (issue 18's measurements), through the product's own API.

    python benchmarks/calibration_imdb.py                 # MiniLM, 2,000 train reviews, max length 256
    python benchmarks/calibration_imdb.py --skip-train    # reuse OUTPUT/model, only the long-review table

1. Train MiniLM with the defaults (temperature scaling on) on a seeded 2,000 train reviews; report ECE, NLL
   and Brier before and after calibration on validation and on 1,000 seeded test reviews.
2. From the whole IMDB test split, the reviews longer than 512 tokens (BERT's limit); a seeded `--long-n`
   of them scored by the same model with head, tail and head+tail truncation, and read whole as windows
   (`--long-texts chunks`) with the mean and the max of the windows' logits, each with its time (the
   compute multiplier of reading whole). The result is printed and appended to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import DATA, hardware, load_reviews, now, publish


def _write(path: Path, texts: list[str], labels: list[int]) -> Path:
    import pandas as pd

    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def _train(args, folder: Path) -> dict:
    from finetune_bert import train

    texts, labels = load_reviews(DATA / "train.csv.gz", args.n, seed=0)
    test_texts, test_labels = load_reviews(DATA / "test.csv.gz", args.test_n, seed=1)
    result = train(data=str(_write(folder / "train.csv", texts, labels)),
                   test_data=str(_write(folder / "test.csv", test_texts, test_labels)), model=args.model,
                   output=str(folder / "model"), max_length=args.max_length, label_names="negative,positive",
                   overwrite=True)
    return result.metrics


def _long_reviews(args, folder: Path, tokenizer) -> tuple[Path, int, int]:
    """A seeded `long_n` of the test reviews whose token count (special tokens included) exceeds 512."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(DATA / "test.csv.gz")
    lengths = np.array([len(ids) + 2 for ids in tokenizer(frame["text"].tolist(), add_special_tokens=False)["input_ids"]])
    long = frame[lengths > 512]
    picked = long.iloc[np.random.default_rng(2).permutation(len(long))[:args.long_n]]
    path = _write(folder / "long.csv", picked["text"].tolist(), picked["label"].astype(int).tolist())
    return path, len(long), len(frame)


def _calibration_table(m: dict) -> list[str]:
    c = m["calibration"]
    lines = [f"Temperature {c['value']:.3f} ({c['note']}).\n",
             "| split | accuracy | ECE before | ECE after | NLL before | NLL after | Brier before | Brier after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split in ("validation", "test"):
        b, a = c[split]["before"], c[split]["after"]
        accuracy = (m["test"] if split == "test" else m["validation"])["accuracy"]
        lines.append(f"| {split} ({c['rows'] if split == 'validation' else m['test']['n']}) | {accuracy:.4f} | "
                     f"{100 * b['ece']:.2f}% | {100 * a['ece']:.2f}% | {b['log_loss']:.4f} | {a['log_loss']:.4f} | "
                     f"{b['brier']:.4f} | {a['brier']:.4f} |")
    return lines


def _long_table(model: str, data: Path, folder: Path) -> list[str]:
    from finetune_bert import Reading, evaluate

    readings = [("head", Reading(truncation="head")), ("tail", Reading(truncation="tail")),
                ("head+tail", Reading(truncation="head+tail")), ("chunks, mean", Reading("chunks", aggregate="mean")),
                ("chunks, max", Reading("chunks", aggregate="max"))]
    lines = ["| reading | accuracy | macro F1 | NLL | ECE | seconds | time vs head+tail |", "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = []
    for name, reading in readings:
        started = time.time()
        m = evaluate(model, str(data), str(folder / f"long-{name.replace(', ', '-')}.json"), reading=reading, quiet=True)
        rows.append((name, m, time.time() - started))
    base = next(s for n, _, s in rows if n == "head+tail")
    for name, m, seconds in rows:
        lines.append(f"| {name} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} | {m['log_loss']:.4f} | "
                     f"{100 * m['ece']:.2f}% | {seconds:.0f} | {seconds / base:.2f}x |")
    best = max(rows, key=lambda r: r[1]["accuracy"])
    lines.append(f"\nBest: {best[0]} ({best[1]['accuracy']:.4f}).")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--n", type=int, default=2000, help="training reviews (a seeded sample)")
    parser.add_argument("--test-n", type=int, default=1000, help="test reviews (a seeded sample)")
    parser.add_argument("--long-n", type=int, default=1000, help="test reviews over 512 tokens (a seeded sample)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--output", type=Path, default=Path("runs/calibration-imdb"))
    parser.add_argument("--skip-train", action="store_true", help="reuse OUTPUT/model")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from finetune_bert.engine.model_folder import load_tokenizer

    args.output.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = args.output / "model"
    metrics = json.loads((model / "metrics.json").read_text()) if args.skip_train else _train(args, args.output)
    train_seconds = time.time() - started
    lines = [f"\n### {now()}: calibration and long reviews on IMDB, {args.model}, {args.n} train reviews, max length "
             f"{args.max_length}\n", f"Hardware: {hardware()}.",
             f"Command: `python benchmarks/calibration_imdb.py --model {args.model} --n {args.n} --test-n {args.test_n} "
             f"--long-n {args.long_n} --max-length {args.max_length}{' --skip-train' if args.skip_train else ''}`\n",
             *_calibration_table(metrics)]
    if not args.skip_train:
        lines.append(f"\nTraining and calibration: {train_seconds:.0f} s.")
    data, n_long, n_all = _long_reviews(args, args.output, load_tokenizer(str(model)))
    lines.append(f"\nLong reviews: {n_long} of the {n_all} test reviews are longer than 512 tokens "
                 f"({100 * n_long / n_all:.1f}%); {min(args.long_n, n_long)} of them (seeded) scored by that model "
                 f"at its max length {args.max_length} (windows of {args.max_length} tokens, stride 128):\n")
    lines += _long_table(str(model), data, args.output)
    publish("\n".join(lines) + "\n", record=not args.no_record)


if __name__ == "__main__":
    main()
