"""`finetune-bert train | evaluate | predict | inspect | demo`.

Options of `train` and `inspect` are generated from the config dataclasses, so `--help` and the Python
API can never disagree. A UserError becomes one line on stderr and exit code 2 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from finetune_bert import __version__
from finetune_bert.config import DataConfig, EvaluateConfig, PredictConfig, TrainConfig
from finetune_bert.errors import TrainingInterrupted, UserError


def _add_config_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    required = parser.add_argument_group("required options")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        meta.pop("at_least", None)  # checked by the config's problems(), all at once
        group = required if meta.pop("required", False) else parser
        flag = "--" + f.name.replace("_", "-")
        help_text = meta.pop("help", "").replace("%", "%%")  # argparse formats help with %
        if isinstance(f.default, bool):
            # Only options that are on by default get a --no- form: --no-debug would mean nothing.
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            group.add_argument(flag, dest=f.name, action=action, default=f.default, help=help_text)
            continue
        kind = _arg_type(f)
        default = "" if f.default is None else f" (default: {f.default})"
        group.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text + default, **meta)


def _arg_type(f: dataclasses.Field) -> type:
    """The argparse type from the field's declared type ("float", "int | None", "str", ...)."""
    declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = declared.split("|")[0].strip()
    return {"float": float, "int": int}.get(base, str)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune-bert", description="Fine-tune BERT-family encoders for "
                                     "text classification.")
    parser.add_argument("--version", action="version", version=f"finetune-bert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model", description="Fine-tune a model; the output folder "
                       "becomes a Hugging Face model folder with metrics, data report and model card.")
    _add_config_options(p, TrainConfig)

    p = sub.add_parser("evaluate", help="score a fine-tuned model on labelled data",
                       description="Score a fine-tuned model on labelled data: a table, and the metrics as JSON.")
    _add_config_options(p, EvaluateConfig)

    p = sub.add_parser("predict", help="label texts with a confidence",
                       description="Label texts given as arguments, or every row of --input into --output.")
    p.add_argument("texts", nargs="*", help="texts to classify")
    _add_config_options(p, PredictConfig)

    p = sub.add_parser("inspect", help="the data report alone, no training")
    _add_config_options(p, DataConfig)
    p.add_argument("--model", default="minilm", help="whose tokenizer measures lengths (default: minilm, "
                   "whose vocabulary is bert-base-uncased's)")
    p.add_argument("--output", help="folder to save data_report.json/.txt in")
    p.add_argument("--seed", type=int, default=42, help="seed of the validation split")
    p.add_argument("--debug", action="store_true", help="full tracebacks")

    p = sub.add_parser("demo", help="fine-tune the bundled MiniLM on the bundled reviews, offline")
    p.add_argument("--output", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--epochs", type=float, default=None, help="override the demo's epochs")
    p.add_argument("--overwrite", action="store_true", help="write into a folder holding files finetune-bert did not "
                   "write (a previous demo's model is replaced without it)")
    p.add_argument("--debug", action="store_true", help="full tracebacks")
    return parser


def _config(cls, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from finetune_bert.train import train
        train(_config(TrainConfig, args))
    elif args.command == "evaluate":
        from finetune_bert.evaluate import evaluate
        cfg = _checked(_config(EvaluateConfig, args))
        evaluate(cfg.model, cfg.data, cfg.output, cfg.batch_size, cfg.text_column, cfg.label_column,
                 cfg.on_bad_rows, cfg.max_samples, cfg.seed)
    elif args.command == "predict":
        _predict(_checked(_config(PredictConfig, args)), args.texts)
    elif args.command == "inspect":
        from finetune_bert.report import inspect_data
        cfg = _config(TrainConfig, args)
        _checked(cfg, DataConfig.problems(cfg) + ([] if args.seed >= 0 else ["--seed must be at least 0"]))
        inspect_data(cfg, args.output)
    elif args.command == "demo":
        from finetune_bert.demo import demo
        demo(args.output, args.epochs, args.overwrite)
    return 0


def _checked(cfg: Any, problems: list[str] | None = None) -> Any:
    """The config, or one UserError listing all its problems."""
    found = cfg.problems() if problems is None else problems
    if found:
        raise UserError("; ".join(found))
    return cfg


def _predict(cfg: PredictConfig, texts: list[str]) -> None:
    if not texts and not cfg.input:
        raise UserError("predict needs texts as arguments or --input FILE")
    if cfg.input and not cfg.output:
        raise UserError("--input needs --output FILE for the predictions")
    if cfg.output and not cfg.input:
        raise UserError("--output is only for --input FILE; texts given as arguments are printed")
    from finetune_bert.model import read_run_info
    from finetune_bert.predict import check_output, chunk_rows, input_rows, load, write_predictions
    rows = None
    if cfg.input:  # every check of the output and the rows before the model is loaded
        out = check_output(cfg.output, cfg.input, cfg.model)
        rows = input_rows(cfg.input, cfg.text_column, cfg.label_column, cfg.ignore_labels, cfg.on_bad_rows,
                          chunk_rows(None, cfg.batch_size), cleaned=read_run_info(cfg.model).get("clean", True))
        rows.check()
    clf = load(cfg.model)
    if rows is not None:
        n = write_predictions(clf, rows, out, cfg.batch_size)
        print(f"{n} predictions written to {out}")
    for text, pred in zip(texts, clf.predict(list(texts), cfg.batch_size)):
        preview = text if len(text) <= 60 else text[:57] + "..."
        print(f"{pred.label}\t{pred.confidence:.2f}\t{preview}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        return run(args)
    except UserError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # The file system said no where no check of ours could have known (a disk that filled up, a folder
        # removed under us): one line naming the file; nothing of the user's was replaced (atomic writes).
        if getattr(args, "debug", False):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc} (run again with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
