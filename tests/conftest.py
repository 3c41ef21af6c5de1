"""Shared fixtures: a tiny random BERT with its own WordPiece vocabulary, and a learnable toy task.

Nothing here touches the network or ../shared: every model and dataset is made inside the test run.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "FINETUNE_BERT_TOKEN_CACHE" not in os.environ:  # the token cache (data/store.py) kept out of the user's home
    os.environ["FINETUNE_BERT_TOKEN_CACHE"] = tempfile.mkdtemp(prefix="finetune-bert-tokens-")
    atexit.register(shutil.rmtree, os.environ["FINETUNE_BERT_TOKEN_CACHE"], True)

POSITIVE = ["good", "great", "wonderful", "loved", "superb"]
NEGATIVE = ["bad", "awful", "boring", "hated", "dull"]
FILLER = ["the", "movie", "film", "plot", "actor", "scene", "was", "a", "and", "it", "story", "music",
          "ending", "long", "short", "very", "quite", "this", "that", "with", "camera", "light", "night", "day"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "<", ">", "/", "br", "&", ";"] + \
    POSITIVE + NEGATIVE + FILLER


def toy_rows(n: int, seed: int = 0) -> list[dict]:
    """Balanced reviews whose label is given by one sentiment word hidden among filler words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = rng.choices(FILLER, k=rng.randint(3, 14))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        rows.append({"text": " ".join(words) + " " + str(i % 7 * "!"), "label": label})
    return rows


def toy_multilabel_rows(n: int, seed: int = 0) -> list[dict]:
    """Reviews with a set of labels, each given by a word: 'pos' (a positive word), 'neg' (a negative word),
    'tech' (camera or light); some rows have none (an empty cell), several have more than one."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words, labels = rng.choices(["the", "a", "plot", "story", "very", "quite", "this", "that"], k=rng.randint(3, 9)), []
        for name, pool, p in (("pos", POSITIVE, 0.5), ("neg", NEGATIVE, 0.4), ("tech", ["camera", "light"], 0.35)):
            if rng.random() < p:
                words.insert(rng.randint(0, len(words)), rng.choice(pool))
                labels.append(name)
        rows.append({"text": " ".join(words), "labels": ";".join(labels)})
    return rows


def toy_regression_rows(n: int, seed: int = 0) -> list[dict]:
    """Reviews whose rating (1 to 10) rises with their positive words and falls with their negative ones."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good, bad = rng.randint(0, 3), rng.randint(0, 3)
        words = rng.choices(FILLER, k=rng.randint(2, 8)) + rng.choices(POSITIVE, k=good) + rng.choices(NEGATIVE, k=bad)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "rating": max(1, min(10, 5 + 2 * (good - bad)))})
    return rows


def toy_pair_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs of short reviews labelled by the sentiment of the second (1: positive); the first carries a
    sentiment word too, drawn apart from the label: a model that reads only the first text is at chance."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        first, second = rng.random() < 0.5, i % 2 == 0
        texts = [" ".join(rng.choices(FILLER, k=rng.randint(2, 6)) + [rng.choice(POSITIVE if s else NEGATIVE)])
                 for s in (first, second)]
        rows.append({"sentence1": texts[0], "sentence2": texts[1], "label": int(second)})
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_tiny_bert(folder: Path, dropout: float = 0.0) -> Path:
    """A 2-layer, 32-wide random BERT folder with a fast tokenizer, like a hub checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(VOCAB)}, model_max_length=64)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def same_update_tolerance(lr: float) -> float:
    """How far apart two runs that take mathematically the same updates may end, in the dtype they train in.

    fp32 (CPU, or a GPU without bf16): 1e-5, the rounding of sums taken in another order. bf16 autocast (the
    default on a CUDA GPU) keeps 8 significant bits: splitting a step into micro-batches rounds the partial
    sums differently, which can flip the sign of a near-zero gradient element, and AdamW's normalised step
    moves every element by up to ~lr whatever its gradient's size. So the bound is a few lr: 4 lr. Measured
    on an H200: 6.9e-3 at lr 5e-3 (OOM backoff), 2.0e-3 at lr 1e-3 (gradient accumulation), i.e. 1.4-2 lr.
    """
    import torch
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return 4 * lr if bf16 else 1e-5


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("toy-data")
    return {"train": write_csv(folder / "train.csv", toy_rows(160, seed=1)),
            "test": write_csv(folder / "test.csv", toy_rows(40, seed=2))}


@pytest.fixture(scope="session")
def trained(tiny_model, toy_data, tmp_path_factory):
    """One short training run shared by the evaluate, predict and pipeline tests; without the ONNX export
    train writes by default, so `auto` runs torch on it, as the tests that use it expect (an exported copy is
    tests/export's `exported`).

    fp32 on every device: in bf16 this 32-wide model at lr 1e-2 learns the toy task or not depending on the
    seed (measured on an H200, packed and padded batches: seeds 1, 2 learn with both, 3 with neither)."""
    from finetune_bert import train

    out = tmp_path_factory.mktemp("trained") / "model"
    return train(data=str(toy_data["train"]), test_data=str(toy_data["test"]), model=str(tiny_model),
                 output=str(out), epochs=6, batch_size=16, lr=1e-2, warmup_ratio=0.05, max_length=32,
                 seed=0, log_every=5, bf16=False, export=False)


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """`machine(amx=..., gpu=...)`: this machine as the probes see it. The cheap probe reads /proc/cpuinfo and
    the GPU drivers' device nodes (faked by files); torch's are its AMX and CUDA answers. Faked: the probes of the
    hardware, never the choice the tests check."""
    import torch

    from finetune_bert.inference import backends

    def fake(*, amx: bool = False, gpu: bool = False) -> None:
        info = tmp_path / "cpuinfo"
        info.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni" + (" amx_bf16 amx_tile" if amx else "") + "\n")
        node = tmp_path / "nvidiactl"
        if gpu:
            node.touch()
        monkeypatch.setattr(backends, "CPUINFO", info)
        monkeypatch.setattr(backends, "GPU_NODES", (str(node),))
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    return fake


@pytest.fixture
def read_only():
    """`with read_only(path):` nothing can be created or changed in a folder, or written to a file, not even by
    root.

    Root ignores permission bits, so as root the path is made immutable (chattr +i, which needs a file system
    that supports it); the mode (0555 for a folder, 0444 for a file) does it for others, and tells anyone who
    asks with access(). Skips where neither is possible."""
    @contextmanager
    def make(path: Path):
        immutable, folder = os.geteuid() == 0, path.is_dir()
        os.chmod(path, 0o555 if folder else 0o444)
        if immutable and subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            os.chmod(path, 0o755 if folder else 0o644)
            pytest.skip("cannot make a path read-only for root here (chattr +i failed)")
        try:
            yield path
        finally:
            if immutable:
                subprocess.run(["chattr", "-i", str(path)], capture_output=True)
            os.chmod(path, 0o755 if folder else 0o644)
    return make


def _browser():
    """A headless Chromium through selenium, or the reason there is none."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        return None, "Chromium is not installed (Debian: apt-get install chromium chromium-driver; `make setup` does it as root)"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install selenium; in the dev extras)"
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options), None
    except Exception as exc:  # a browser that will not start here is a skip with its reason, not a failure
        return None, f"Chromium did not start: {str(exc).splitlines()[0]}"


