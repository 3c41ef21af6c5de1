"""`predict --input` and `evaluate` on several processes: real torchrun jobs of 2 gloo processes on the CPU, each
compared with one process (in this one, at the same one CPU thread a process, so the numbers compare bit for bit).

1,500 rows are two chunks of the file (1,024 rows, then 476): rank 0 scores the first, rank 1 the second.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import PYTHON, _env, toy_rows, write_csv
from finetune_bert import evaluate
from finetune_bert.errors import UserError
from finetune_bert.evaluation.config import EvaluateConfig
from finetune_bert.inference import sharded
from finetune_bert.inference.config import PredictConfig
from finetune_bert.inference.files import row_writer
from finetune_bert.inference.predict import predict
from finetune_bert.options import command_line


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("sharded") / "rows.csv", toy_rows(1500, seed=5))


@contextlib.contextmanager
def _one_thread():
    """One CPU thread, as each of the 2 processes has (OMP_NUM_THREADS=1): sums split across threads round
    otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cli(*args: str, torchrun: bool = False) -> subprocess.CompletedProcess:
    """`finetune-bert ARGS` (its own launcher, with --nproc-per-node 2), or `torchrun -m finetune_bert ARGS`."""
    start = ([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "finetune_bert"]
             if torchrun else [PYTHON, "-m", "finetune_bert"])
    return subprocess.run([*start, *args, *([] if torchrun else ["--nproc-per-node", "2"])], text=True,
                          capture_output=True, env=_env(), timeout=240)


def test_two_processes_write_one_processes_predictions_byte_for_byte(trained, rows_file, tmp_path):
    """CSV through our launcher, JSON Lines through torchrun itself."""
    for name, torchrun in (("p.csv", False), ("p.jsonl", True)):
        with _one_thread():
            predict(PredictConfig(model=trained.output, input=str(rows_file), output=str(tmp_path / f"one-{name}"),
                                  backend="torch-fp32"))
        done = _cli("predict", "--model", trained.output, "--input", str(rows_file), "--output",
                    str(tmp_path / name), "--backend", "torch-fp32", torchrun=torchrun)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("1500 predictions written") == 1
        assert (tmp_path / name).read_bytes() == (tmp_path / f"one-{name}").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one-p.csv", "one-p.jsonl", "p.csv", "p.jsonl"]


def test_two_processes_evaluate_to_one_processes_metrics_exactly(trained, rows_file, tmp_path):
    with _one_thread():
        alone = evaluate(model=trained.output, data=str(rows_file), output=str(tmp_path / "one.json"),
                         backend="torch-fp32", quiet=True)
    done = _cli("evaluate", "--model", trained.output, "--data", str(rows_file), "--output", str(tmp_path / "two.json"),
                "--backend", "torch-fp32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    assert alone["n"] == 1500
    assert done.stdout.count("metrics written to") == 1


def test_the_parts_a_killed_process_leaves_are_removed_and_no_other_jobs(tmp_path):
    """What the launcher does at the end of a job whose processes torchrun killed before they could clean up (a
    kill of one process ends the job as a training job ends: tests/engine/test_distributed.py)."""
    out = tmp_path / "p[1].csv"  # glob's own characters in the name
    mine = [sharded.part_path(out, "run-a", rank) for rank in range(2)]
    theirs = [sharded.part_path(out, "run-b", 0), sharded.part_path(tmp_path / "p[1].csv.x", "run-a", 0)]
    for path in (*mine, *theirs):
        path.write_text("rows")
    sharded.remove_parts(out, "run-a")
    assert sorted(tmp_path.iterdir()) == sorted(theirs)


def test_bad_input_is_refused_before_any_process_starts(trained, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood film,positive\n,negative\n")
    with pytest.raises(UserError, match="bad.csv: line 3, column 'text': text is empty"):
        predict(PredictConfig(model=trained.output, input=str(bad), output=str(tmp_path / "p.csv"), nproc_per_node=2))
    with pytest.raises(UserError, match="texts given as arguments are scored by one"):
        predict(PredictConfig(model=trained.output, texts=("a film",), nproc_per_node=2))
    with pytest.raises(UserError, match="not standard input or output"):
        predict(PredictConfig(model=trained.output, input=str(bad), output="-", nproc_per_node=2))
    assert "--backend onnx: several processes" in " ".join(
        EvaluateConfig(model="m", data="d", backend="onnx", nproc_per_node=2).problems())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_each_process_takes_a_contiguous_run_of_chunks_and_together_they_take_each_once():
    from finetune_bert.engine.distributed import World

    for chunks, size in ((1, 2), (2, 2), (3, 2), (7, 3), (2, 4)):
        runs = []
        for rank in range(size):
            share = sharded.Share()
            share.sizes = [10] * chunks
            share.take(World(rank, size))
            runs.append(share.run)
        assert [i for run in runs for i in run] == list(range(chunks))
        assert [len(r) for r in runs] == sorted((len(r) for r in runs), reverse=True)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])
def test_parts_merge_into_the_file_one_writer_writes(fmt, tmp_path):
    fields = ["row", "text", "predicted"]
    rows = [{"row": f"line {i}", "text": f'a "text", {i}\n', "predicted": "positive"} for i in range(5)]
    whole = io.StringIO(newline="")
    write = row_writer(whole, fmt, fields)
    for row in rows:
        write(row)
    write(None)
    out = tmp_path / f"p.{fmt}"
    parts = []
    for rank, piece in enumerate((rows[:3], [], rows[3:])):  # a process may have had no rows
        parts.append(tmp_path / f"part-{rank}")
        with parts[-1].open("w", encoding="utf-8", newline="") as handle:
            write = row_writer(handle, fmt, fields, part=True)
            for row in piece:
                write(row)
    sharded.merge(out, fields, parts, rows=len(rows))
    assert out.read_bytes() == whole.getvalue().encode("utf-8")
    sharded.merge(out, fields, parts[1:2], rows=0)
    assert out.read_bytes() == (b"[]\n" if fmt == "json" else b"row,text,predicted\r\n" if fmt == "csv" else
                                b"row\ttext\tpredicted\r\n" if fmt == "tsv" else b"")


def test_the_processes_get_the_options_the_user_gave():
    from finetune_bert.cli.main import build_parser

    cfg = PredictConfig(model="-m", input="in.csv", output="out.csv", batch_size=8, overlap=False, explain=True,
                        top_words=3, nproc_per_node=2)
    argv = ["predict", *command_line(cfg, leave_out=("nproc_per_node",))]
    args = build_parser().parse_args(argv)
    again = PredictConfig(**{k: getattr(args, k) for k in vars(cfg) if k != "texts"})
    assert again == PredictConfig(**{**vars(cfg), "nproc_per_node": 1})
