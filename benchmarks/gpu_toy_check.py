"""On a GPU: does the toy task of the test suite learn the same under each GPU path? And where a packed
bert-base step spends its time (torch.profiler), for benchmarks/NOTES.md."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
from conftest import make_tiny_bert, toy_rows, write_csv  # noqa: E402
from finetune_bert import train  # noqa: E402
from finetune_bert.predict import load  # noqa: E402


def toy() -> None:
    work = Path(tempfile.mkdtemp())
    model = make_tiny_bert(work / "tiny")
    data = write_csv(work / "train.csv", toy_rows(160, seed=1))
    test = write_csv(work / "test.csv", toy_rows(40, seed=2))
    for name, kw in [("packed bf16", {}), ("padded bf16", {"unpadded": False}), ("fp32", {"bf16": False}),
                     ("packed bf16 lr 1e-3", {"lr": 1e-3})]:
        base = dict(data=str(data), test_data=str(test), model=str(model), output=str(work / name.replace(" ", "_")),
                    epochs=6, batch_size=16, lr=1e-2, warmup_ratio=0.05, max_length=32, seed=0, log_every=1000)
        result = train(**{**base, **kw})
        clf = load(result.output)
        print(f"TOY {name}: test accuracy {result.metrics['test']['accuracy']:.3f}, "
              f"skipped {result.metrics['train']['skipped_steps']}, layout packed={clf.layout.packed}, "
              f"predict {[p.label for p in clf.predict(['awful dull plot', 'superb music'])]}", flush=True)


def profile(batch: int = 32) -> None:
    from transformers import BertConfig, BertForSequenceClassification
    import torch.nn.functional as F
    from finetune_bert import fastpath
    from finetune_bert.tokens import Encoded
    from finetune_bert.batches import Layout, to_device

    rng = np.random.default_rng(0)
    enc = Encoded([rng.integers(1000, 20000, size=int(n)).astype(np.int32) for n in rng.integers(150, 512, batch * 20)],
                  np.zeros(batch * 20, dtype=np.int64), rng.integers(0, 2, batch * 20))
    model = BertForSequenceClassification(BertConfig(num_labels=2)).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    layout = Layout(0, 8, True, True)

    def step(i):
        b = to_device(layout.batch(enc, np.arange(i * batch, (i + 1) * batch)), "cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fastpath.logits(model, b).float(), b["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(5):
        step(i)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile as prof
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for i in range(5, 10):
            step(i)
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    toy()
    profile()