# train's command line for the toy task, shared by the tests that start real training processes
PYTHON = sys.executable


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_BERT_FAULTS", "RANK", "WORLD_SIZE")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def _args(model: Path, data: dict[str, Path], out: Path, **changes: str) -> list[str]:
    """train's arguments for the toy task; `changes`: options replaced or added (epochs="1")."""
    options = {"data": str(data["train"]), "test-data": str(data["test"]), "model": str(model), "output": str(out),
               "epochs": "5", "batch-size": "16", "lr": "1e-2", "warmup-ratio": "0.05", "max-length": "32",
               "seed": "0", "save-every": "4", "dist-timeout": "60",
               **{k.replace("_", "-"): v for k, v in changes.items()}}
    # no export: what these runs test is training, and each export is an import of onnx and a trace (0.6 s)
    return ["train", "--no-report", "--no-export", *[a for k, v in options.items() for a in (f"--{k}", v)]]


def predict_reporting_imports(*args: str) -> subprocess.CompletedProcess:
    """`finetune-bert predict ARGS` in a fresh process, which then prints `LOADED [...]`: which of torch and
    transformers it imported (an ONNX prediction needs neither)."""
    probe = ("import sys\nfrom finetune_bert.cli.main import main\n"
             f"code = main(['predict', *{list(args)!r}])\n"
             "print('LOADED', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\nsys.exit(code)\n")
    return subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


# ---------------------------------------------------------------- the other task kinds, trained once

def kind_cli(*args, fault="", timeout=300):
    env = _env(FINETUNE_BERT_FAULTS=fault)
    return subprocess.run([PYTHON, "-m", "finetune_bert.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


TASK_KINDS = {
    "multi-label": (toy_multilabel_rows, []),
    "regression": (toy_regression_rows, []),
}


def kind_train_args(model, data, out, kind, *extra, epochs="4"):
    return ["train", "--task", kind, "--data", str(data["train"]), "--test-data", str(data["test"]),
            "--model", str(model), "--output", str(out), "--epochs", epochs, "--batch-size", "16", "--lr", "1e-2",
            "--warmup-ratio", "0.05", "--max-length", "32", "--seed", "0", "--num-threads", "1", "--no-export",
            *TASK_KINDS[kind][1], *extra]


@pytest.fixture(scope="session")
def kind_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kinds")
    return {kind: {"train": write_csv(folder / f"{kind}-train.csv", rows(240, seed=1)),
                   "test": write_csv(folder / f"{kind}-test.csv", rows(60, seed=2))}
            for kind, (rows, _) in TASK_KINDS.items()}


@pytest.fixture(scope="session")
def trained_kinds(tiny_model, kind_data, tmp_path_factory):
    out = {}
    for kind in TASK_KINDS:
        folder = tmp_path_factory.mktemp(kind) / "model"
        done = kind_cli(*kind_train_args(tiny_model, kind_data[kind], folder, kind))
        assert done.returncode == 0, done.stderr[-3000:]
        out[kind] = folder
    return out


@pytest.fixture(scope="session")
def pair_model(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    data = {"train": write_csv(folder / "train.csv", toy_pair_rows(240, seed=1)),
            "test": write_csv(folder / "test.csv", toy_pair_rows(60, seed=2))}
    done = kind_cli("train", "--data", str(data["train"]), "--test-data", str(data["test"]), "--model",
                    str(tiny_model), "--output", str(folder / "model"), "--epochs", "4", "--batch-size", "16",
                    "--lr", "1e-2", "--max-length", "32", "--seed", "0", "--num-threads", "1", "--no-export")
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "model", data


# ---------------------------------------------------------------- W&B's offline run file, read back

def wandb_records(run_file: Path):
    """The records of W&B's run file (run-ID.wandb): LevelDB's log format, blocks of 32 KiB after a 7-byte header
    (":W&B", magic, version), each chunk a 7-byte header (checksum, length, type) and part of a protobuf Record."""
    from wandb.proto import wandb_internal_pb2
    data, pos, pending = run_file.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def wandb_items(items) -> dict:
    """A record's items by name: W&B keeps a name in `key` or, since its core service, in `nested_key`."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
