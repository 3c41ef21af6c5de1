"""`finetune-bert COMMAND`: one registry maps each command to its config dataclass and the function that takes it.

Each command's options are generated from its config, so `--help` and the Python API can never disagree, and
the function is the one the Python API calls. A UserError becomes one line on stderr and exit code 2 (a
traceback only with --debug). Functions are imported when their command runs: `predict` through an ONNX
export never pays torch's import.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import os
import sys
from dataclasses import dataclass

from finetune_bert import __version__
from finetune_bert.auditing.config import AuditConfig
from finetune_bert.cli.config import DemoConfig, InspectConfig
from finetune_bert.compression.config import DistillConfig, PruneConfig
from finetune_bert.cli.options import Parser, add_config_options, config_from_file, option_flags, repeated
from finetune_bert.console import console
from finetune_bert.errors import RankLost, Reported, TrainingFailed, TrainingInterrupted, UserError
from finetune_bert.evaluation.config import EvaluateConfig, ReportConfig
from finetune_bert.export.config import ExportConfig, PushConfig
from finetune_bert.inference.config import PredictConfig
from finetune_bert.serving.config import ServeConfig
from finetune_bert.training.config import TrainConfig
from finetune_bert.tuning.config import TuneConfig


@dataclass(frozen=True)
class Command:
    config: type  # the dataclass whose fields are the command's options
    function: str  # "module:name" of the function that takes that config (the Python API's own)
    help: str
    description: str | None = None
    config_file: bool = False  # also takes --config FILE


COMMANDS = {
    "train": Command(TrainConfig, "finetune_bert.training.launch:train", "fine-tune a model",
                     "Fine-tune a model; the output folder becomes a Hugging Face model folder with metrics, data "
                     "report and model card.", config_file=True),
    "tune": Command(TuneConfig, "finetune_bert.tuning.search:tune", "search hyperparameters with Optuna",
                    "Search hyperparameters with Optuna: trials until --trials have completed (a rerun continues the "
                    "study), the best model in OUTPUT/best, trials.csv, best_config.json, plots and tune_report.md."),
    "evaluate": Command(EvaluateConfig, "finetune_bert.evaluation.evaluate:evaluate",
                        "score a fine-tuned model on labelled data",
                        "Score a fine-tuned model on labelled data: a table, the metrics as JSON, and a report "
                        "(NAME.html) beside them."),
    "predict": Command(PredictConfig, "finetune_bert.inference.predict:predict", "label texts with a confidence",
                       "Label texts given as arguments, or every row of --input into --output."),
    "serve": Command(ServeConfig, "finetune_bert.serving.app:serve", "serve a model over HTTP, with a web page",
                     "Serve a fine-tuned model over HTTP: POST /predict (Hugging Face task schema), /health, /ready, "
                     "/metrics (Prometheus), /info, POST /admin/reload, and a page at /. Requests are batched "
                     "dynamically; SIGTERM drains, SIGHUP reloads the model."),
    "export": Command(ExportConfig, "finetune_bert.export.onnx:export",
                      "export a fine-tuned model to ONNX (fp32, and int8 on request)",
                      "Export a fine-tuned model folder to ONNX, written into it (MODEL/onnx/), or with the model's "
                      "files into --output DIR, and checked against torch. train writes the fp32 one itself; "
                      "predict, evaluate and serve run it by default on a CPU without AMX (--backend auto), or "
                      "when asked (--backend onnx, or onnx-int8)."),
    "push": Command(PushConfig, "finetune_bert.export.hub:push", "upload a trained model folder to the Hugging Face hub",
                    "Upload a trained model folder to a Hugging Face hub repository (made if it does not exist): "
                    "the model, tokenizer, model card, finetune_bert.json, metrics and reports, and an "
                    "ONNX export when it is current; never checkpoints, logs or run_config.json. The token is "
                    "huggingface_hub's: HF_TOKEN, or the one `hf auth login` stored."),
    "report": Command(ReportConfig, "finetune_bert.evaluation.report_page:report",
                      "rebuild report.html of a training run, or of an evaluation",
                      "Rebuild DIR/report.html from a finished training run's files, or NAME.html from the NAME.json "
                      "`evaluate` wrote."),
    "audit": Command(AuditConfig, "finetune_bert.auditing.audit:audit", "find likely wrong labels (cleanlab)",
                     "Find rows whose label is likely wrong: K-fold cross-validation (or a fine-tuned model, on data "
                     "it did not train on) scores every row with a model that never saw it, and confident learning "
                     "(cleanlab) flags the labels the scores contradict. Writes label_issues.csv, "
                     "oof_probabilities.csv, summary.json and report.html; a rerun of the same command continues.",
                     config_file=True),
    "distill": Command(DistillConfig, "finetune_bert.compression.distill:distill",
                       "train a smaller student from a fine-tuned teacher (knowledge distillation)",
                       "Train a student model on the teacher's softened outputs mixed with the true labels "
                       "(knowledge distillation), on --data and on --unlabeled texts the teacher labels; "
                       "--student-layers makes the student from a model's own layers. The output is an ordinary "
                       "model folder, calibrated and reported as train's; the teacher's outputs are computed once "
                       "and kept in it.", config_file=True),
    "prune": Command(PruneConfig, "finetune_bert.compression.prune:prune",
                     "drop a fine-tuned model's top layers, then optionally fine-tune it briefly",
                     "Write a copy of a fine-tuned model with only its first --keep-layers encoder layers, an "
                     "ordinary model folder that predict, evaluate and serve take; with --data, fine-tune it "
                     "briefly as train does (every train option applies). The input folder is never changed."),
    "inspect": Command(InspectConfig, "finetune_bert.cli.inspect:inspect", "the data report alone, no training"),
    "demo": Command(DemoConfig, "finetune_bert.cli.demo:demo",
                    "fine-tune the bundled MiniLM on the bundled reviews, offline"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="finetune-bert", description="Fine-tune BERT-family encoders for text classification.")
    parser.add_argument("--version", action="version", version=f"finetune-bert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        add_config_options(p, command.config)
        if command.config_file:
            p.add_argument("--config", help="Options from a JSON file, as run_config.json or tune's "
                           "best_config.json hold them; options given on the command line override the file's, "
                           "and --output must be given there.")
    return parser


def run(args: argparse.Namespace) -> int:
    """The command's config from its options (and --config FILE), handed to its function; each function
    checks its own config, all problems at once."""
    command = COMMANDS[args.command]
    fields = dataclasses.fields(command.config)
    names = [f.name for f in fields]
    if getattr(args, "config", None):
        given = {f.name for f in fields if {*option_flags(f), f"--no-{f.name.replace('_', '-')}"} & args.given}
        cfg = config_from_file(command.config, args.config, {n: getattr(args, n) for n in given})
    else:
        cfg = command.config(**{n: _value(getattr(args, n)) for n in names})
    module, function = command.function.split(":")
    result = getattr(importlib.import_module(module), function)(cfg)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _value(value):
    return tuple(value) if isinstance(value, list) else value  # positional lists: the config's tuple


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if twice := repeated(argv):
        console.error(f"{', '.join(twice)} given more than once; give each option once", name_rank=False)
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
    if twice := [" and ".join(flags) for f in dataclasses.fields(COMMANDS[args.command].config)
                 if len(flags := [x for x in option_flags(f) if x in args.given]) > 1]:
        console.error(f"{', '.join(twice)} are one option; give it once", name_rank=False)
        return 2
    # Process-wide: the server tokenizes one request's few texts at a time, in threads beside the model's, so
    # the Rust tokenizer's own thread pool would only compete with the model for the cores; batch commands
    # tokenize thousands of texts at once and gain from it (benchmarks/NOTES.md).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if args.command == "serve" else "true")
    return _run_reporting(args)


def _run_reporting(args: argparse.Namespace) -> int:
    """The command, its failures as one line each and an exit code."""
    try:
        return run(args)
    except Reported as exc:  # said already, by the process that met it
        return exc.exit_code
    except (RankLost, TrainingFailed) as exc:  # about the job as a whole, said by the process that saw it
        console.error(str(exc), name_rank=False)
        return exc.exit_code
    except UserError as exc:
        if getattr(args, "debug", False):
            raise
        console.error(str(exc))
        return exc.exit_code
    except TrainingInterrupted as exc:
        console.stopped(str(exc))  # rank 0 says where the checkpoint is
        return exc.exit_code
    except KeyboardInterrupt:
        console.stopped("interrupted", main_process_only=False)
        return 130
    except OSError as exc:
        # The file system said no where no check of ours could have known (a disk that filled up, a folder
        # removed under us): one line naming the file; nothing of the user's was replaced (atomic writes).
        if getattr(args, "debug", False):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        console.error(f"{where}{exc.strerror or exc} (run again with --debug for the traceback)")
        return 2


if __name__ == "__main__":
    sys.exit(main())
