"""Each GPU speed lever measured on its own, in one process, on the same batches of the same reviews.

For benchmarks/NOTES.md (predicted vs measured). A randomly initialised bert-base (speed does not depend on
the weights), the bundled bert-base-uncased tokenizer, IMDB train reviews tokenized by finetune-bert's
`encode` (head+tail, max length 512), batches from its length-grouped `train_batches`. Every variant starts
from the same weights and runs the same steps; time is taken between device synchronisations.

Every variant runs through the product: an `engine.Engine` and `steps.train_step` (training) or
`Engine.infer` (evaluation). The `master-*` variants are the product's default on CUDA (bf16 weights with
fp32 masters); the others are `--no-bf16-weights` (autocast) unless their name says otherwise. Levers the
product does not have (a host sync every step with a fused optimizer, no sync with a foreach one, pinned
batches, lengths bucketed for torch.compile, torch.compile itself) are set on the engine from outside.

On a machine without CUDA it is a smoke run of the script itself (a tiny BERT, the GPU's layout, bf16),
not a measurement:

    python benchmarks/gpu_levers.py --data .devdata/imdb --tokenizer .devdata/tokenizer --out $OUT/levers.json
    python benchmarks/gpu_levers.py --n 64 --max-length 64 --steps 2 --warm 1 --only packed-b16,eval-packed-b64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from unittest import mock

import torch

from bench import DATA, adamw, bert_config, flops_per_token, load_reviews, matmul_peak, model_source, random_bert, sync
from finetune_bert.training import steps
from finetune_bert.engine.batches import Layout, train_batches
from finetune_bert.training.checkpoint import TrainState
from finetune_bert.engine.torch_engine import Engine, EngineOptions
from finetune_bert.data.tokens import encode

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a smoke run of the script itself, not a measurement
SIZE = "base" if DEV == "cuda" else "tiny"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One training configuration. The defaults: bf16 autocast (`--no-bf16-weights`), padded batches, a
    host sync every step, fused AdamW."""

    batch: int
    bf16: bool = True
    master: bool = False             # bf16 weights, fp32 masters (EngineOptions.bf16_weights; the CUDA default)
    attn: str = "sdpa"
    fused: bool = True               # fused AdamW; False: foreach
    host_sync: bool = True           # the loss and gradient norm read on the host before each update
    compile_mode: str | None = None  # torch.compile of the engine's forward: "default" or "reduce-overhead"
    fast: bool = True                # the [CLS]-only last layer
    multiple: int = 0                # pad lengths to a multiple of this (0: the engine's own, 8 on GPU)
    pin: bool = False                # batches collated into pinned host memory
    packed: bool = False             # packed batches with varlen FlashAttention (EngineOptions.unpadded)


@dataclasses.dataclass(frozen=True)
class PinnedLayout(Layout):
    """The engine's layout, collating into pinned host memory so the copy to the GPU is an asynchronous DMA:
    a lever the product does not have (it measured no gain, benchmarks/NOTES.md)."""

    def batch(self, encoded, index):
        host = super().batch(encoded, index)
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in host.items()}


def make_engine(state: dict, *, attn: str, options: EngineOptions, training: bool, bf16: bool = True) -> Engine:
    """A fresh engine over the same random weights. bf16 is forced on CPU too (`dtype`, as the tests do), so
    a smoke run goes through the GPU's code: autocast, or bf16 weights with their masters."""
    model = random_bert(SIZE, attn=attn)
    model.load_state_dict(state)
    return Engine(model, torch.device(DEV), 0, options=options, training=training,
                  dtype=torch.bfloat16 if bf16 else None)


