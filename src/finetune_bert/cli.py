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

from finetune_bert.config import BAD_ROW_POLICIES, DataConfig, TrainConfig
from finetune_bert.errors import TrainingInterrupted, UserError


def _add_config_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        flag = "--" + f.name.replace("_", "-")
        help_text = meta.pop("help", "").replace("%", "%%")  # argparse formats help with %
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default,
                                help=help_text)
            continue
        kind = _arg_type(f)
        default = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_text + default, **meta)


def _arg_type(f: dataclasses.Field) -> type:
    """The argparse type from the field's declared type ("float", "int | None", "str", ...)."""
    declared = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = declared.split("|")[0].strip()
    return {"float": float, "int": int}.get(base, str)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetune-bert", description="Fine-tune BERT-family encoders for "
                                     "text classification.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model", description="Fine-tune a model; the output folder "
                       "becomes a Hugging Face model folder with metrics, data report and model card.")
    _add_config_options(p, TrainConfig)

    p = sub.add_parser("evaluate", help="score a fine-tuned model on labelled data")
    p.add_argument("--model", required=True, help="fine-tuned model folder (or hub id)")
    p.add_argument("--data", required=True, help="labelled data, any supported form")
    p.add_argument("--output", help="where to write the metrics JSON (default: MODEL/evaluation.json)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: 64)")
    p.add_argument("--max-samples", type=int, help="score only N rows (a seeded sample)")
    _common_row_options(p, labels=True)

    p = sub.add_parser("predict", help="label texts with a confidence")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--model", required=True, help="fine-tuned model folder (or hub id)")
    p.add_argument("--input", help="a file of texts (any supported form, or .txt with one text per line)")
    p.add_argument("--output", help="with --input: CSV/TSV/JSONL file for labels and every class probability")
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: 64)")
    _common_row_options(p, labels=False)

    p = sub.add_parser("inspect", help="the data report alone, no training")
    _add_config_options(p, DataConfig, skip=("max_train_samples", "max_test_samples"))
    p.add_argument("--model", default="minilm", help="whose tokenizer measures lengths (default: minilm, "
                   "whose vocabulary is bert-base-uncased's)")
    p.add_argument("--output", help="folder to save data_report.json/.txt in")
    p.add_argument("--seed", type=int, default=42, help="seed of the validation split")
    p.add_argument("--max-train-samples", type=int, default=None, help="inspect a seeded sample of train")
    p.add_argument("--max-test-samples", type=int, default=None, help="inspect a seeded sample of test")
    p.add_argument("--debug", action="store_true", help="full tracebacks")

    p = sub.add_parser("demo", help="fine-tune the bundled MiniLM on the bundled reviews, offline")
    p.add_argument("--output", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--epochs", type=float, default=None, help="override the demo's epochs")
    p.add_argument("--debug", action="store_true", help="full tracebacks")
    return parser


def _common_row_options(p: argparse.ArgumentParser, labels: bool) -> None:
    p.add_argument("--text-column", help="text column (auto-detected)")
    if labels:
        p.add_argument("--label-column", help="label column (auto-detected)")
    p.add_argument("--on-bad-rows", choices=BAD_ROW_POLICIES, default="error",
                   help="stop on a bad row (error) or skip it and write it out (skip)")
    p.add_argument("--debug", action="store_true", help="full tracebacks")


def _config(cls, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from finetune_bert.train import train
        train(_config(TrainConfig, args))
    elif args.command == "evaluate":
        from finetune_bert.evaluate import evaluate
        evaluate(args.model, args.data, args.output, args.batch_size, args.text_column, args.label_column,
                 args.on_bad_rows, args.max_samples)
    elif args.command == "predict":
        _predict(args)
    elif args.command == "inspect":
        from finetune_bert.report import inspect_data
        cfg = _config(TrainConfig, args)
        inspect_data(cfg, args.output)
    elif args.command == "demo":
        from finetune_bert.demo import demo
        demo(args.output, args.epochs)
    return 0


def _predict(args: argparse.Namespace) -> None:
    if not args.texts and not args.input:
        raise UserError("predict needs texts as arguments or --input FILE")
    if args.input and not args.output:
        raise UserError("--input needs --output FILE for the predictions")
    from finetune_bert.predict import load, predict_file
    clf = load(args.model)
    if args.input:
        n = predict_file(clf, args.input, args.output, args.text_column, args.batch_size, args.on_bad_rows)
        print(f"{n} predictions written to {args.output}")
    for text, pred in zip(args.texts, clf.predict(list(args.texts), args.batch_size)):
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


if __name__ == "__main__":
    sys.exit(main())
