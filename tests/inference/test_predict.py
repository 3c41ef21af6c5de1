"""`predict` as a Unix tool: standard input and output, and progress on stderr while a file is scored."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _predict(model: str, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune_bert.cli", "predict", "--model", model, *args],
                          input=stdin, capture_output=True, text=True, env=env or ENV)


def test_text_lines_from_stdin_become_csv_on_stdout_with_messages_on_stderr(trained):
    done = _predict(trained.output, "--input", "-", "--output", "-", stdin="a good film\nbad, awful\n\nnice\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("row,text,predicted,confidence") and len(lines) == 4
    assert [line.split(",")[0] for line in lines[1:]] == ["line 1", "line 2", "line 4"]
    assert "3 predictions written to standard output" in done.stderr


def test_jsonl_from_stdin_and_jsonl_to_stdout_keep_the_label_column(trained):
    rows = [{"text": "a good film", "label": "positive"}, {"text": "awful", "label": "negative"}]
    done = _predict(trained.output, "--input", "-", "--output", "-", "--output-format", "jsonl",
                    stdin="".join(json.dumps(r) + "\n" for r in rows))
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["true_label"] for o in out] == ["positive", "negative"] and set(out[0]) >= {"predicted", "confidence"}


def test_a_bad_row_on_stdin_is_named_as_stdin_and_nothing_is_written(trained):
    done = _predict(trained.output, "--input", "-", "--output", "-", stdin="text,label\ngreat,pos\n,neg\n")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == ("error: <stdin>: line 3, column 'text': text is empty; fix the data or pass "
                                   "--on-bad-rows skip")
    skipped = _predict(trained.output, "--input", "-", "--output", "-", "--on-bad-rows", "skip",
                       stdin="text,label\ngreat,pos\n,neg\n")
    assert skipped.returncode == 0 and len(skipped.stdout.splitlines()) == 2
    assert "skipped: <stdin>: line 3, column 'text': text is empty" in skipped.stderr


def test_output_format_is_only_for_stdout(trained, toy_data, tmp_path):
    done = _predict(trained.output, "--input", str(toy_data["test"]), "--output", str(tmp_path / "p.csv"),
                    "--output-format", "jsonl")
    assert done.returncode == 2 and "--output-format is for --output -" in done.stderr


def test_progress_lines_in_a_log_and_a_bar_on_a_terminal(trained, toy_data, tmp_path):
    logged = _predict(trained.output, "--input", str(toy_data["test"]), "--output", str(tmp_path / "p.csv"),
                      env={**ENV, "FINETUNE_BERT_PROGRESS_SECONDS": "0"})
    assert logged.returncode == 0 and "predict: 40/40 rows (100%)" in logged.stderr and "rows/s" in logged.stderr
    primary, replica = pty.openpty()  # stderr on a terminal of 120 columns, as a person runs it
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "finetune_bert.cli", "evaluate", "--model", trained.output,
                             "--data", str(toy_data["test"]), "--output", str(tmp_path / "e.json")],
                            stdout=subprocess.PIPE, stderr=replica, env=ENV)
    os.close(replica)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0
    assert b"evaluate: 100%" in seen and b"40/40 rows" in seen and b"rows/s" in seen
