"""A smaller model from a model's own layers: which encoder layers are kept, and the model cut down to them.

DistilBERT's student was initialised from BERT's own layers (one in two): a model made of a model's layers starts
where that model's representations are, and needs far less training than random layers would. `distill
--student-layers` and `prune --keep-layers` both cut a classifier this way; what is left is an ordinary model of
its architecture, whose config says its new depth, so any tool opens the folder it is saved to."""

from __future__ import annotations

from finetune_bert.errors import UserError

LAYER_PICKS = ("first", "spread")


def pick_layers(total: int, keep: int, how: str = "first") -> list[int]:
    """Which of `total` layers (counted from 0) a model of `keep` layers is made of: the first `keep` (the top
    ones dropped), or `spread`: every (total / keep)-th, ending with the last (6 of 12: 1, 3, 5, 7, 9, 11)."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers")
    if how == "first":
        return list(range(keep))
    if how == "spread":
        return [(i + 1) * total // keep - 1 for i in range(keep)]
    raise ValueError(f"unknown layer pick {how!r}; one of {', '.join(LAYER_PICKS)}")


def encoder_layers(model):
    """The module list of a classifier's encoder layers and the module holding it (BERT, RoBERTa, ELECTRA and
    their kin: encoder.layer; DistilBERT: transformer.layer), or None where there is no such list."""
    base = getattr(model, "base_model", model)
    for holder_name in ("encoder", "transformer"):
        holder = getattr(base, holder_name, None)
        layers = getattr(holder, "layer", None)
        if holder is not None and hasattr(layers, "__getitem__") and hasattr(layers, "__len__"):
            return holder, layers
    return None


def keep_layers(model, keep: int, how: str = "first", *, option: str = "--student-layers") -> list[int]:
    """Cut `model` (in place) down to `keep` of its encoder layers, picked by `how` (pick_layers), and make its
    config say so: saved, it is an ordinary folder of `keep` layers. Returns the layers kept (counted from 0 in
    the model as it was). `option`: how the user asked, for a refusal."""
    import torch

    found = encoder_layers(model)
    if found is None:
        raise UserError(f"{option}: {type(model).__name__} keeps its layers where finetune-bert cannot cut them; "
                        "BERT-family encoders (BERT, RoBERTa, ELECTRA, DistilBERT, MiniLM, ...) can be")
    holder, layers = found
    if not 1 <= keep <= len(layers):
        raise UserError(f"{option} {keep}: the model has {len(layers)} layers; keep 1 to {len(layers)}")
    kept = pick_layers(len(layers), keep, how)
    holder.layer = torch.nn.ModuleList([layers[i] for i in kept])
    for position, layer in enumerate(holder.layer):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # attention caches are keyed by it: the layer's new place
                module.layer_idx = position
    model.config.num_hidden_layers = keep
    return kept
