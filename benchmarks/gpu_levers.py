"""Each GPU speed lever measured on its own, in one process, on the same batches of the same reviews.

For benchmarks/NOTES.md (predicted vs measured). A randomly initialised bert-base (speed does not depend on
the weights), the bundled bert-base-uncased tokenizer, IMDB train reviews tokenized by finetune-bert's
`encode` (head+tail, max length 512), batches from its length-grouped `train_batches`. Every variant starts
from the same weights and runs the same steps; time is taken between device synchronisations.

    python benchmarks/gpu_levers.py --data .devdata/imdb --tokenizer .devdata/tokenizer --out $OUT/levers.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from finetune_bert import fastpath  # noqa: E402
from finetune_bert.tokens import encode
from finetune_bert.batches import Layout, to_device, train_batches  # noqa: E402

HERE = Path(__file__).resolve().parent
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of the script itself, not a measurement


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def load(path: Path, n: int, seed: int = 0):
    import pandas as pd
    frame = pd.read_csv(path)
    order = np.random.default_rng(seed).permutation(len(frame))[:n]
    return frame["text"].iloc[order].tolist(), frame["label"].iloc[order].astype(int).tolist()


def matmul_peak(n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        a @ b
        end.record()
        sync()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / float(np.median(times)) / 1e12


def bert_config(**kw):
    from transformers import BertConfig
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if DEV == "cpu" else {}
    return BertConfig(num_labels=2, **tiny, **kw)


def make_model(state: dict, attn: str):
    from transformers import BertForSequenceClassification
    model = BertForSequenceClassification(bert_config(attn_implementation=attn))
    model.load_state_dict(state)
    return model.to(DEV).train()


def bf16_with_masters(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Cast `model` to bf16 in place; return its parameters and fp32 master copies with gradient buffers
    (a step copies the gradients in, steps the masters, and copies them back)."""
    masters = [p.detach().float().clone() for p in model.parameters()]
    for m in masters:
        m.grad = torch.zeros_like(m)
    model.to(torch.bfloat16)
    return list(model.parameters()), masters


