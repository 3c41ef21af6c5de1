"""LoRA through the peft library, kept inside the engine so that what leaves it is always an ordinary model.

The adapters are injected into the Hugging Face model in place (`peft.inject_adapter_in_model`), so the model
keeps its class and the fast path (fastpath.py) runs it unchanged: a LoRA layer is still a module that maps
hidden states to hidden states. The base weights are frozen; the adapters and the head (every parameter
outside the base model, and its pooler) are trained in full, since a new task's head starts from random.

What is saved is never a peft folder. peft users lose the classification head on save or load (peft #310,
#577, #1070) because the head lives outside the adapter; here every saved model is the base weights with each
adapter's product added in (`merged_state`), under the plain model's names, so `transformers.pipeline`, every
backend, export, calibration and serve read it as any other folder. Checkpoints hold only the trained tensors
(`trained_state`): the base weights come back from --model at a resume, which the run fingerprint pins.
The adapter alone can also be written in peft's own format (`save_adapter`), head included, for those who
keep one base model and swap adapters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from finetune_bert.errors import UserError
from finetune_bert.safefiles import public_mode

ADAPTER = "default"      # peft's name for the one adapter a model has here
ADAPTER_DIR = "adapter"  # OUTPUT/adapter: the adapter in peft's format (--lora-save-adapter)


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA paper's GLUE settings by default: rank 8, alpha 16, on the attention's query and value."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "value")

    def peft_config(self, head: list[str] | None = None):
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), modules_to_save=head)


def add_lora(model: torch.nn.Module, settings: LoraSettings) -> None:
    """Inject the adapters into `model` in place, freeze its base weights, and leave the head trainable."""
    from peft import inject_adapter_in_model

    try:
        inject_adapter_in_model(settings.peft_config(), model, adapter_name=ADAPTER)
    except ValueError as exc:
        if "target" not in str(exc).lower():
            raise
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(f"--lora-targets {','.join(settings.targets)}: no such layers in this model; its linear "
                        f"layers are named {', '.join(names)}") from None
    head = head_names(model)
    for name, param in model.named_parameters():
        if name in head:
            param.requires_grad_(True)


def head_names(model: torch.nn.Module) -> set[str]:
    """The parameters trained in full beside the adapters: every one outside the base model (the classifier;
    DistilBERT's pre-classifier; RoBERTa's dense and out_proj) and the base model's pooler, which BERT's
    classifier reads and a sentence-embedding checkpoint may never have trained."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return {n for n, _ in model.named_parameters()
            if "lora_" not in n and (not n.startswith(prefix) or ".pooler." in n)}


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def has_lora(model: torch.nn.Module) -> bool:
    return bool(lora_layers(model))


def merged_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain model this LoRA model computes: each adapted layer's base weight plus its
    adapter's product (scaled by alpha / rank), under the layer's own name; the adapters' tensors dropped."""
    layers = lora_layers(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        owner, _, leaf = key.rpartition(".base_layer.")
        if owner in layers and leaf == "weight":
            with torch.no_grad():
                delta = layers[owner].get_delta_weight(ADAPTER)
            value = value.detach() + delta.to(value.dtype)
        out[key.replace(".base_layer.", ".")] = value.detach()
    return out


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: the tensors being trained (adapters and head), under the LoRA model's names."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def merge_in_place(model: torch.nn.Module) -> None:
    """Fold every adapter into its layer's weight and put the plain layer back: from here the model is the
    ordinary one it saves as (the end of training: calibration, test and the reports run on it)."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer.merge(adapter_names=[ADAPTER])
        setattr(parent, child, layer.get_base_layer())
    for param in model.parameters():
        param.requires_grad_(True)


def save_adapter(model: torch.nn.Module, settings: LoraSettings, folder: Path, base_model: str) -> None:
    """The adapter in peft's format (adapter_config.json, adapter_model.safetensors), the head as peft's
    `modules_to_save`, so `PeftModel.from_pretrained(base, folder)` gives the same classifier. Written while
    the model still holds its adapters (before `merge_in_place`)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    head = head_names(model)
    # the modules peft keeps whole: the pooler, and each top-level module outside the base model
    config = settings.peft_config(sorted({"pooler" if ".pooler." in n else n.split(".")[0] for n in head}))
    config.base_model_name_or_path = base_model
    config.task_type = "SEQ_CLS"
    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    state.update({n: p.detach() for n, p in model.named_parameters() if n in head})
    folder.mkdir(parents=True, exist_ok=True)
    # each file written beside its place and renamed over it: a crash leaves the previous best adapter whole
    tmp = folder / ".adapter_model.safetensors.tmp"
    save_file({f"base_model.model.{k}": v.contiguous().cpu().float() for k, v in state.items()}, str(tmp))
    _publish(tmp, folder / "adapter_model.safetensors")
    tmp = folder / ".adapter_config.json.tmp"
    tmp.write_text(json.dumps(config.to_dict(), indent=2, default=list) + "\n", encoding="utf-8")
    _publish(tmp, folder / "adapter_config.json")


def _publish(tmp: Path, path: Path) -> None:
    """`tmp` renamed over `path`, readable as the model folder's files are (safetensors writes 0600)."""
    tmp.chmod(public_mode())
    tmp.replace(path)


def set_adapter_head(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    """The adapter's head tensors replaced by a saved model's (`weights`, plain names): calibration and a
    regression's target scaling are folded into the head after training, and the adapter must give what the
    saved folder gives."""
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    state = load_file(str(path))
    prefix = "base_model.model."
    for key in state:
        name = key[len(prefix):]
        if ".lora_" not in name and name in weights:
            state[key] = weights[name].detach().contiguous().cpu().float()
    tmp = path.with_name(".adapter_model.safetensors.tmp")
    save_file(state, str(tmp))
    _publish(tmp, path)