def set_layout(engine: Engine, *, packed: bool, multiple: int = 0, pin: bool = False) -> Layout:
    """On CUDA the engine's own layout, checked to be the one the variant is named for; on CPU (smoke) the
    GPU's layout forced, packed batches going through fastpath's per-text fallback. Then the levers the
    product does not have: a padding multiple (compile: few distinct shapes) and pinned batches."""
    layout = engine.layout
    if DEV == "cpu":  # no lane dropout or CPU micro-batches: those are CPU levers, not what the GPU runs
        layout = dataclasses.replace(layout, packed=packed, multiple=8, lane_dropout=False, cpu_cap=None)
    elif layout.packed != packed:
        raise RuntimeError(f"the engine chose packed={layout.packed} where the variant asks for {packed}")
    if multiple:
        layout = dataclasses.replace(layout, multiple=multiple)
    if pin and DEV == "cuda":
        layout = PinnedLayout(**{f.name: getattr(layout, f.name) for f in dataclasses.fields(Layout)})
    engine.layout = layout
    return layout


class WithoutFoundInf:
    """A foreach AdamW as train_step's deferred branch sees it: foreach has no `found_inf` (it refuses one), so
    the device-side skip of a non-finite step is dropped. Only `packed-b32-foreach`, a speed measurement."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer, self.defaults = optimizer, optimizer.defaults

    def __setattr__(self, name, value):
        if name != "found_inf":
            super().__setattr__(name, value)

    def step(self):
        self.optimizer.step()


def run_steps(engine: Engine, optimizer, enc, batches, host_sync: bool) -> tuple[float, list[torch.Tensor]]:
    """`steps.train_step` over `batches`: (seconds between device syncs, the losses, still on the device).

    The product syncs the host every step exactly when the optimizer cannot skip a bad step itself
    (`steps.defers_checks`: not fused). Overriding that test, and nothing else, gives a host sync or none
    with either optimizer (foreach without a sync: see WithoutFoundInf)."""
    state, losses = TrainState(), []
    with mock.patch.object(steps, "defers_checks", lambda _optimizer: not host_sync):
        sync(DEV)
        start = time.perf_counter()
        for index in batches:
            state.step += 1
            loss, _finite = steps.train_step(engine, optimizer, enc, index, state)
            losses.append(loss)
        sync(DEV)
    return time.perf_counter() - start, losses


def train_variant(name: str, enc, state: dict, v: Variant, *, steps_n: int, warm: int) -> dict:
    torch.manual_seed(0)
    options = EngineOptions(bf16=v.bf16, bf16_weights=v.master, cls_fast_path=v.fast, unpadded=v.packed)
    engine = make_engine(state, attn=v.attn, options=options, training=True, bf16=v.bf16)
    layout = set_layout(engine, packed=v.packed, multiple=v.multiple, pin=v.pin)
    if v.compile_mode:  # Module.compile: the engine's own __call__ (its forward) compiled in place
        engine.compile(dynamic=True, mode=None if v.compile_mode == "default" else v.compile_mode)
    optimizer = adamw(engine, fused=v.fused)
    if not (v.fused or v.host_sync):
        optimizer = WithoutFoundInf(optimizer)
    batches = train_batches(enc.lengths, v.batch, 0, 0, True)
    batches = batches[1:1 + warm + steps_n]  # the epoch's longest batch goes first; the rest are random
    warm_s, _ = run_steps(engine, optimizer, enc, batches[:warm], v.host_sync)
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, losses = run_steps(engine, optimizer, enc, batches[warm:], v.host_sync)
    timed = batches[warm:]
    out = {"name": name, "batch": v.batch, "ms_per_step": 1e3 * seconds / len(timed), "warm_s": warm_s,
           **throughput(enc, timed, seconds, layout), **sanity(engine, state, losses),
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if DEV == "cuda" else 0.0}
    del engine, optimizer
    if DEV == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def throughput(enc, timed: list, seconds: float, layout: Layout) -> dict:
    real = int(sum(enc.lengths[b].sum() for b in timed))
    m = layout.multiple
    computed = real if layout.packed else int(sum(len(b) * (-(-int(enc.lengths[b].max()) // m) * m) for b in timed))
    samples = int(sum(len(b) for b in timed))
    return {"tokens_per_s": real / seconds, "samples_per_s": samples / seconds,
            "epoch_25k_s": 25000 / (samples / seconds), "padded": 1 - real / computed}


def sanity(engine: Engine, state: dict, losses: list[torch.Tensor]) -> dict:
    """That every variant trains the same task: its last losses, and how far the (full-precision) weights moved."""
    weights = engine.weights()
    names = [n for n, _ in engine.model.named_parameters()]
    moved = math.sqrt(sum(float((weights[k].float().cpu() - state[k]).pow(2).sum()) for k in names))
    return {"mean_loss_last10": float(torch.stack(losses[-10:]).float().mean()), "weights_moved": moved}


def eval_variant(name: str, enc, state: dict, *, batch: int, fast: bool = True, packed: bool = False,
                 bf16_weights: bool = False) -> dict:
    """`Engine.infer`, the product's evaluation loop (sorted batches, one in flight, logits read back one batch
    late). `bf16_weights` (the product's default for inference on CUDA): the model cast to bf16 once, instead
    of autocast casting every weight in every batch."""
    options = EngineOptions(bf16_weights=bf16_weights, fast=fast, unpadded=packed)
    engine = make_engine(state, attn="sdpa", options=options, training=False)
    set_layout(engine, packed=packed)
    sync(DEV)
    start = time.perf_counter()
    n = sum(len(index) for index, _ in engine.infer(enc, batch))
    sync(DEV)
    seconds = time.perf_counter() - start
    del engine
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return {"name": name, "batch": batch, "seconds": seconds, "tokens_per_s": float(enc.lengths.sum()) / seconds, "n": n}


PLAN = [
    ("fp32-sync-b16", Variant(16, bf16=False)),
    ("bf16-sync-b16", Variant(16)),  # the product before packed batches
    ("bf16-nosync-b16", Variant(16, host_sync=False)),
    ("bf16-nosync-b16-pin", Variant(16, host_sync=False, pin=True)),
    ("bf16-nosync-b16-eager", Variant(16, host_sync=False, attn="eager")),
    ("bf16-nosync-b16-nofast", Variant(16, host_sync=False, fast=False)),
    ("bf16-sync-b32", Variant(32)),
    ("bf16-nosync-b32", Variant(32, host_sync=False)),
    ("bf16-nosync-b64", Variant(64, host_sync=False)),
    ("packed-b16", Variant(16, host_sync=False, packed=True)),
    ("packed-b32", Variant(32, host_sync=False, packed=True)),  # the product with --no-bf16-weights
    ("packed-b64", Variant(64, host_sync=False, packed=True)),
    ("packed-b32-sync", Variant(32, packed=True)),
    ("packed-b32-foreach", Variant(32, host_sync=False, packed=True, fused=False)),  # no found_inf: speed only
    ("master-packed-b32", Variant(32, host_sync=False, packed=True, master=True)),  # the product's default
    ("master-packed-b64", Variant(64, host_sync=False, packed=True, master=True)),
    ("master-padded-b32", Variant(32, host_sync=False, master=True)),
    ("bf16-nosync-b16-compile", Variant(16, host_sync=False, compile_mode="default", multiple=64)),
    ("bf16-nosync-b32-compile", Variant(32, host_sync=False, compile_mode="default", multiple=64)),
    ("bf16-nosync-b16-compile-cg", Variant(16, host_sync=False, compile_mode="reduce-overhead", multiple=64)),
]
EVAL_PLAN = [
    ("eval-padded-b64", dict(batch=64)), ("eval-padded-b256", dict(batch=256)),
    ("eval-packed-b64", dict(batch=64, packed=True)), ("eval-packed-b256", dict(batch=256, packed=True)),
    ("eval-packed-b512", dict(batch=512, packed=True)), ("eval-packed-b1024", dict(batch=1024, packed=True)),
    ("eval-packed-b1024-bf16w", dict(batch=1024, packed=True, bf16_weights=True)),
    ("eval-packed-b256-bf16w", dict(batch=256, packed=True, bf16_weights=True)),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.csv.gz and test.csv.gz")
    parser.add_argument("--tokenizer", help="a bert-base-uncased tokenizer folder (default: the bundled MiniLM's)")
    parser.add_argument("--n", type=int, default=25000, help="train reviews, and as many test reviews")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warm", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated variant names")
    parser.add_argument("--out", type=Path, help="write every result to this JSON file")
    return parser.parse_args()


def load_data(args) -> tuple:
    """(train and test reviews tokenized, the run's facts: device, peak, lengths, tokenizing time)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer or model_source("bert-base-random"))
    encoded, seconds = [], []
    for split, seed in (("train", 0), ("test", 1)):
        texts, labels = load_reviews(args.data / f"{split}.csv.gz", args.n, seed=seed)
        start = time.perf_counter()
        encoded.append(encode(tok, texts, labels, args.max_length, "head+tail"))
        seconds.append(time.perf_counter() - start)
    enc, test = encoded
    # On CPU the peak is not measured (a smoke run): 0.1 TFLOP/s only keeps the MFU column printable.
    info = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu", "torch": torch.__version__,
            "peak_tflops": matmul_peak(DEV) / 1e3 if DEV == "cuda" else 0.1,
            "n": args.n, "mean_len": float(enc.lengths.mean()), "tokenize_s": seconds[0],
            "test_tokenize_s": seconds[1], "epoch_real_tokens": int(enc.lengths.sum())}
    return enc, test, info


def guarded(name: str, fn) -> dict:
    try:
        r = fn()
    except Exception as exc:  # one broken lever must not cost the others' numbers
        r = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(json.dumps(r), flush=True)
    return r


def summary(info: dict, results: list[dict], n: int) -> None:
    flops = flops_per_token(bert_config(SIZE), info["mean_len"])
    print(f"\n{info['device']}, bf16 matmul peak {info['peak_tflops']:.0f} TFLOP/s, mean length {info['mean_len']:.0f}, "
          f"tokenize {info['tokenize_s']:.1f}s")
    for r in results:
        if "error" in r:
            print(f"{r['name']:<34} ERROR {r['error'][:150]}")
        elif "ms_per_step" in r:
            mfu = r["tokens_per_s"] * flops / (info["peak_tflops"] * 1e12)
            print(f"{r['name']:<34} {r['ms_per_step']:7.1f} ms/step {r['tokens_per_s']:9.0f} tok/s  epoch {r['epoch_25k_s']:6.1f}s "
                  f"MFU {mfu:.0%} pad {r['padded']:.1%} warm {r['warm_s']:.0f}s {r['peak_gib']:.1f}GiB "
                  f"loss {r['mean_loss_last10']:.3f} moved {r['weights_moved']:.3g}")
        else:
            print(f"{r['name']:<34} {r['seconds']:6.2f} s for {n} texts, {r['tokens_per_s']:9.0f} tok/s")


def main() -> None:
    args = parse_args()
    enc, test, info = load_data(args)
    torch.manual_seed(0)
    state = random_bert(SIZE).state_dict()
    print(json.dumps(info), flush=True)
    only = set(filter(None, args.only.split(",")))
    results = []
    for name, variant in PLAN:
        if not only or name in only:
            warm = 40 if variant.compile_mode else args.warm
            results.append(guarded(name, lambda: train_variant(name, enc, state, variant, steps_n=args.steps, warm=warm)))
    for name, kw in EVAL_PLAN:
        if not only or name in only:
            results.append(guarded(name, lambda: eval_variant(name, test, state, **kw)))
    if args.out:
        args.out.write_text(json.dumps({"info": info, "results": results}, indent=2))
    summary(info, results, args.n)


if __name__ == "__main__":
    main()
