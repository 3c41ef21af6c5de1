"""`finetune-bert train | tune | evaluate | predict | serve | report | inspect | demo`.

Options of `train` and `inspect` are generated from the config dataclasses, so `--help` and the Python
API can never disagree. A UserError becomes one line on stderr and exit code 2 (a traceback only with --debug)."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from pathlib import Path
from typing import Any
from finetune_bert import __version__
from finetune_bert.options import MAX_SEED, range_problems
from finetune_bert.data.config import DataConfig
from finetune_bert.training.config import TrainConfig
from finetune_bert.tuning.config import TuneConfig
from finetune_bert.evaluation.config import EvaluateConfig
from finetune_bert.export.config import ExportConfig
from finetune_bert.inference.config import PredictConfig
from finetune_bert.serving.config import ServeConfig
from finetune_bert.errors import RankLost, Reported, TrainingInterrupted, UserError
from finetune_bert.ranks import follower
from finetune_bert.cli.options import _Parser, _add_config_options, _number, _repeated


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finetune-bert", description="Fine-tune BERT-family encoders for "
                                     "text classification.")
    parser.add_argument("--version", action="version", version=f"finetune-bert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model", description="Fine-tune a model; the output folder "
                       "becomes a Hugging Face model folder with metrics, data report and model card.")
    _add_config_options(p, TrainConfig)
    p.add_argument("--config", help="Options from a JSON file, as run_config.json or tune's best_config.json hold "
                   "them; options given on the command line override the file's.")

    p = sub.add_parser("tune", help="search hyperparameters with Optuna", description="Search hyperparameters "
                       "with Optuna: trials until --trials have completed (a rerun continues the study), the best "
                       "model in OUTPUT/best, trials.csv, best_config.json, plots and tune_report.md.")
    _add_config_options(p, TuneConfig)

    p = sub.add_parser("evaluate", help="score a fine-tuned model on labelled data",
                       description="Score a fine-tuned model on labelled data: a table, the metrics as JSON, and "
                       "a report (NAME.html) beside them.")
    _add_config_options(p, EvaluateConfig)

    p = sub.add_parser("predict", help="label texts with a confidence",
                       description="Label texts given as arguments, or every row of --input into --output.")
    p.add_argument("texts", nargs="*", help="texts to classify")
    _add_config_options(p, PredictConfig)

    p = sub.add_parser("serve", help="serve a model over HTTP, with a web page",
                       description="Serve a fine-tuned model over HTTP: POST /predict (Hugging Face task schema), "
                       "/health, /ready, /metrics (Prometheus), /info, POST /admin/reload, and a page at /. "
                       "Requests are batched dynamically; SIGTERM drains, SIGHUP reloads the model.")
    _add_config_options(p, ServeConfig, skip=("text_column", "on_bad_rows"))

    p = sub.add_parser("export", help="export a fine-tuned model to ONNX (fp32, and int8 on request)",
                       description="Export a fine-tuned model folder to ONNX, written into it (MODEL/onnx/) and "
                       "checked against torch; predict, evaluate and serve then take --backend onnx (or onnx-int8).")
    _add_config_options(p, ExportConfig)

    p = sub.add_parser("report", help="rebuild report.html of a training run, or of an evaluation",
                       description="Rebuild DIR/report.html from a finished training run's files, or NAME.html from "
                       "the NAME.json `evaluate` wrote.")
    p.add_argument("target", help="a training run's output folder, or an evaluation's .json")
    p.add_argument("--debug", action="store_true", help="full tracebacks")

    p = sub.add_parser("inspect", help="the data report alone, no training")
    _add_config_options(p, DataConfig)
    p.add_argument("--model", default="minilm", help="whose tokenizer measures lengths (default: minilm, "
                   "whose vocabulary is bert-base-uncased's)")
    p.add_argument("--output", help="folder to save data_report.json/.txt in")
    p.add_argument("--seed", type=_number(int), default=42, help="seed of the validation split (default: 42)")
    p.add_argument("--debug", action="store_true", help="full tracebacks")

    p = sub.add_parser("demo", help="fine-tune the bundled MiniLM on the bundled reviews, offline")
    p.add_argument("--output", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--epochs", type=_number(float), default=None, help="override the demo's epochs (default: 4)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder holding files finetune-bert did not "
                   "write (a previous demo's model is replaced without it)")
    p.add_argument("--debug", action="store_true", help="full tracebacks")
    return parser


def _config(cls, args: argparse.Namespace) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        from finetune_bert.training.launch import train
        train(_from_file(args) if args.config else _config(TrainConfig, args))
    elif args.command == "tune":
        from finetune_bert.tuning.search import tune
        tune(_config(TuneConfig, args))
    elif args.command == "evaluate":
        from finetune_bert.evaluation.evaluate import evaluate
        cfg = _checked(_config(EvaluateConfig, args))
        evaluate(cfg.model, cfg.data, cfg.output, batch_size=cfg.batch_size, text_column=cfg.text_column,
                 label_column=cfg.label_column, on_bad_rows=cfg.on_bad_rows, max_samples=cfg.max_samples, seed=cfg.seed,
                 reading=cfg.reading(), errors=cfg.errors, backend=cfg.backend, overlap=cfg.overlap)
    elif args.command == "predict":
        _predict(_config(PredictConfig, args), args.texts)
    elif args.command == "serve":
        from finetune_bert.serving.app import serve
        return serve(_checked(_config(ServeConfig, args)))
    elif args.command == "export":
        from finetune_bert.export.onnx import describe, export
        cfg = _checked(_config(ExportConfig, args))
        print(describe(export(cfg.model, cfg.format, cfg.quantize, cfg.data, cfg.rows), cfg.model))
    elif args.command == "report":
        from finetune_bert.evaluation.report_page import rebuild
        print(f"report written to {rebuild(args.target)}")
    elif args.command in ("inspect", "demo") and args.output is not None and not args.output.strip():
        raise UserError("--output must not be empty")
    elif args.command == "inspect":
        from finetune_bert.cli.inspect import inspect_data
        cfg = _config(TrainConfig, args)
        _checked(cfg, DataConfig.problems(cfg) + range_problems(cfg, only=_Seed))
        inspect_data(cfg, args.output)
    elif args.command == "demo":
        from finetune_bert.cli.demo import demo
        demo(args.output, args.epochs, args.overwrite)
    return 0


def _from_file(args: argparse.Namespace) -> TrainConfig:
    """train --config FILE: the file's options, then each option given on the command line over them."""
    import json

    try:
        payload = json.loads(Path(args.config).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--config {args.config}: cannot be read as JSON ({exc})") from None
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    if not isinstance(payload, dict):
        raise UserError(f"--config {args.config}: expected a JSON object of train options")
    if unknown := sorted(set(payload) - names):
        raise UserError(f"--config {args.config}: unknown option(s) {', '.join(unknown)}")
    given = {f.name for f in dataclasses.fields(TrainConfig)
             if {f"--{f.name.replace('_', '-')}", f"--no-{f.name.replace('_', '-')}"} & args.given}
    return TrainConfig(**{**payload, **{k: getattr(args, k) for k in given}})


def _checked(cfg: Any, problems: list[str] | None = None) -> Any:
    """The config, or one UserError listing all its problems."""
    found = cfg.problems() if problems is None else problems
    if found:
        raise UserError("; ".join(found))
    return cfg


@dataclasses.dataclass
class _Seed:
    seed: int = dataclasses.field(default=42, metadata={"at_least": 0, "at_most": MAX_SEED})


def _predict_problems(cfg: PredictConfig, texts: list[str]) -> list[str]:
    """Every problem of a predict command, at once: options, how they combine, the texts, the output."""
    from finetune_bert.inference.files import check_output
    from finetune_bert.data.sources import local_file

    found = cfg.problems()
    if not texts and not cfg.input:
        found.append("predict needs texts as arguments or --input FILE")
    if cfg.input and not cfg.output:
        found.append("--input needs --output FILE for the predictions")
    if not cfg.input:
        given = [f"--{n.replace('_', '-')}" for n in ("output", "text_column", "label_column", "ignore_labels")
                 if getattr(cfg, n)] + (["--on-bad-rows"] if cfg.on_bad_rows != "error" else [])
        if given:
            found.append(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} only for --input FILE; texts "
                         "given as arguments are printed")
    elif texts:
        found.append("give texts as arguments or --input FILE, not both")
    if cfg.ignore_labels and cfg.label_column:
        found.append("--ignore-labels and --label-column contradict each other; give one")
    if texts:
        found += _empty_texts(texts, cfg.model)
    if cfg.input and (file := local_file(cfg.input)) is not None and not file.exists():
        found.append(f"--input {cfg.input}: file not found")
    if cfg.input and cfg.output:
        try:
            check_output(cfg.output, cfg.input, cfg.model, skipping=cfg.on_bad_rows == "skip")
        except UserError as exc:
            found.append(str(exc))
    return found


