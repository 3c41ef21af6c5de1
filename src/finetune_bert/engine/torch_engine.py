"""The execution engine: one torch.nn.Module through which every forward pass of the product runs.

`Engine` wraps a Hugging Face classifier and owns how it runs: the device, the compute dtype, the batch
`Layout` and, for bf16 training on a GPU, fp32 master copies of bf16 weights. Its `forward(batch)` is the
fast path of fastpath.py ([CLS]-only last layer, packed varlen attention on CUDA, lane dropout on CPU), or
the model's stock forward where that does not apply. Training calls it as a module, so wrapping the engine
in DistributedDataParallel runs DDP's own forward (its gradient-sync preparation) around the fast path.

Inference (`infer`, `logits`) is sorted, streaming and batched, with results in input order: one
implementation for validation in training, `evaluate`, `predict` and a server. It runs in an explicit
inference context (`inference()`): no autograd, autocast, and dropout off passed to the fast path as an
argument, so the module's train/eval flag is never flipped. Only the stock forward of other architectures
reads that flag; an engine that is training (between steps, in the training thread) is put in eval mode for
the duration, under a lock. An engine made for inference is in eval mode from the start, and stays so.

bf16 weights with fp32 masters (CUDA default, `--no-bf16-weights` off): the model itself is cast to bf16
once, so no autocast casts every weight in every forward and backward; the optimizer steps fp32 copies, and
each step copies the gradients in and the new weights back. Packed training at batch 32 on an H200 took
26.6 ms a step against 36.4 with autocast, with equal losses (benchmarks/gpu_levers.py). Checkpoints and
saved models hold the fp32 masters, so a resume or a later fine-tune loses no precision.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from finetune_bert.engine import distributed, fastpath, lora
from finetune_bert import faults
from finetune_bert.engine.batches import Layout, eval_batches, to_device
from finetune_bert.engine.distributed import ALONE, World
from finetune_bert.errors import is_oom
from finetune_bert.data.tokens import Encoded



@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs a model; each speed technique can be turned off (the train options of the same
    names), and none changes what is computed beyond float rounding and which random numbers dropout draws."""

    bf16: bool = True               # bf16 compute where the GPU does it natively; fp32 on CPU
    bf16_weights: bool = True       # with bf16: the weights themselves in bf16 (fp32 masters when training)
    cls_fast_path: bool = True      # the [CLS]-only last layer (fastpath.py)
    unpadded: bool = True           # packed batches with varlen FlashAttention (CUDA)
    lane_dropout: bool = True       # CPU training: dropout masks from 16-bit lanes (dropout.py)
    cpu_micro_batches: bool = True  # CPU: batches cut so no activation outgrows the allocator's heap
    pad_to: int = 0                 # pad every batch to this many tokens (--no-dynamic-padding)
    lora: lora.LoraSettings | None = None  # training: adapters on a frozen model (lora.py)
    cpu_bf16: bool = False          # training on a CPU: bf16 autocast (worth it with AMX tiles; see has_amx)


def autocast_dtype(device: torch.device, bf16: bool, cpu_bf16: bool = False) -> torch.dtype | None:
    """bf16 where the GPU does it natively; on a CPU only when asked (`cpu_bf16`): without AMX tiles bf16
    measured half as fast as fp32 here, and training with AMX is not yet measured on this engine's step."""
    if bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_bf16:
        return torch.bfloat16
    return None


def has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix units), as PyTorch's oneDNN sees them."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 products itself (AMX tiles, or AVX-512 bf16 dot products) rather than
    emulating them, as PyTorch's oneDNN sees it."""
    return has_amx() or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def inference_dtype(device: torch.device) -> torch.dtype | None:
    """What predict, evaluate and the server compute in: bf16 on a GPU that has it, and on a CPU with AMX
    tiles, where MiniLM scored 1,000 IMDB reviews in 5.3 s against 15.5 in fp32, with the same label for
    every review (benchmarks/RESULTS.md); fp32 on other CPUs (AVX-512 bf16 alone measured half as fast)."""
    if device.type == "cpu":
        return torch.bfloat16 if has_amx() and os.environ.get("FINETUNE_BERT_CPU_BF16", "1") != "0" else None
    return autocast_dtype(device, True)


