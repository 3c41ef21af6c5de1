"""`finetune-bert export`: a fine-tuned model folder as ONNX (fp32, and int8 on request), checked.

The graph is written beside the Hugging Face files, in DIR/onnx/, with a manifest (export.json) that
records the weights it came from and what was measured: fp32 parity with the torch path (refused beyond
1e-4 in any logit) and, for int8, how often its label agrees with fp32's and how far its probabilities
move. `predict`, `evaluate` and `serve` run the fp32 graph by default on a CPU without AMX (`--backend auto`:
inference.backends.choose), and either one by name (`--backend onnx`, `onnx-int8`). `train` calls this at the end
of a run, for the fp32 graph (training/exported.py).

onnx/ is owned as `train` owns its output folder: the manifest lists every file export wrote there (before
writing it), and a folder holding anything else (another tool's export: Optimum and transformers.js use
onnx/model.onnx and onnx/tokenizer.json) is refused unless --overwrite. Export never writes into an
installed package or the Hugging Face cache: such a model (--model minilm) is exported with --output DIR,
into a copy. Every input is checked before the first graph is written.

The TorchScript exporter (dynamo=False) is used: it handles dynamic batch and sequence axes for BERT,
where the dynamo path still fails on dimensions of size 0 or 1 (huggingface/optimum#2219).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune_bert.engine.torch_engine import Engine
from finetune_bert.errors import UserError, refuse
from finetune_bert.console import console
from finetune_bert.engine.model_folder import ModelFolder
from finetune_bert.export.config import ExportConfig
from finetune_bert.export.target import copy_model, export_folder, model_folder, output_folder, own
from finetune_bert.safefiles import installed_or_cache
from finetune_bert.engine import fastpath, onnx_tokenizer
from finetune_bert.engine.onnx_engine import (EXPORT_DIR, FILES, MANIFEST, SOURCES, TOOL, ExportedConfig,
                                              OnnxEngine, graph_stamp, head_record, owned_files, weights_stamp)
from finetune_bert.safefiles import disk_error, write_text_atomic
from finetune_bert.data.tokens import Encoded, pad_id, pair_template, special_tokens
from finetune_bert.data.labels import LabelSpec
from finetune_bert.tasks import CLASSIFICATION, DEFAULT_THRESHOLD, MULTI_LABEL, activate, task_of_config


PARITY_TOLERANCE = 1e-4  # the largest |logit difference| an fp32 export may have from the torch path


PROBES = 64              # random token sequences the export is checked on (lengths 1 to the max length)


OPSET = 17               # LayerNormalization is a single op from 17 on


class _Logits(torch.nn.Module):
    """The classifier as a function of (input_ids, attention_mask) to logits, and of token_type_ids too for a
    model trained on text pairs: the graph's signature. The engine's fast path is traced (its last layer for
    [CLS] alone), stock forward for other architectures."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        return fastpath.logits(self.model, batch, train=False)


