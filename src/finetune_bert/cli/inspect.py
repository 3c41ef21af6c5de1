"""`inspect`: the data report alone, no training."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from finetune_bert.data.report import build_report, format_report, report_files


def save_report(report: dict[str, Any], folder: Path) -> None:
    from finetune_bert.safefiles import write_text_atomic

    for name, text in report_files(report).items():
        write_text_atomic(folder / name, text)


def inspect_data(cfg, output: str | None = None) -> dict[str, Any]:
    """`finetune-bert inspect`: the report alone; only the tokenizer is loaded, never the model. The files it
    writes in `output` are recorded in the folder's marker, so a later `train` there may replace them."""
    from finetune_bert.data.dataset import load_dataset
    from finetune_bert.data.skipped import write_skipped
    from finetune_bert.engine.model_folder import load_model_config, load_tokenizer
    from finetune_bert.console import say
    from finetune_bert.data.tokens import encode_splits

    for warning in cfg.warnings():
        say(f"warning: {warning}")
    if output:
        _check_report_folder(cfg, Path(output))  # before the data is read: a report with nowhere to go is lost work
    ds = load_dataset(cfg)  # data problems surface before any model file is touched
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    tokens = encode_splits(ds, tokenizer, load_model_config(cfg.model, cfg.trust_remote_code),
                           max_length=cfg.max_length, truncation=cfg.truncation, head_tokens=cfg.head_tokens)
    if tokens.warning:
        say(f"warning: {tokens.warning}")
    report = build_report(ds, tokens.splits, tokens.max_length, cfg.truncation, cfg.clean)
    if not output:
        report["skipped_list"] = None  # nowhere to write it: say how to get it
    print(format_report(report))
    if output:
        from finetune_bert.safefiles import claim
        claim(Path(output), REPORT_FILES)  # before they exist, as a run folder owns its files
        save_report(report, Path(output))
        write_skipped(ds.skipped, Path(output) / "skipped_rows.csv")
    return report


REPORT_FILES = ("data_report.json", "data_report.txt", "skipped_rows.csv")


def _check_report_folder(cfg, folder: Path) -> None:
    """inspect --output: a writable folder, outside the data, not a trained model's folder (whose report
    describes that model's run), and none of the files it writes an input."""
    from finetune_bert.data.config import output_in_data
    from finetune_bert.safefiles import check_output_file, check_output_folder, read_marker

    check_output_folder(str(folder), "--output")
    problems = output_in_data(cfg, folder)
    if "train_log.jsonl" in read_marker(folder)["files"]:  # a training run's folder, finished or not
        problems.append(f"--output {folder} holds a training run, and its data report describes that run; "
                        "choose another folder for this report")
    if problems:
        from finetune_bert.errors import UserError
        raise UserError("; ".join(problems))
    for name in REPORT_FILES:
        check_output_file(folder / name, "--output", inputs=[cfg.data, cfg.val_data, cfg.test_data])