class Engine(torch.nn.Module):
    """A classifier and how it runs. `training=True`: it will be trained (masters kept for bf16 weights)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, pad_id: int, *,
                 options: EngineOptions = EngineOptions(), training: bool = False,
                 dtype: torch.dtype | None | str = "auto", world: World = ALONE):
        super().__init__()
        self.model = model.to(device)
        self.device = device
        # `dtype`: the compute dtype; "auto" picks it for the device (tests force bf16 on CPU)
        self.dtype = autocast_dtype(device, options.bf16, options.cpu_bf16) if dtype == "auto" else dtype
        self.lora = options.lora is not None and training
        if self.lora:
            lora.add_lora(model, options.lora)
        # LoRA keeps autocast: bf16 weights would hold the frozen base in bf16 alone (only what is trained
        # has fp32 masters), and the merged model saved from them would lose the base's precision
        self.bf16_weights = self.dtype is not None and options.bf16_weights and not self.lora
        self.layout: Layout = fastpath.layout(model, device, self.dtype, pad_id, cls_fast_path=options.cls_fast_path,
                                              unpadded=options.unpadded, lane_dropout=options.lane_dropout,
                                              cpu_micro_batches=options.cpu_micro_batches, pad_to=options.pad_to)
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.masters: list[torch.Tensor] | None = None
        if self.bf16_weights and training:
            self.masters = [p.detach().float().clone() for p in self._params()]
            for master in self.masters:
                master.grad = torch.zeros_like(master)
        if self.bf16_weights:
            self.model.to(self.dtype)
        self._stock_lock = threading.Lock()
        self.world = world  # under torchrun, inference is shared between the processes (infer)
        self.train(training)

    @property
    def config(self):
        return self.model.config

    @property
    def fast_path(self) -> bool:
        return self.layout.cls_fast_path and fastpath.supported(self.model)

    def _params(self) -> list[torch.nn.Parameter]:
        named = dict(self.model.named_parameters())
        return [named[n] for n in self._names]

    def forward(self, batch: dict) -> torch.Tensor:
        """fp32 logits of a batch (from Layout.batch, on the device); dropout as the module is set."""
        # tests' out-of-memory errors fire here, inside the forward, as real ones do: under DDP that is after
        # its own pre-forward work, which every rank must have done alike
        faults.hit("forward")
        return self._logits(batch, self.training)

    def _logits(self, batch: dict, train: bool) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None and not self.bf16_weights):
            out = fastpath.logits(self.model, batch, self.layout.cls_fast_path, self.layout.lane_dropout, train=train)
        return out.float()

    # ---- inference ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        """No autograd and no dropout, without touching the train/eval flag on the fast path (see above)."""
        with torch.inference_mode():
            # LoRA's dropout is a module that reads the flag, fast path or not
            if (self.fast_path and not self.lora) or not self.model.training:
                yield
                return
            with self._stock_lock:  # the stock forward reads the flag: only the training thread gets here
                self.model.eval()
                try:
                    yield
                finally:
                    self.model.train()

    def infer(self, encoded: Encoded, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(row indices, fp32 logits on the CPU) per batch, longest first; one batch in flight at a time.
        Under several processes each scores its share of the batches and every process gets all of them."""
        batches = eval_batches(encoded.lengths, batch_size, self.layout.capped_fit)
        if self.world.several:
            yield from self._infer_shared(encoded, batches)
            return
        yield from self._run(encoded, batches)

    def _run(self, encoded: Encoded, batches: list[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """A batch's logits are read back only after the next batch has been queued, so the GPU never waits
        for the host to collate and launch."""
        pending = None
        with self.inference():
            for index in batches:
                logits = self._logits(to_device(self.layout.batch(encoded, index), self.device), False)
                if pending is not None:
                    yield pending[0], pending[1].cpu()
                pending = (index, logits)
            if pending is not None:
                yield pending[0], pending[1].cpu()

    def _infer_shared(self, encoded: Encoded, batches: list[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Every size-th batch of the single process's own batches on this rank, so each row's logits are
        computed in the batch it would be alone; gathered once, then handed out in the single process's
        order, so streaming sums add up in the same order and the metrics are exactly its metrics. An
        out-of-memory error on any rank is raised on all, so that all halve the batch together."""
        mine = batches[self.world.rank::self.world.size]
        local, failed = torch.zeros(len(encoded), self.model.config.num_labels), None
        try:
            for index, logits in self._run(encoded, mine):
                local[torch.from_numpy(index)] = logits
        except Exception as exc:
            if not is_oom(exc):
                raise
            failed = exc
        if distributed.agree(failed is not None, world=self.world)[0]:
            raise failed or torch.OutOfMemoryError("another process ran out of memory in evaluation")
        rows = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
        every = distributed.gather_rows(rows, local[torch.from_numpy(rows)], len(encoded), self.world)
        for index in batches:
            yield index, every[torch.from_numpy(index)]

    def logits(self, encoded: Encoded, batch_size: int) -> torch.Tensor:
        """fp32 logits (n, classes) on the CPU, in input order."""
        out = torch.zeros(len(encoded), self.model.config.num_labels)
        for index, logits in self.infer(encoded, batch_size):
            out[torch.from_numpy(index)] = logits
        return out

    # ---- weights ---------------------------------------------------------------------------------------

    def trainable(self) -> list[torch.Tensor]:
        """What the optimizer steps: the fp32 masters with bf16 weights, else the model's own parameters."""
        return self._params() if self.masters is None else self.masters

    def gradients_to_masters(self) -> None:
        """After backward: the bf16 gradients into the masters' fp32 ones (no-op without masters)."""
        if self.masters is None:
            return
        pairs = [(m.grad, p.grad) for m, p in zip(self.masters, self._params()) if p.grad is not None]
        for master, param in zip(self.masters, self._params()):
            if param.grad is None:  # a parameter this batch did not reach: no stale gradient may remain
                master.grad.zero_()
        if pairs:
            torch._foreach_copy_([m for m, _ in pairs], [g for _, g in pairs])

    def masters_to_weights(self) -> None:
        """After the optimizer step: the updated masters into the bf16 weights, and the weights' gradients freed."""
        if self.masters is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._params(), self.masters)
        self.model.zero_grad(set_to_none=True)

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict in full precision (the masters' values with bf16 weights), for saving; with
        LoRA, the plain model's, adapters merged in."""
        if self.lora:
            return lora.merged_state(self.model)
        state = self.model.state_dict()
        if self.masters is not None:
            state.update(zip(self._names, self.masters))
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()} if self.bf16_weights else state

    def checkpoint_weights(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: with LoRA only the trained tensors (the frozen base is --model's own, which
        a resume loads again), else every weight in full precision."""
        return lora.trained_state(self.model) if self.lora else self.weights()

    def merge_lora(self) -> None:
        """The adapters folded into the weights for good (the end of training): from here the engine runs the
        plain model it saves, and loading a saved model's weights into it works as without LoRA."""
        if self.lora:
            lora.merge_in_place(self.model)
            self._names = [n for n, _ in self.model.named_parameters()]
            self.lora = False

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Load a (full-precision) state dict into the model, and into the masters where kept."""
        missing = set(self.model.load_state_dict(state, strict=False).missing_keys) & set(self._names)
        if missing:  # strict=False only for buffers a saved file may leave out: every weight must be there
            raise RuntimeError(f"weights missing from the saved state: {', '.join(sorted(missing)[:5])}")
        if self.masters is not None:
            with torch.no_grad():
                for name, master in zip(self._names, self.masters):
                    if name in state:
                        master.copy_(state[name])
