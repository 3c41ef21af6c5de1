"""Training memory does not grow with the training data, and a data file is tokenized once: peak RSS and the
time to the first optimizer step of `finetune-bert train` on 25k, 250k and 1M training rows, before (a checkout
of another commit, run through PYTHONPATH) and after (this tree), in the same run on the same machine.

The rows are IMDB's 25,000 training reviews repeated, each with a row id put in front so that no two are equal
(--dedupe stays off, the default); the model is a tiny random BERT with MiniLM's tokenizer (bench.tiny_bert_folder),
so that what is measured is the data's cost, not the model's. Each run is killed by the product's own fault
injection right after its first optimizer step (FINETUNE_BERT_FAULTS=kill@step:1): its wall time is the time to
the first step, and its peak RSS the kernel's high-water mark of its resident memory, read by wait4 (this process
imports neither torch nor the product, so the child's figure is its own). After the change a size is trained
twice on the same file into two output folders: the first run tokenizes into the token cache, the second must
start training without tokenizing.

    git archive HEAD src | tar -x -C /tmp/before          # the code before the change
    python benchmarks/data_memory.py --before /tmp/before [--sizes 25000,250000,1000000] [--record]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import DATA, HERE, cpu_model, now, publish

SIZES = (25_000, 250_000, 1_000_000)


def write_rows(path: Path, n: int) -> Path:
    """`n` rows of IMDB's training reviews, repeated in file order, each text led by its row id."""
    with gzip.open(DATA / "train.csv.gz", "rt", newline="", encoding="utf-8") as source:
        reviews = list(csv.DictReader(source))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            row = reviews[i % len(reviews)]
            writer.writerow([f"[row {i}] {row['text']}", row["label"]])
    return path


def make_model(folder: Path) -> Path:
    """The tiny random BERT, made by a child process: this one must stay small (see `first_step`)."""
    subprocess.run([sys.executable, "-c", f"from pathlib import Path; from bench import tiny_bert_folder; "
                    f"tiny_bert_folder(Path({str(folder)!r}))"], cwd=HERE, check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return folder


def first_step(src: Path | None, data: Path, model: Path, output: Path, cache: Path) -> dict:
    """One `train` run killed after its first optimizer step: seconds to it, peak RSS in MiB, and whether it
    tokenized. `src`: the package's source folder to run (None: the installed one, this tree)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FINETUNE_BERT_FAULTS": "kill@step:1",
           "FINETUNE_BERT_TOKEN_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "true"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    command = [sys.executable, "-m", "finetune_bert", "train", "--data", str(data), "--model", str(model),
               "--output", str(output), "--epochs", "1", "--batch-size", "16"]
    started = time.perf_counter()
    with open(output.with_suffix(".log"), "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    said = output.with_suffix(".log").read_text()
    # the fault kills it with SIGKILL after step 1; anything else (the OOM killer's SIGKILL before training began
    # included: no "training ... texts" line) is a failure
    if child.returncode != -9 or not re.search(r"^training .* \d+ texts, ", said, re.MULTILINE):
        raise SystemExit(f"{' '.join(command)} ended with {child.returncode}:\n{said[-3000:]}")
    return {"seconds": seconds, "rss": usage.ru_maxrss / 1024, "tokenized": "tokenizing" in said}


def run(work: Path, before: Path | None, sizes: list[int]) -> list[dict]:
    model = make_model(work / "model")
    rows = []
    for n in sizes:
        data = write_rows(work / f"train_{n}.csv", n)
        found = {"rows": n, "mib": data.stat().st_size / 2**20}
        if before is not None:
            try:
                found["before"] = first_step(before / "src", data, model, work / f"before_{n}", work / "unused")
            except SystemExit as failed:  # the old code out of memory, say: a result of its own, not the end
                print(failed, flush=True)
                found["before"] = {"failed": str(failed).splitlines()[0][-200:]}
        cache = work / f"cache_{n}"
        found["first"] = first_step(None, data, model, work / f"first_{n}", cache)
        found["second"] = first_step(None, data, model, work / f"second_{n}", cache)
        rows.append(found)
        print(found, flush=True)
        data.unlink()
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def table(rows: list[dict], before: bool) -> str:
    base = rows[0]
    runs = (["before"] if before else []) + ["first", "second"]
    head = "| training rows | data file | " + " | ".join(
        f"{r} run: peak RSS | time to step 1" for r in runs) + " |\n"
    line = "| --- | --- |" + " --- | --- |" * len(runs) + "\n"
    body = ""
    for found in rows:
        cells = []
        for r in runs:
            if "failed" in found[r]:
                cells.append("failed | -")
                continue
            rss, seconds = found[r]["rss"], found[r]["seconds"]
            ratio = f" ({rss / base[r]['rss']:.2f}x)" if found is not base and "rss" in base[r] else ""
            said = "" if r == "before" else (" tokenized" if found[r]["tokenized"] else " from the cache")
            cells.append(f"{rss:.0f} MiB{ratio} | {seconds:.1f} s{said}")
        body += f"| {found['rows']:,} | {found['mib']:.0f} MiB | " + " | ".join(cells) + " |\n"
    return head + line + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="a checkout of the code before the change (its src/ is run)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="training rows, comma-separated")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--record", action="store_true", help="append the results to RESULTS.md")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="data_memory-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(work, args.before, sizes)
    text = (f"\n## Training data larger than memory: peak RSS and time to the first step ({now()})\n\n"
            f"CPU {cpu_model()}, {os.cpu_count()} cores; a tiny random BERT (2 layers, 32 wide) with MiniLM's "
            "tokenizer, max length 512, batch 16, IMDB training reviews repeated with a row id in front; each run "
            "killed after its first optimizer step (`FINETUNE_BERT_FAULTS=kill@step:1`). Ratios: to the smallest "
            "size's.\n\n`python benchmarks/data_memory.py " + " ".join(sys.argv[1:]) + "`\n\n" + table(rows, args.before is not None))
    publish(text, args.record)


if __name__ == "__main__":
    main()
