"""bf16 training on the CPU (`--cpu-bf16`) against fp32, on the product's own training step (benchmarks/RESULTS.md):

    python benchmarks/cpu_bf16_train.py step [--n 400] [--reps 4] [--max-length 256] [--batch-size 16] [--record]
        A MiniLM-L6 step as `train` runs it (`steps.train_step` through an `engine.Engine` with its defaults: lane
        dropout, the [CLS]-only last layer, CPU micro-batches; AdamW) on real IMDB batches, three ways taking
        turns on the same batches: fp32, bf16 autocast (`--cpu-bf16 --no-bf16-weights`), and bf16 weights with
        fp32 masters (`--cpu-bf16`, its default). Seconds per step, median of the reps, and the ratios to fp32.
    python benchmarks/cpu_bf16_train.py accuracy [--out DIR] [--train 2000] [--test 1000] [--seeds 1,2,3] ...
        `finetune-bert train` with and without `--cpu-bf16` on the same IMDB reviews, one process each, per seed:
        test accuracy and training seconds, means and spreads.

bf16 pays only where the CPU has AMX tiles (Intel Xeon 4th generation and later); elsewhere it is emulated or
runs on AVX-512 bf16 dot products, slower than fp32. The script says which the CPU has. `--cpu-bf16` becomes
the default on AMX CPUs only if the step is at least 1.3x as fast and the accuracy within the seed spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import DATA, adamw, cpu_hardware, cpu_isa, load_reviews, now, publish

WAYS = {"fp32": {}, "bf16 autocast": {"cpu_bf16": True, "bf16_weights": False}, "bf16 weights": {"cpu_bf16": True}}


def _engines(args) -> tuple:
    """The reviews tokenized, one engine (and optimizer) per way over its own copy of one MiniLM, the batches."""
    import copy

    import torch

    from finetune_bert.data.tokens import encode
    from finetune_bert.engine.batches import train_batches
    from finetune_bert.engine.model_folder import load_classifier, load_tokenizer
    from finetune_bert.engine.torch_engine import Engine, EngineOptions

    texts, labels = load_reviews(DATA / "train.csv.gz", args.n)
    torch.manual_seed(0)
    tokenizer = load_tokenizer("minilm")
    model = load_classifier("minilm", ["negative", "positive"]).train()
    enc = encode(tokenizer, texts, labels, args.max_length, "head+tail")
    batches = train_batches(enc.lengths, args.batch_size, 0, 0, True)[:args.reps + 1]
    engines = {}
    for name, options in WAYS.items():
        engine = Engine(copy.deepcopy(model), torch.device("cpu"), tokenizer.pad_token_id,
                        options=EngineOptions(**options), training=True)
        engines[name] = (engine, adamw(engine, fused=False, lr=1e-5))
    return enc, engines, batches


def step(args) -> dict:
    from finetune_bert.engine.torch_engine import has_amx
    from finetune_bert.training.checkpoint import TrainState
    from finetune_bert.training.steps import train_step

    enc, engines, batches = _engines(args)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for i, batch in enumerate(batches):
        order = list(engines) if i % 2 == 0 else list(reversed(engines))  # turns, so drift hits all alike
        for name in order:
            engine, optimizer = engines[name]
            started = time.perf_counter()
            loss, _ = train_step(engine, optimizer, enc, batch, TrainState(total_steps=10**6))
            float(loss)
            if i:  # the first batch builds oneDNN's kernels: not timed
                seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    return {"date": now(), "hardware": cpu_hardware(), "isa": cpu_isa(), "amx": has_amx(), "max_length": args.max_length,
            "batch_size": args.batch_size, "reps": args.reps, "seconds_per_step": median,
            "speed_vs_fp32": {name: round(median["fp32"] / s, 2) for name, s in median.items()}}


def accuracy(args) -> dict:
    from lora_imdb import _sample  # the same seeded samples as the LoRA runs

    args.out.mkdir(parents=True, exist_ok=True)
    train, test = _sample(args.out, "train", "train", args.train, 0), _sample(args.out, "test", "test", args.test, 1)
    runs: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, extra in (("fp32", []), ("bf16", ["--cpu-bf16"])):
            out = args.out / f"{name}-seed{seed}"
            if not (out / "metrics.json").exists():
                subprocess.run([sys.executable, "-m", "finetune_bert.cli", "train", "--model", "minilm", "--data",
                                str(train), "--test-data", str(test), "--output", str(out), "--max-length",
                                str(args.max_length), "--epochs", str(args.epochs), "--seed", str(seed), "--no-report",
                                "--no-export", "--overwrite", *extra], check=True)
            metrics = json.loads((out / "metrics.json").read_text())
            runs[name].append({"accuracy": metrics["test"]["accuracy"], "train_s": metrics["train"]["seconds"]})
    summary = {name: {key: (round(statistics.mean(r[key] for r in rs), 4),
                            round(statistics.stdev(r[key] for r in rs), 4) if len(rs) > 1 else 0.0)
                      for key in ("accuracy", "train_s")} for name, rs in runs.items()}
    return {"date": now(), "hardware": cpu_hardware(), "runs": runs, "mean_std": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("step", "accuracy"))
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cpu-bf16"))
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--record", action="store_true", help="append the result to RESULTS.md")
    args = parser.parse_args()
    result = step(args) if args.what == "step" else accuracy(args)
    print(json.dumps(result))
    publish(f"\n```\n{json.dumps(result, indent=1)}\n```\n", args.record)


if __name__ == "__main__":
    main()