def _empty_texts(texts: list[str], model: str) -> list[str]:
    """Texts given as arguments that leave the model nothing but [CLS] [SEP], as the model cleans them."""
    from finetune_bert.data.rows import clean_text, visible
    from finetune_bert.engine.model_folder import read_run_info

    try:
        cleans = read_run_info(model).get("clean", True)
    except UserError:
        cleans = True  # the model's own problem is reported when it is loaded
    return [f"text {i} ({text!r}) has nothing to classify{' once cleaned' if cleans else ''}; give a text with words "
            "in it" for i, text in enumerate(texts, start=1)
            if not visible(clean_text(text) if cleans else text)]


def _predict(cfg: PredictConfig, texts: list[str]) -> None:
    from finetune_bert.engine.model_folder import read_run_info
    from finetune_bert.inference.files import check_output, input_rows, write_predictions
    from finetune_bert.inference.classifier import load
    from finetune_bert.data.chunks import chunk_rows

    _checked(cfg, _predict_problems(cfg, texts))
    rows = None
    if cfg.input:  # every check of the output and the rows before the model is loaded
        out = check_output(cfg.output, cfg.input, cfg.model, skipping=cfg.on_bad_rows == "skip")
        rows = input_rows(cfg.input, cfg.text_column, cfg.label_column, cfg.ignore_labels, cfg.on_bad_rows,
                          chunk_rows(None, cfg.batch_size), cleaned=read_run_info(cfg.model).get("clean", True))
        rows.check()
    clf = load(cfg.model, reading=cfg.reading(), backend=cfg.backend)
    if rows is not None:
        n = write_predictions(clf, rows, out, cfg.batch_size, overlap=cfg.overlap)
        print(f"{n} predictions written to {out}")
    for text, pred in zip(texts, clf.predict(list(texts), cfg.batch_size)):
        preview = text if len(text) <= 60 else text[:57] + "..."
        print(f"{pred.label}\t{pred.confidence:.2f}\t{preview}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if twice := _repeated(argv):
        print(f"error: {', '.join(twice)} given more than once; give each option once", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # named with the command's own --help, not the top-level one
            parser._subparsers._group_actions[0].choices[args.command].error(
                f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # a one-line argparse error returns its code; --help and --version exit
        if not exc.code:
            raise
        return int(exc.code)
    args.given = {a.split("=", 1)[0] for a in itertools.takewhile(lambda a: a != "--", argv) if a.startswith("--")}
    # The server tokenizes one request's few texts at a time, in threads beside the model's: the Rust
    # tokenizer's own thread pool then only competes with torch for the cores (one-text latency 245 ms
    # against 60 ms on 2 cores). Batch commands tokenize thousands of texts at once and gain from it.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if args.command == "serve" else "true")
    try:
        return run(args)
    except Reported as exc:  # said already, by the process that met it
        return exc.exit_code
    except RankLost as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {_rank_prefix()}{exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        if not follower():  # rank 0 says where the checkpoint is
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


def _rank_prefix() -> str:
    """Under torchrun, which process an error of its own is from (rank 0's are unmarked: the usual case)."""
    return f"rank {os.environ.get('RANK')}: " if follower() else ""


if __name__ == "__main__":
    sys.exit(main())
