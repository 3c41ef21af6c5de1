"""Fine-tuning: one `_setup_*` per stage, then the whole loop on one screen.

The engine is our own loop on plain PyTorch (see README, "Design"): batches are a pure function of
(seed, epoch), the learning rate a pure function of the step, and each optimizer step's batch is split
into micro-batches whose losses are summed and divided by the step's example count, so splitting it
finer (gradient accumulation, out-of-memory backoff) does not change the update.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finetune_bert.config import TrainConfig, greater_is_better
from finetune_bert.data import Dataset, load_dataset, write_skipped
from finetune_bert.encoding import Encoded, collate, train_batches
from finetune_bert.errors import UserError
from finetune_bert.evaluate import format_metrics, run_eval
from finetune_bert.model import autocast_dtype, load_classifier, load_model_config, load_tokenizer, pick_device
from finetune_bert.output import RunFolder, model_card, say
from finetune_bert.report import format_report, prepare, save_report


@dataclass
class TrainResult:
    output: str
    metrics: dict[str, Any]
    best_step: int


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up from 0 to `peak`, then linear decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def _setup_data(cfg: TrainConfig, ds: Dataset, tokenizer, model_config, run: RunFolder) -> tuple[dict[str, Encoded], dict]:
    encoded, report = prepare(cfg, ds, tokenizer, model_config)
    say(format_report(report))
    save_report(report, run.path)
    run.own("data_report.json", "data_report.txt")
    if ds.skipped:
        run.own("skipped_rows.csv")
        write_skipped(ds.skipped, run.path / "skipped_rows.csv")
        say(f"warning: {len(ds.skipped)} bad rows skipped; each is listed with its reason in "
            f"{run.path / 'skipped_rows.csv'}")
    for i in range(min(2, len(ds.train))):
        ids = encoded["train"].ids[i]
        say(f"sample {i}: label {ds.label_names[encoded['train'].labels[i]]!r}, {len(ids)} tokens: "
            f"{tokenizer.decode(ids[:24])} ... {tokenizer.decode(ids[-8:])}")
    return encoded, report


def _setup_model(cfg: TrainConfig, label_names: list[str], device: torch.device):
    torch.manual_seed(cfg.seed)  # the classifier head's initialisation
    model = load_classifier(cfg.model, label_names, cfg.trust_remote_code)
    return model.to(device).train()


def _setup_optimizer(cfg: TrainConfig, model, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, with no weight decay on biases and LayerNorm weights (every 1-D parameter)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused, foreach=None if fused else True)


def _class_weights(cfg: TrainConfig, labels: np.ndarray, k: int, device: torch.device) -> torch.Tensor | None:
    if cfg.class_weights != "auto":
        return None
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32, device=device)


def _is_better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value > best if greater_is_better(metric) else value < best


def train(cfg: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data`; the best model by `cfg.metric` ends up in `cfg.output`."""
    cfg = dataclasses.replace(cfg or TrainConfig(), **overrides)
    if problems := cfg.problems():
        raise UserError("; ".join(problems))
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    started = time.time()
    say("config: " + json.dumps({k: v for k, v in cfg.to_json().items() if v not in (None, False)}))
    # Cheap checks first, so a bad row or a missing model fails in seconds and leaves nothing behind.
    RunFolder.check(cfg.output, cfg.overwrite)
    ds = load_dataset(cfg)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model_config = load_model_config(cfg.model, cfg.trust_remote_code)
    run = RunFolder(cfg.output, cfg.overwrite)
    run.write_text("run_config.json", json.dumps(cfg.to_json(), indent=2) + "\n")
    device = pick_device()
    dtype = autocast_dtype(device, cfg.bf16)
    enc, report = _setup_data(cfg, ds, tokenizer, model_config, run)
    model = _setup_model(cfg, ds.label_names, device)
    optimizer = _setup_optimizer(cfg, model, device)
    weights = _class_weights(cfg, enc["train"].labels, len(ds.label_names), device)
    run_info = {"max_length": report["max_length"], "truncation": cfg.truncation, "head_tokens": cfg.head_tokens,
                "clean": cfg.clean, "raw_labels": ds.raw_labels, "label_names": ds.label_names,
                "base_model": cfg.model}

    train_enc, lengths = enc["train"], enc["train"].lengths
    step_size = cfg.batch_size * cfg.grad_accum
    if len(train_enc) < step_size:
        say(f"note: {len(train_enc)} training rows are fewer than one batch of {step_size}: every step uses all of them")
    steps_per_epoch = math.ceil(len(train_enc) / step_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    warmup = math.ceil(cfg.warmup_ratio * total)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    multiple = 8 if device.type == "cuda" else 1
    say(f"training {cfg.model} on {device.type}{' with bf16' if dtype else ', fp32'}: {len(train_enc)} texts, "
        f"{total} steps of {step_size} ({steps_per_epoch} per epoch), warm-up {warmup}")
    run.log("start", device=device.type, steps=total, examples=len(train_enc), labels=ds.label_names)

    def evaluate_now(step: int, epoch: float) -> dict[str, Any]:
        m = run_eval(model, enc["validation"], ds.label_names, cfg.eval_batch_size, device, dtype, pad_id)
        run.log("eval", step=step, epoch=round(epoch, 3), **{k: m[k] for k in ("accuracy", "f1_macro", "loss")})
        say(f"step {step} (epoch {epoch:.2f}): validation accuracy {m['accuracy']:.4f}, "
            f"macro F1 {m['f1_macro']:.4f}, loss {m['loss']:.4f}")
        return m

    from tqdm.auto import tqdm
    # A live bar on a terminal; in a log file or CI, plain lines at each log record instead.
    bar = tqdm(total=total, desc="train", unit="step", mininterval=1.0, dynamic_ncols=True,
               disable=not sys.stderr.isatty())
    step, best, best_step, stale, history = 0, None, 0, 0, []
    best_metrics: dict[str, Any] = {}
    tokens_seen, loss_window, t_train = 0, [], time.time()
    epoch = 0
    while step < total:
        for batch_index in train_batches(lengths, step_size, cfg.seed, epoch, cfg.group_by_length):
            lr = lr_at(step, total, warmup, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss = 0.0
            for micro in np.array_split(batch_index, min(cfg.grad_accum, len(batch_index))):
                batch = {k: v.to(device, non_blocking=True) for k, v in collate(train_enc, micro, pad_id, multiple).items()}
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = F.cross_entropy(logits.float(), batch["labels"], weight=weights, reduction="sum") / len(batch_index)
                loss.backward()
                step_loss += loss.item()
                tokens_seen += int(batch["attention_mask"].sum())
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_window.append(step_loss)
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                rate = tokens_seen / max(time.time() - t_train, 1e-9)
                run.log("train", step=step, loss=float(np.mean(loss_window)), lr=lr, tokens_per_s=round(rate, 1))
                bar.set_postfix(loss=f"{np.mean(loss_window):.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:.0f}")
                if bar.disable:
                    say(f"step {step}/{total}: loss {np.mean(loss_window):.4f}, lr {lr:.2e}, {rate:.0f} tokens/s")
                loss_window = []
            epoch_done = step % steps_per_epoch == 0 or step == total
            if epoch_done or (cfg.eval_every and step % cfg.eval_every == 0):
                m = evaluate_now(step, step / steps_per_epoch)
                history.append({"step": step, **{k: m[k] for k in ("accuracy", "f1_macro", "loss", "roc_auc")}})
                if _is_better(m[cfg.metric], best, cfg.metric):
                    best, best_step, best_metrics, stale = m[cfg.metric], step, m, 0
                    run.save_model(model, tokenizer, run_info)
                else:
                    stale += 1
                if cfg.patience and stale >= cfg.patience:
                    say(f"early stop: no {cfg.metric} improvement in {stale} evaluations")
                    total = step
            if step >= total:
                break
        epoch += 1
    bar.close()
    train_seconds = time.time() - t_train

    if best_step != step:  # the last weights are not the best: score the best on test
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(run.path / "model.safetensors"), device=str(device)), strict=False)
    metrics: dict[str, Any] = {"validation": best_metrics, "best_step": best_step, "history": history,
                               "train": {"steps": step, "seconds": round(train_seconds, 1),
                                         "tokens_per_s": round(tokens_seen / max(train_seconds, 1e-9), 1),
                                         "examples": len(train_enc)}}
    if "test" in enc:
        metrics["test"] = run_eval(model, enc["test"], ds.label_names, cfg.eval_batch_size, device, dtype, pad_id)
        say(format_metrics(metrics["test"], f"test ({metrics['test']['n']} texts), best model from step {best_step}"))
    metrics["seconds_total"] = round(time.time() - started, 1)
    run.write_text("metrics.json", json.dumps(metrics, indent=2) + "\n")
    run.write_text("README.md", model_card(cfg, report, metrics))
    run.log("end", step=step, best_step=best_step, seconds=metrics["seconds_total"])
    run.close()
    say(f"model saved to {run.path} (best {cfg.metric} {best:.4f} at step {best_step}); "
        f"training took {train_seconds:.0f}s")
    return TrainResult(str(run.path), metrics, best_step)