def export(cfg: ExportConfig | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Export a local model folder to DIR/onnx/ and say what was written and measured; `quantize="int8"` adds
    dynamic int8 with per-channel weights, `data` texts (labelled or not) to measure the export on as well,
    its first `rows` rows; `output` a new folder to export a copy of the model into. Takes an ExportConfig or
    its options as keywords (`export(model, quantize="int8")` is the same). Returns the manifest written to
    onnx/export.json."""
    if isinstance(cfg, str):  # the model, given first as it always could be
        cfg, overrides = None, {"model": cfg, **overrides}
    cfg = dataclasses.replace(cfg or ExportConfig(), **overrides)
    refuse(cfg.problems())
    model = ModelFolder.open(cfg.model)
    folder = model_folder(model)
    destination, rows = _checked(model, folder, cfg)
    manifest = _export(model, destination, cfg, rows)
    console.say(describe(manifest, cfg.output or cfg.model))
    return manifest


def _checked(model: ModelFolder, folder: Path, cfg: ExportConfig) -> tuple[Path, Any]:
    """Where the export goes, and the --data rows: every check before anything is loaded or written (a folder
    export must not write in, files it would replace, the data), all said at once."""
    destination = Path(cfg.output).expanduser() if cfg.output is not None else folder
    found = []
    where = installed_or_cache(destination)
    if where is not None and cfg.output is None:
        found.append(f"--model {model}: is inside {where}, which export never writes into; pass --output DIR to "
                     "export a copy of the model into a new folder")
    elif where is not None:
        found.append(f"--output {cfg.output}: is inside {where}, which export never writes into; choose another folder")
    else:
        checks = [lambda: export_folder(destination, "--output" if cfg.output else "--model", cfg.overwrite)]
        if cfg.output is not None:
            checks.insert(0, lambda: output_folder(folder, destination, cfg.overwrite))
        for check in checks:
            try:
                check()
            except UserError as exc:
                found.append(str(exc))
    rows = None
    if cfg.data is not None:
        from finetune_bert.inference.files import input_rows

        try:
            info = model.info  # a pair model's rows are pairs, read from training's columns
            columns = (info.text_column, None, info.pair_column) if info.pair_column else (None, None)
            rows = input_rows(cfg.data, columns, rows_per_chunk=cfg.rows, on_bad_rows="skip",
                              spec=LabelSpec(info.task, info.label_separator))
            rows.check()
        except UserError as exc:
            found.append(f"--data {exc}" if not str(exc).startswith("--") else str(exc))
    refuse(found)
    return destination, rows


def _export(model: ModelFolder, folder: Path, cfg: ExportConfig, rows) -> dict[str, Any]:
    """The export into `folder`: the model's own, or --output's, which gets a copy of the model once it has
    loaded (a damaged model copies nothing)."""
    tokenizer = model.tokenizer()
    notes: list[str] = []
    classifier = model.classifier(notes=notes, attn_implementation="eager").eval()
    for note in notes:  # an untrained head: said now, recorded, and said again by every ONNX load
        console.warn(note)
    head = head_record(notes, model.name)
    if folder != model.path:
        model = copy_model(model.path, folder, cfg.output)
    pad, pairs = pad_id(tokenizer), model.info.pair_column is not None
    max_length = model.max_length(tokenizer, classifier.config)
    target = folder / EXPORT_DIR
    earlier = owned_files(folder) or set()
    graphs = [FILES["onnx"], *([FILES["onnx-int8"]] if cfg.quantize else [])]
    own(folder, earlier | {*graphs, onnx_tokenizer.FILE, MANIFEST})
    try:
        fp32 = _write_graph(classifier, target / FILES["onnx"], pad, pairs)
    except OSError as exc:
        raise disk_error(exc, target, "write the export") from None
    probes = (_pair_probes if pairs else _probes)(tokenizer, classifier.config, max_length)
    reference = Engine(classifier, torch.device("cpu"), pad).logits(probes, 16).numpy()
    gap = float(np.abs(OnnxEngine(fp32, classifier.config, pad).logits(probes, 16) - reference).max())
    if gap > PARITY_TOLERANCE:
        fp32.unlink()
        raise UserError(f"--model {model}: the ONNX graph's logits differ from torch's by {gap:.2e} (over "
                        f"{PARITY_TOLERANCE:g}); not exported. Rerun with --debug and report it")
    manifest: dict[str, Any] = {"tool": TOOL, "format": cfg.format, "opset": OPSET, "weights": weights_stamp(folder),
                                "files": [FILES["onnx"]], "graphs": {FILES["onnx"]: graph_stamp(fp32)},
                                "head": head, "probes": PROBES,
                                "onnx": {"max_abs_logit_diff": gap}, **_standalone(tokenizer, classifier, folder)}
    if cfg.quantize == "int8":
        int8 = _quantize(fp32, target / FILES["onnx-int8"])
        manifest["files"].append(FILES["onnx-int8"])
        manifest["graphs"][FILES["onnx-int8"]] = graph_stamp(int8)
        manifest["onnx-int8"] = _agreement(OnnxEngine(int8, classifier.config, pad).logits(probes, 16),
                                           reference, task_of_config(classifier.config), model.info.thresholds)
    manifest["owned"] = sorted({*graphs, MANIFEST, *([onnx_tokenizer.FILE] if "tokenizer" in manifest else [])})
    write_text_atomic(target / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    for stale in earlier & {*FILES.values(), onnx_tokenizer.FILE} - set(manifest["owned"]):
        (target / stale).unlink(missing_ok=True)  # an earlier export's, not written again: never left unowned
    if rows is not None:  # scored through the export just recorded, as predict will score
        manifest["on_data"] = _on_data(model, cfg.data, rows, ["onnx", *(["onnx-int8"] if cfg.quantize else [])])
        write_text_atomic(target / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _standalone(tokenizer, classifier, folder: Path) -> dict[str, Any]:
    """What lets predict run the export without transformers: the config as transformers read it, and the
    Rust tokenizer where it gives the HF tokenizer's ids (onnx_tokenizer.save); the files they came from."""
    found: dict[str, Any] = {"config": ExportedConfig.of(classifier.config).as_json(),
                             "sources": onnx_tokenizer.stamps(folder, SOURCES)}
    saved = onnx_tokenizer.save(tokenizer, folder / EXPORT_DIR / onnx_tokenizer.FILE)
    if saved is not None:
        found["tokenizer"] = saved
    return found


def _write_graph(classifier, path: Path, pad_id: int, pairs: bool = False) -> Path:
    """The fp32 graph with dynamic batch and sequence axes, written whole or not at all; `pairs`: a
    token_type_ids input as well (a model trained on text pairs; any other keeps the two inputs it had)."""
    sample = torch.full((2, 8), pad_id, dtype=torch.long)
    mask = torch.ones_like(sample)
    mask[1, 5:] = 0  # a padded row, so the mask path is traced as it runs
    inputs = {"input_ids": sample, "attention_mask": mask}
    if pairs:
        inputs["token_type_ids"] = (torch.arange(8) >= 4).long().expand(2, 8).contiguous()
    partial = path.with_name(path.name + ".partial")
    axes = {**{name: {0: "batch", 1: "sequence"} for name in inputs}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings concern shapes the dynamic axes cover
        torch.onnx.export(_Logits(classifier).eval(), tuple(inputs.values()), str(partial), input_names=list(inputs),
                          output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    os.replace(partial, path)
    return path


def _quantize(fp32: Path, path: Path) -> Path:
    """Dynamic int8: weights per output channel, activations quantized batch by batch (u8, which VNNI's
    u8 x s8 dot product takes)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    partial = path.with_name(path.name + ".partial")
    logging.disable(logging.WARNING)  # onnxruntime advises pre-processing the graph: not the user's to act on
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(fp32), str(partial), per_channel=True, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    os.replace(partial, path)
    return path


def _probes(tokenizer, config, max_length: int) -> Encoded:
    """PROBES seeded random token sequences, framed by the model's special tokens, of lengths spread from
    one token to the max length: the parity check covers short, long and padded rows."""
    prefix, suffix = special_tokens(tokenizer)
    rng = np.random.default_rng(0)
    vocab = int(getattr(config, "vocab_size", len(tokenizer)))
    budget = max(1, max_length - len(prefix) - len(suffix))
    lengths = np.unique(np.linspace(1, budget, PROBES).astype(int))
    ids = [np.array(prefix + rng.integers(0, vocab, n).tolist() + suffix, dtype=np.int32) for n in lengths]
    return Encoded(ids, np.array([len(x) for x in ids]), None)


def _pair_probes(tokenizer, config, max_length: int) -> Encoded:
    """As `_probes`, for a model trained on text pairs: random pairs in the tokenizer's pair template, with
    its token type ids, each cut at a random point between its two texts."""
    template = pair_template(tokenizer)
    rng = np.random.default_rng(0)
    vocab = int(getattr(config, "vocab_size", len(tokenizer)))
    budget = max(2, max_length - template.added)
    ids, types = [], []
    for n in np.unique(np.linspace(2, budget, PROBES).astype(int)):
        first = int(rng.integers(1, n))
        ids.append(template.ids(rng.integers(0, vocab, first).tolist(), rng.integers(0, vocab, n - first).tolist()))
        types.append(template.type_ids(first, n - first))
    return Encoded(ids, np.array([len(x) for x in ids]), None, types)


def _on_data(model: ModelFolder, data: str, chunks, backends: list[str]) -> dict[str, Any]:
    """Each backend's labels against torch's on the first chunk of `data` (checked: --rows rows), read as
    predict reads them; accuracy too where the rows have labels the model knows."""
    from finetune_bert.inference.classifier import load

    split = next(iter(chunks))
    reference = load(model, device="cpu", backend="torch-fp32")

    def logits_of(clf) -> np.ndarray:
        return clf.logits_of([clf.prepare(split.texts, pairs=split.pairs)[0]])

    torch_logits, task = logits_of(reference), reference.task
    truth = None
    if split.labels is not None and task == CLASSIFICATION:  # accuracy: of one class per text
        to_id = reference.labels.to_id
        ids = [to_id.get(v, to_id.get(str(v))) for v in split.labels]
        truth = np.array(ids) if None not in ids else None
    found: dict[str, Any] = {"data": data, "rows": len(split.texts), "backends": {}}
    if truth is not None:
        found["torch_accuracy"] = float((torch_logits.argmax(1) == truth).mean())
    for backend in backends:
        logits = logits_of(load(model, device="cpu", backend=backend))
        seen = _agreement(logits, torch_logits, task, tuple(reference.thresholds))
        if truth is not None:
            seen["accuracy"] = float((logits.argmax(1) == truth).mean())
        found["backends"][backend] = seen
    return found


def _agreement(logits: np.ndarray, reference: np.ndarray, task: str = CLASSIFICATION,
               thresholds: tuple[float, ...] | None = None) -> dict[str, float]:
    """How far `logits` move from `reference` in what the task reads of them (tasks.activate: probabilities,
    a probability per label, or the predicted values), and how often the decision agrees: the class, or each
    label's at its threshold (the run's, else the default). A regression has no label to agree on, so that
    one is left out."""
    probs, ref = activate(logits, task), activate(reference, task)
    found = {}
    if task == CLASSIFICATION:
        found["label_agreement"] = float((probs.argmax(1) == ref.argmax(1)).mean())
    elif task == MULTI_LABEL:
        cut = np.asarray(thresholds if thresholds is not None else DEFAULT_THRESHOLD, dtype=np.float32)
        found["label_agreement"] = float(((probs >= cut) == (ref >= cut)).mean())
    return {**found, "max_abs_prob_diff": float(np.abs(probs - ref).max()),
            "max_abs_logit_diff": float(np.abs(logits - reference).max())}


def describe(manifest: dict[str, Any], folder: str) -> str:
    """What the export wrote and measured, for the terminal."""
    lines = [f"exported to {Path(folder) / EXPORT_DIR}: {', '.join(manifest['files'])}",
             f"  onnx fp32: max |logit - torch's| {manifest['onnx']['max_abs_logit_diff']:.1e} on "
             f"{manifest['probes']} random sequences"]
    if "onnx-int8" in manifest:
        q = manifest["onnx-int8"]
        lines.append(f"  onnx int8: label agrees with fp32 on {q['label_agreement']:.1%} of the random sequences, "
                     f"max |prob diff| {q['max_abs_prob_diff']:.3f}" if "label_agreement" in q else
                     f"  onnx int8: max |value - fp32's| {q['max_abs_prob_diff']:.3f} on the random sequences")
    lines.append(f"  tokenizer: the same ids as transformers' on {len(onnx_tokenizer.PROBE_TEXTS)} test texts; predict "
                 "starts without importing torch or transformers" if "tokenizer" in manifest else
                 "  tokenizer: differs from transformers' on a test text; predict loads transformers' (slower start)")
    for backend, seen in manifest.get("on_data", {}).get("backends", {}).items():
        acc = f", accuracy {seen['accuracy']:.2%} (torch {manifest['on_data']['torch_accuracy']:.2%})" \
            if "accuracy" in seen else ""
        agrees = f"agrees with torch on {seen['label_agreement']:.2%}" if "label_agreement" in seen else \
            f"max |value - torch's| {seen['max_abs_prob_diff']:.2e}"
        lines.append(f"  on {manifest['on_data']['rows']} rows of {manifest['on_data']['data']}: {backend} {agrees}{acc}")
    lines.append(f"use it: finetune-bert predict --model {folder} ... (the default runs the fp32 graph on a CPU "
                 "without AMX)" + (", or --backend onnx-int8 for int8" if "onnx-int8" in manifest else ""))
    return "\n".join(lines)
