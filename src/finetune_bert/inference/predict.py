"""`finetune-bert predict`: texts given as arguments, printed with their label; or every row of a file (or of
standard input) into a file (or standard output). Every problem is found before the model is loaded."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from finetune_bert.console import console
from finetune_bert.ranks import follower, launched
from finetune_bert.data.chunks import ChunkedSplit, chunk_rows
from finetune_bert.data.readers import LONE_SURROGATE
from finetune_bert.data.rows import clean_text, visible
from finetune_bert.data.sources import local_file
from finetune_bert.engine.model_folder import ModelFolder
from finetune_bert.errors import Reported, UserError, refuse
from finetune_bert.data.labels import LabelSpec
from finetune_bert.engine.run_info import RunInfo
from finetune_bert.inference.attributions import Explanation
from finetune_bert.inference.classifier import Prediction, load
from finetune_bert.inference.config import STREAM, PredictConfig
from finetune_bert.inference.files import (STDIN_SPOOL, Explaining, check_output, input_rows, read_columns, stdin_file,
                                          write_predictions)


def predict(cfg: PredictConfig) -> None:
    """The texts given, each printed with its label and confidence; or every row of `cfg.input` into
    `cfg.output`, where "-" is standard input or output (messages then go to stderr alone). Every problem
    (options, texts, input, output, each row) is found before the model is loaded, and all said at once.
    With several processes (`nproc_per_node`, or under torchrun), each scores a share of the input's rows
    (inference.sharded)."""
    folder, cleans = _opened(cfg.model)
    cfg = dataclasses.replace(cfg, texts=_as_utf8(cfg.texts))
    try:
        refuse(_problems(cfg, folder, cleans))
    except UserError as exc:  # under torchrun, every process finds the same problems: rank 0 says them
        if follower():
            raise Reported(exc.exit_code) from None
        raise
    if not cfg.input:
        _predict_texts(cfg, folder)
    elif cfg.nproc_per_node > 1 or launched():
        _predict_several(cfg, folder, cleans)
    else:
        with tempfile.TemporaryDirectory(prefix=STDIN_SPOOL) as spool:
            source = str(stdin_file(Path(spool))) if cfg.input == STREAM else cfg.input
            try:
                _predict_rows(cfg, folder, cleans, source)
            except UserError as exc:  # errors name standard input as the user gave it, not the spooled copy
                raise UserError(str(exc).replace(source, "<stdin>") if cfg.input == STREAM else str(exc)) from None


def _problems(cfg: PredictConfig, folder: ModelFolder | None, cleans: bool) -> list[str]:
    """Every problem with the options, the texts, the input and the output."""
    found = cfg.problems() + _empty_texts(cfg.texts, cleans)
    if cfg.input and cfg.input != STREAM and (file := local_file(cfg.input)) is not None and not file.exists():
        found.append(f"--input {cfg.input}: file not found")
    if cfg.input and cfg.output and cfg.output != STREAM:
        try:
            check_output(cfg.output, cfg.input, folder or cfg.model, skipping=cfg.on_bad_rows == "skip")
        except UserError as exc:
            found.append(str(exc))
    return found


def _predict_texts(cfg: PredictConfig, folder: ModelFolder | None) -> None:
    clf = load(folder or cfg.model, reading=cfg.reading(), backend=cfg.backend, explaining=cfg.explain)
    inputs = [pair_argument(text, i) for i, text in enumerate(cfg.texts, start=1)] if clf.pairs else list(cfg.texts)
    preds = clf.predict(inputs, cfg.batch_size)
    explained = clf.explain(inputs, steps=cfg.explain_steps) if cfg.explain else [None] * len(preds)
    for text, pred, why in zip(cfg.texts, preds, explained):
        preview = text if len(text) <= 60 else text[:57] + "..."
        shown = f"{pred.label}\t{pred.confidence:.2f}" if isinstance(pred, Prediction) else str(pred)
        console.say(f"{shown}\t{preview}")
        if why is not None:
            console.say(explained_line(why, cfg.top_words or 10))


def _rows(cfg: PredictConfig, folder: ModelFolder | None, cleans: bool, source: str, share=None) -> ChunkedSplit:
    """The input's rows, to be checked; `share`: one process's share of them (sharded.Share)."""
    info = folder.info if folder is not None else RunInfo()
    return input_rows(source, read_columns(cfg, info, False), cfg.ignore_labels, cfg.on_bad_rows,
                      chunk_rows(None, cfg.batch_size), cleaned=cleans, spec=LabelSpec(info.task, info.label_separator),
                      share=share)


def _predict_rows(cfg: PredictConfig, folder: ModelFolder | None, cleans: bool, source: str) -> None:
    rows = _rows(cfg, folder, cleans, source)
    total = rows.check()
    clf = load(folder or cfg.model, reading=cfg.reading(), backend=cfg.backend, explaining=cfg.explain)
    out = None if cfg.output == STREAM else Path(cfg.output).expanduser()
    explain = Explaining(cfg.top_words or 10, cfg.explain_steps) if cfg.explain else None
    n = write_predictions(clf, rows, out, cfg.batch_size, overlap=cfg.overlap, total=total, fmt=cfg.output_format,
                          explain=explain)
    if out is None:
        console.note(f"{n} predictions written to standard output")
    else:
        console.say(f"{n} predictions written to {out}")


def _predict_several(cfg: PredictConfig, folder: ModelFolder | None, cleans: bool) -> None:
    """--input on several processes: started here, once every row and the model folder are checked (`launch`);
    or, under torchrun, this process's share (`predict_share`)."""
    from finetune_bert.inference import sharded  # torch's process group: only for several processes

    if not launched():
        if folder is None:
            ModelFolder.open(cfg.model)  # what is wrong with the model, said before any process starts
        with console.quiet():  # rank 0 says again how the input was read
            _rows(cfg, folder, cleans, cfg.input).check()
        sharded.launch(cfg, "predict", sharded.PREDICTION, parts_of=Path(cfg.output).expanduser())
        return
    n = sharded.predict_share(cfg, lambda share: _rows(cfg, folder, cleans, cfg.input, share),
                              lambda: load(folder or cfg.model, reading=cfg.reading(), backend=cfg.backend,
                                           explaining=cfg.explain))
    console.say(f"{n} predictions written to {Path(cfg.output).expanduser()}")