def train_variant(name: str, enc, state: dict, *, batch: int, steps: int, warm: int, bf16: bool = True,
                  attn: str = "sdpa", fused: bool = True, host_sync: bool = True, compile_mode: str | None = None,
                  fast: bool = True, multiple: int = 8, pin: bool = False, packed: bool = False,
                  master: bool = False) -> dict:
    """`master`: the model's weights are bf16 and the optimizer updates fp32 master copies, which are cast
    back in one foreach copy per step; no autocast, so no per-weight cast kernels in forward and backward."""
    torch.manual_seed(0)
    model = make_model(state, attn)
    params = list(model.parameters())
    if master:
        params, masters = bf16_with_masters(model)
    stepped = masters if master else params
    decay = [p for p in stepped if p.ndim >= 2]
    rest = [p for p in stepped if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=5e-5, fused=fused, foreach=None if fused else True)
    dtype = torch.bfloat16 if bf16 and not master else None

    layout = Layout(0, multiple, packed, fast)

    def loss_of(batch):
        with torch.autocast(DEV, dtype=dtype, enabled=dtype is not None):
            logits = fastpath.logits(model, batch, fast)
        return F.cross_entropy(logits.float(), batch["labels"])

    fn = loss_of
    if compile_mode:
        fn = torch.compile(loss_of, dynamic=True, mode=None if compile_mode == "default" else compile_mode)
    batches = train_batches(enc.lengths, batch, 0, 0, True)
    batches = batches[1:1 + warm + steps]  # the epoch's longest batch goes first; the rest are random
    pending = []

    def one(index):
        host = layout.batch(enc, index)
        if pin and DEV == "cuda":
            host = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in host.items()}
        loss = fn(to_device(host, DEV))
        loss.backward()
        if master:
            torch._foreach_copy_([m.grad for m in masters], [p.grad for p in params])
        norm = torch.nn.utils.clip_grad_norm_(stepped, 1.0)
        if host_sync:  # the step as the product ran it: the loss and the norm read on the host every step
            ok = math.isfinite(loss.item()) and bool(torch.isfinite(norm))
            if ok:
                opt.step()
        else:  # on the device: the fused optimizer skips the update itself when found_inf is set
            if fused:  # foreach AdamW has no found_inf: that variant measures speed only
                opt.found_inf = (~(torch.isfinite(loss) & torch.isfinite(norm))).float()
            opt.step()
        pending.append(loss.detach())
        if master:
            with torch.no_grad():
                torch._foreach_copy_(params, masters)
            model.zero_grad(set_to_none=True)
        else:
            opt.zero_grad(set_to_none=True)

    sync()
    t0 = time.perf_counter()
    for index in batches[:warm]:
        one(index)
    sync()
    warm_s = time.perf_counter() - t0
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for index in batches[warm:]:
        one(index)
    sync()
    seconds = time.perf_counter() - t0
    # Sanity checks that every variant trains the same task: its last losses, and how far the weights moved.
    losses = torch.stack(pending).float().cpu()
    names = [name for name, _ in model.named_parameters()]
    moved = math.sqrt(sum(float((w.float().cpu() - state[k]).pow(2).sum()) for k, w in zip(names, stepped)))
    timed = batches[warm:]
    real = int(sum(enc.lengths[b].sum() for b in timed))
    computed = real if packed else int(sum(len(b) * (-(-int(enc.lengths[b].max()) // multiple) * multiple) for b in timed))
    samples = int(sum(len(b) for b in timed))
    out = {"name": name, "batch": batch, "ms_per_step": 1e3 * seconds / len(timed), "tokens_per_s": real / seconds,
           "samples_per_s": samples / seconds, "epoch_25k_s": 25000 / (samples / seconds),
           "padded": 1 - real / computed, "mean_loss_last10": float(losses[-10:].mean()),
           "weights_moved": moved, "warm_s": warm_s, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0}
    del model, opt
    if DEV == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def eval_variant(name: str, enc, state: dict, *, batch: int, fast: bool = True, packed: bool = False,
                 bf16_weights: bool = False) -> dict:
    """finetune-bert's own evaluation loop (sorted batches, one in flight, logits read back one batch late).
    `bf16_weights`: the model cast to bf16 once, instead of autocast casting every weight in every batch."""
    from finetune_bert.evaluate import batched_logits
    model = make_model(state, "sdpa").eval()
    dtype = torch.bfloat16 if DEV == "cuda" else None
    if bf16_weights:
        model, dtype = model.to(torch.bfloat16), None
    sync()
    t0 = time.perf_counter()
    n = sum(len(index) for index, _ in batched_logits(model, enc, batch, torch.device(DEV), dtype,
                                                       Layout(0, 8, packed, fast)))
    sync()
    seconds = time.perf_counter() - t0
    del model
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return {"name": name, "batch": batch, "seconds": seconds, "tokens_per_s": float(enc.lengths.sum()) / seconds, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--n", type=int, default=25000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    texts, labels = load(args.data / "train.csv.gz", args.n)
    t0 = time.perf_counter()
    enc = encode(tok, texts, labels, 512, "head+tail")
    tokenize_s = time.perf_counter() - t0
    test_texts, test_labels = load(args.data / "test.csv.gz", args.n, seed=1)
    t0 = time.perf_counter()
    test = encode(tok, test_texts, test_labels, 512, "head+tail")
    test_tokenize_s = time.perf_counter() - t0
    torch.manual_seed(0)
    state = BertForSequenceClassification(bert_config()).state_dict()
    info = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__,
            "peak_tflops": matmul_peak() if DEV == "cuda" else 0.1,
            "n": args.n, "mean_len": float(enc.lengths.mean()), "tokenize_s": tokenize_s,
            "test_tokenize_s": test_tokenize_s, "epoch_real_tokens": int(enc.lengths.sum())}
    print(json.dumps(info), flush=True)
    s = {"steps": args.steps, "warm": args.warm}
    plan = [
        ("fp32-sync-b16", dict(batch=16, bf16=False)),
        ("bf16-sync-b16", dict(batch=16)),  # the product before packed batches
        ("bf16-nosync-b16", dict(batch=16, host_sync=False)),
        ("bf16-nosync-b16-pin", dict(batch=16, host_sync=False, pin=True)),
        ("bf16-nosync-b16-eager", dict(batch=16, host_sync=False, attn="eager")),
        ("bf16-nosync-b16-nofast", dict(batch=16, host_sync=False, fast=False)),
        ("bf16-sync-b32", dict(batch=32)),
        ("bf16-nosync-b32", dict(batch=32, host_sync=False)),
        ("bf16-nosync-b64", dict(batch=64, host_sync=False)),
        ("packed-b16", dict(batch=16, host_sync=False, packed=True)),
        ("packed-b32", dict(batch=32, host_sync=False, packed=True)),
        ("packed-b64", dict(batch=64, host_sync=False, packed=True)),
        ("packed-b32-sync", dict(batch=32, packed=True)),
        ("packed-b32-foreach", dict(batch=32, host_sync=False, packed=True, fused=False)),  # no found_inf: speed only
        ("master-packed-b32", dict(batch=32, host_sync=False, packed=True, master=True)),
        ("master-packed-b64", dict(batch=64, host_sync=False, packed=True, master=True)),
        ("master-padded-b32", dict(batch=32, host_sync=False, master=True)),
        ("bf16-nosync-b16-compile", dict(batch=16, host_sync=False, compile_mode="default", multiple=64)),
        ("bf16-nosync-b32-compile", dict(batch=32, host_sync=False, compile_mode="default", multiple=64)),
        ("bf16-nosync-b16-compile-cg", dict(batch=16, host_sync=False, compile_mode="reduce-overhead", multiple=64)),
    ]
    only = set(filter(None, args.only.split(",")))
    results = []
    for name, kw in plan:
        if only and name.split(" ")[0] not in only:
            continue
        try:
            warm = 40 if "compile" in name else args.warm
            r = train_variant(name, enc, state, **{**s, "warm": warm, **kw})
        except Exception as exc:  # one broken lever must not cost the others' numbers
            r = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(json.dumps(r), flush=True)
        results.append(r)
    for name, kw in [("eval-padded-b64", dict(batch=64)), ("eval-padded-b256", dict(batch=256)),
                     ("eval-packed-b64", dict(batch=64, packed=True)), ("eval-packed-b256", dict(batch=256, packed=True)),
                     ("eval-packed-b512", dict(batch=512, packed=True)), ("eval-packed-b1024", dict(batch=1024, packed=True)),
                     ("eval-packed-b1024-bf16w", dict(batch=1024, packed=True, bf16_weights=True)),
                     ("eval-packed-b256-bf16w", dict(batch=256, packed=True, bf16_weights=True))]:
        if only and name not in only:
            continue
        try:
            r = eval_variant(name, test, state, **kw)
        except Exception as exc:
            r = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(json.dumps(r), flush=True)
        results.append(r)
    if args.out:
        args.out.write_text(json.dumps({"info": info, "results": results}, indent=2))
    flops = 6 * 85e6 + 3 * 12 * 4 * info["mean_len"] * 768
    print(f"\n{info['device']}, bf16 matmul peak {info['peak_tflops']:.0f} TFLOP/s, mean length {info['mean_len']:.0f}, "
          f"tokenize {tokenize_s:.1f}s")
    for r in results:
        if "error" in r:
            print(f"{r['name']:<34} ERROR {r['error'][:150]}")
        elif "ms_per_step" in r:
            mfu = r["tokens_per_s"] * flops / (info["peak_tflops"] * 1e12)
            print(f"{r['name']:<34} {r['ms_per_step']:7.1f} ms/step {r['tokens_per_s']:9.0f} tok/s  epoch {r['epoch_25k_s']:6.1f}s "
                  f"MFU {mfu:.0%} pad {r['padded']:.1%} warm {r['warm_s']:.0f}s {r['peak_gib']:.1f}GiB "
                  f"loss {r['mean_loss_last10']:.3f} moved {r['weights_moved']:.3g}")
        else:
            print(f"{r['name']:<34} {r['seconds']:6.2f} s for {args.n} texts, {r['tokens_per_s']:9.0f} tok/s")


if __name__ == "__main__":
    main()
