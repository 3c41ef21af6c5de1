"""What `finetune-bert tune` buys on IMDB, honestly: the best configuration against the default one, each
retrained with fresh seeds, with test accuracy; the pruned fraction; wall time (issue 17's measurement).

    python benchmarks/tune_imdb.py --n 2000 --test-n 1000 --max-length 128 --trials 12        # this CPU
    python benchmarks/tune_imdb.py --model bert-base-uncased --n 25000 --test-n 25000 --max-length 512 --trials 16

It runs `tune` itself (the product's code, as a user would) in OUTPUT; a rerun of the same command continues
the study where it stopped (`--budget` seconds: no new trial after that). The result is printed and appended
to RESULTS.md with the hardware (`--no-record`: printed only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import DATA, hardware, load_reviews, now, publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--n", type=int, default=2000, help="training reviews (a seeded sample)")
    parser.add_argument("--test-n", type=int, default=1000, help="test reviews (a seeded sample)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--confirm-seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=None, help="seconds: no new trial after that")
    parser.add_argument("--output", type=Path, default=Path("runs/tune-imdb"))
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    import pandas as pd
    from finetune_bert.tuning.search import tune

    args.output.mkdir(parents=True, exist_ok=True)
    data = args.output.parent / f"{args.output.name}-data"
    data.mkdir(exist_ok=True)
    for name, n, seed in (("train", args.n, 0), ("test", args.test_n, 1)):
        if not (data / f"{name}.csv").is_file():
            texts, labels = load_reviews(DATA / f"{name}.csv.gz", n, seed=seed)
            pd.DataFrame({"text": texts, "label": labels}).to_csv(data / f"{name}.csv", index=False)
    started = time.time()
    result = tune(data=str(data / "train.csv"), test_data=str(data / "test.csv"), model=args.model,
                  output=str(args.output), trials=args.trials, timeout=args.budget, max_length=args.max_length,
                  confirm_seeds=args.confirm_seeds, label_names="negative,positive")
    publish(_table(args, result, time.time() - started), record=not args.no_record)


def _table(args, result, seconds: float) -> str:
    rows = _trial_states(Path(result.output) / "trials.csv")
    lines = [f"\n### {now()}: tune on IMDB, {args.model}, {args.n} train / {args.test_n} test reviews, max length "
             f"{args.max_length}, {args.trials} trials\n", f"Hardware: {hardware()}.",
             f"Command: `python benchmarks/tune_imdb.py --model {args.model} --n {args.n} --test-n {args.test_n} "
             f"--max-length {args.max_length} --trials {args.trials} --confirm-seeds {args.confirm_seeds}"
             + (f" --budget {args.budget:g}" if args.budget is not None else "") + f" --output {args.output}`\n",
             f"Trials: {rows}; this run {seconds:.0f} s. Best trial's validation accuracy {result.best_value:.4f} "
             f"with {json.dumps(result.best_params)}.\n"]
    confirm = result.confirm
    if confirm:
        lines += ["| configuration | validation accuracy | test accuracy |", "| --- | --- | --- |"]
        for label in ("best", "default"):
            cells = [_cell(confirm[label][split]) for split in ("validation", "test")]
            lines.append(f"| {label} {json.dumps(confirm['params'][label])} | {cells[0]} | {cells[1]} |")
        for split in ("validation", "test"):
            gain = confirm["gain"][split]
            if gain and gain["spread"] is None:
                lines.append(f"\n{split} gain {gain['mean']:+.4f}, one seed: no spread measured.")
            elif gain:
                lines.append(f"\n{split} gain {gain['mean']:+.4f}, "
                             f"{'beyond' if gain['beyond_spread'] else 'within'} the seed spread ({gain['spread']:.4f}).")
    return "\n".join(lines) + "\n"


def _trial_states(path: Path) -> str:
    import csv
    from collections import Counter

    counts = Counter(row["state"] for row in csv.DictReader(path.open()))
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))


def _cell(spread) -> str:
    return "n/a" if spread is None else f"{spread['mean']:.4f} ± {spread['std']:.4f} ({', '.join(f'{v:.4f}' for v in spread['values'])})"


if __name__ == "__main__":
    main()