def explained_line(why: Explanation, k: int) -> str:
    """An explanation under its prediction: what it explains, and its top words with their signed weights."""
    settled = "" if why.converged else f"  (did not converge: the weights miss the change by {why.delta:.0%})"
    return f"\t{why.label}: {why.compact(k) or '(no words)'}{settled}"


def pair_argument(text: str, i: int) -> dict[str, str]:
    """A text pair given on the command line, in the Hugging Face form {"text": ..., "text_pair": ...}."""
    try:
        item = json.loads(text)
    except ValueError:
        item = None
    if not (isinstance(item, dict) and set(item) == {"text", "text_pair"}
            and all(isinstance(v, str) and visible(v) for v in item.values())):
        raise UserError(f'text {i}: this model reads text pairs; give each as JSON, e.g. '
                        f'\'{{"text": "A man plays.", "text_pair": "Someone is playing."}}\'')
    return item


def _opened(model: str) -> tuple[ModelFolder | None, bool]:
    """The model's folder and whether it cleans texts; (None, True) when the model itself is wrong, which
    load() then says, after every other problem has been found."""
    try:
        folder = ModelFolder.open(model)
        return folder, folder.info.clean
    except UserError:
        return None, True


def _as_utf8(texts: tuple[str, ...]) -> tuple[str, ...]:
    """Texts given as arguments in bytes that are not UTF-8 (Latin-1 from a shell) reach Python as lone
    surrogates, which no tokenizer or file takes: each such byte becomes U+FFFD, and the user is told."""
    repaired = []
    for i, text in enumerate(texts, start=1):
        fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if LONE_SURROGATE.search(text) \
            else text
        if fixed != text:
            console.note(f"text {i}: bytes that are not UTF-8 were replaced by U+FFFD ({fixed!r}); give texts in "
                         "UTF-8 (a terminal set to a UTF-8 locale)")
        repaired.append(fixed)
    return tuple(repaired)



def _empty_texts(texts: tuple[str, ...], cleans: bool) -> list[str]:
    """Texts given as arguments that leave the model nothing but [CLS] [SEP], as the model cleans them."""
    return [f"text {i} ({text!r}) has nothing to classify{' once cleaned' if cleans else ''}; give a text with words "
            "in it" for i, text in enumerate(texts, start=1)
            if not visible(clean_text(text) if cleans else text)]
