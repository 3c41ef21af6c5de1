"""`inspect`: the data report alone, no training; only the tokenizer is loaded, never the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from finetune_bert.console import console
from finetune_bert.data.config import output_in_data
from finetune_bert.data.report import report_files
from finetune_bert.data.skipped import write_skipped
from finetune_bert.errors import refuse
from finetune_bert.cli.config import InspectConfig
from finetune_bert.safefiles import check_output_file, check_output_folder, claim, read_marker, write_text_atomic
from finetune_bert.training.job import prepare

REPORT_FILES = ("data_report.json", "data_report.txt", "skipped_rows.csv")


def inspect(cfg: InspectConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """The data report, printed, and saved in `cfg.output` if given. The files it writes there are recorded in
    the folder's marker, so a later `train` there may replace them."""
    cfg = dataclasses.replace(cfg or InspectConfig(), **overrides)
    refuse(cfg.problems())
    for warning in cfg.warnings():
        console.warn(warning)
    if cfg.output:
        _check_report_folder(cfg, Path(cfg.output))  # before the data is read: a report with nowhere to go is lost
    prepared = prepare(cfg)
    report = prepared.report
    if not cfg.output:
        report["skipped_list"] = None  # nowhere to write it: say how to get it
    console.say(prepared.report_text)
    if cfg.output:
        folder = Path(cfg.output)
        claim(folder, REPORT_FILES)  # before they exist, as a run folder owns its files
        for name, text in report_files(report).items():
            write_text_atomic(folder / name, text)
        write_skipped(prepared.ds.skipped, folder / "skipped_rows.csv")
    return report


def _check_report_folder(cfg: InspectConfig, folder: Path) -> None:
    """inspect --output: a writable folder, outside the data, not a trained model's folder (whose report
    describes that model's run), and none of the files it writes an input."""
    check_output_folder(str(folder), "--output")
    problems = output_in_data(cfg, folder)
    if "train_log.jsonl" in read_marker(folder)["files"]:  # a training run's folder, finished or not
        problems.append(f"--output {folder} holds a training run, and its data report describes that run; "
                        "choose another folder for this report")
    refuse(problems)
    for name in REPORT_FILES:
        check_output_file(folder / name, "--output", inputs=[cfg.data, cfg.val_data, cfg.test_data])
