"""Distillation and pruning on IMDB, side by side in one run (benchmarks/RESULTS.md, "Smaller models"):

    python benchmarks/distill_imdb.py [--out DIR] [--train-rows 2000] [--unlabeled-rows 8000] [--test-rows 2000]
                                      [--max-length 256] [--epochs 2] [--lr 1e-4] [--layers 3] [--layer-pick first]
                                      [--prune] [--repeats 2] [--backend torch] [--threads N] [--record]

A 6-layer MiniLM (`--model minilm`, the bundled all-MiniLM-L6-v2) fine-tuned on `--train-rows` IMDB train reviews
is the teacher. From MiniLM's own layers (`--layers` of 6, `--layer-pick`), two students of the same shape:
(a) `distill`ed on the same labelled reviews plus `--unlabeled-rows` other IMDB train reviews whose labels are
withheld, and (b) the same model fine-tuned without a teacher (`distill --kd-alpha 1`: the true labels' loss
alone, the same code and layers). With `--prune`, also the teacher cut to its first `--layers` layers as it is and
after `--prune-epochs` of fine-tuning on the labelled reviews. Every model is a real `finetune-bert` process.

Each model then labels the same `--test-rows` IMDB test reviews with `finetune-bert predict` (a fresh process,
start-up included, `--backend`): its accuracy, and its time, teacher and students alternated `--repeats` times
(the best of each), with the ratio to the teacher's. A step whose output exists is read, not run again. Prints
one JSON line; `--record` appends a table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from bench import DATA, accuracy, hardware, load_reviews, now, publish, timed_process

TOOL = [sys.executable, "-m", "finetune_bert.cli"]
LABELS = ["--label-names", "negative,positive"]


def _write(path: Path, texts: list[str], labels: list[int] | None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"] if labels is not None else ["text"])
        writer.writerows(zip(texts, labels) if labels is not None else ([t] for t in texts))
    return path


def _data(args: argparse.Namespace) -> dict[str, Path]:
    """Labelled and unlabelled train reviews, disjoint (one seeded draw, cut in two), and test reviews."""
    out = args.out
    files = {name: out / f"{name}.csv" for name in ("labelled", "unlabeled", "test")}
    if not all(p.is_file() for p in files.values()):
        texts, labels = load_reviews(args.data_dir / "train.csv.gz", args.train_rows + args.unlabeled_rows, args.seed)
        _write(files["labelled"], texts[:args.train_rows], labels[:args.train_rows])
        _write(files["unlabeled"], texts[args.train_rows:], None)  # the labels withheld
        _write(files["test"], *load_reviews(args.data_dir / "test.csv.gz", args.test_rows, args.seed + 1))
    return files


def _step(folder: Path, done: str, command: list[str], seconds: dict[str, float]) -> None:
    """Run `command` unless `folder` holds `done` (a finished run's file), timing it."""
    if not (folder / done).is_file():
        seconds[folder.name] = round(timed_process([*TOOL, *command])[0], 1)


def _models(args: argparse.Namespace, data: dict[str, Path]) -> tuple[dict[str, Path], dict[str, float]]:
    out, seconds = args.out, {}
    labels = [] if args.teacher else LABELS  # a given teacher's label names are the data's 0 and 1
    common = [*labels, "--max-length", str(args.max_length), "--lr", str(args.lr), "--seed", str(args.seed),
              "--no-report", *(["--num-threads", str(args.threads)] if args.threads else [])]
    # --overwrite: a run stopped part-way starts again (a distilled one keeps its teacher's outputs, cached)
    train = ["--data", str(data["labelled"]), "--epochs", str(args.epochs), "--overwrite", *common]
    small = ["--student", args.model, "--student-layers", str(args.layers), "--layer-pick", args.layer_pick]
    models = {name: out / name for name in ("teacher", "student", "no-teacher")}
    if args.teacher:
        models["teacher"] = args.teacher
    _step(models["teacher"], "metrics.json", ["train", "--model", args.model, "--output", str(models["teacher"]),
                                              *train], seconds)
    _step(models["student"], "metrics.json", ["distill", "--teacher", str(models["teacher"]), *small, "--unlabeled",
                                              str(data["unlabeled"]), "--output", str(models["student"]), *train],
          seconds)
    _step(models["no-teacher"], "metrics.json", ["distill", "--teacher", str(models["teacher"]), *small, "--kd-alpha",
                                                 "1", "--output", str(models["no-teacher"]), *train], seconds)
    if args.prune:
        models["pruned"], models["pruned-ft"] = out / "pruned", out / "pruned-ft"
        keep = ["prune", "--model", str(models["teacher"]), "--keep-layers", str(args.layers)]
        _step(models["pruned"], "prune.json", [*keep, "--output", str(models["pruned"])], seconds)
        _step(models["pruned-ft"], "prune.json", [*keep, "--output", str(models["pruned-ft"]), "--data",
                                                  str(data["labelled"]), "--epochs", str(args.prune_epochs), *common],
              seconds)
    return models, seconds


def _predict(model: Path, data: Path, backend: str, out: Path) -> tuple[float, float]:
    """A fresh `predict` process over the test reviews: (seconds, accuracy)."""
    predictions = out / f"predictions-{model.name}.csv"
    predictions.unlink(missing_ok=True)
    seconds = timed_process([*TOOL, "predict", "--model", str(model), "--input", str(data), "--output",
                             str(predictions), "--backend", backend])[0]
    return seconds, accuracy(predictions)


def _scores(args: argparse.Namespace, models: dict[str, Path], test: Path) -> dict[str, dict]:
    """Each model's accuracy and best predict time over the repeats, teacher and students alternated."""
    times: dict[str, list[float]] = {name: [] for name in models}
    right: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, folder in models.items():
            seconds, right[name] = _predict(folder, test, args.backend, args.out)
            times[name].append(seconds)
    teacher = min(times["teacher"])
    return {name: {"layers": json.loads((folder / "config.json").read_text())["num_hidden_layers"],
                   "accuracy": round(right[name], 4), "predict_s": round(min(times[name]), 2),
                   "speed_vs_teacher": round(teacher / min(times[name]), 2)} for name, folder in models.items()}


def _table(result: dict) -> str:
    rows = [f"| {name} | {r['layers']} | {r['accuracy']:.4f} | {r['predict_s']:.1f} | {r['speed_vs_teacher']:.2f}x |"
            for name, r in result["models"].items()]
    return (f"\n## Smaller models: distill and prune on IMDB ({result['date']})\n\n{result['hardware']}; "
            f"`python benchmarks/distill_imdb.py {' '.join(result['argv'])}`: {result['train_rows']} labelled and "
            f"{result['unlabeled_rows']} unlabelled train reviews, {result['test_rows']} test reviews; predict is a "
            f"fresh process (start-up included), `--backend {result['backend']}`, best of {result['repeats']}.\n\n"
            "| model | layers | test accuracy | predict s | speed vs teacher |\n| --- | --- | --- | --- | --- |\n"
            + "\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/distill-imdb"))
    parser.add_argument("--data-dir", type=Path, default=DATA, help="a folder with IMDB's train.csv.gz and test.csv.gz")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--teacher", type=Path, help="a teacher already fine-tuned on the same labelled reviews "
                        "(e.g. lora_imdb.py's full-seed1, trained on the same seeded sample with --seed 0)")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--unlabeled-rows", type=int, default=8000)
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-pick", choices=("first", "spread"), default="first")
    parser.add_argument("--prune", action="store_true", help="also the teacher pruned, as it is and fine-tuned")
    parser.add_argument("--prune-epochs", type=float, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads for training (0: torch's default)")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data = _data(args)
    models, seconds = _models(args, data)
    result = {"benchmark": "distill-imdb", "train_rows": args.train_rows, "unlabeled_rows": args.unlabeled_rows,
              "test_rows": args.test_rows, "backend": args.backend, "repeats": args.repeats,
              "models": _scores(args, models, data["test"]), "seconds": seconds, "argv": sys.argv[1:],
              "total_seconds": round(time.time() - started, 1), "date": now(), "hardware": hardware()}
    print(json.dumps(result))
    publish(_table(result), args.record)


if __name__ == "__main__":
    main()
