"""Several processes under torchrun (DDP): who does what, and the few collectives the loop needs.

torchrun starts one process per GPU (or per CPU share) and sets RANK, WORLD_SIZE and LOCAL_RANK; this
module reads them. Nothing here launches anything: launcher.py hands the command to torchrun itself.

The design rests on two facts of the single-process code:
- a step's batch is a pure function of (seed, epoch), so every rank computes the same global batch and
  takes its own share of it (`step_share`): no sampler, no duplicated or dropped example, and a resume
  with another number of processes sees the same batches;
- the loss of a step is summed over its examples and divided by their count, so shares add up to
  exactly the single-process gradient once DDP has averaged them (each share's loss is scaled by the
  number of ranks to undo DDP's mean).

Every decision that could differ between ranks is taken together, by one small all-reduce: whether a
step ran out of memory anywhere (`vote`, before the gradients are exchanged), and whether to stop or save
now (`agree`). Evaluation is shared by batches and the logits gathered (`gather_rows`), so every rank computes
the same metrics from the same numbers and takes the same best-model and early-stopping decisions.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from finetune_bert.errors import RankLost, Reported, UserError
from finetune_bert.ranks import follower, launched

__all__ = ["RankLost", "follower", "launched"]  # (re-exported: the callers' one place for the world)


# what a training run leaves when a process is lost, and what to do
RESUME = "every checkpoint in OUTPUT/checkpoints is complete or absent, so rerun the same command with --resume"


@dataclass(frozen=True)
class World:
    """This process's place among the job's processes; `World()` is a process alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str = "cpu"  # this process's device, where collectives' tensors live: cuda:N for NCCL, cpu for gloo
    left: str = RESUME  # what the job leaves when a process is lost, and what to do (said with the loss)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.size > 1


ALONE = World()


def start(device: torch.device, timeout_s: float, left: str = RESUME) -> World:
    """Join the job's process group (NCCL on CUDA, gloo on CPU); `World()` when not launched with several.
    `timeout_s`: how long a collective waits for the others before failing, so a rank that died or hangs
    ends the job with a message instead of a hang. `left`: what a lost process leaves (World.left)."""
    if not launched():
        return ALONE
    import torch.distributed as dist

    rank, size, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"several processes need CUDA (NCCL) or the CPU (gloo), not {device.type}")
    if device.type == "cuda":
        check_gpus(local + 1)
    timeout = datetime.timedelta(seconds=timeout_s)
    # Imported first: torch.distributed.checkpoint (which transformers' model code imports) keeps references to
    # a process group that exists when it is first imported, so destroy_process_group could not free it and
    # gloo's worker threads outlived it; one of them then freed a tensor during the interpreter's shutdown and
    # aborted the process (SIGABRT, "terminate called without an active exception") after its work was done.
    import torch.distributed.checkpoint  # noqa: F401

    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=timeout, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    return World(rank, size, local, str(device), left)  # cuda:LOCAL_RANK, or cpu


def check_gpus(processes: int, force: bool = False, *, forceable: bool = True) -> None:
    """One GPU per process: refuse more processes on this machine than it has GPUs. On CPU, more processes than
    cores only share the cores, each with its own copy of the model in memory: refused unless `force`
    (`forceable`: the command has a --force to say so)."""
    if torch.cuda.is_available():
        if processes > torch.cuda.device_count():
            raise UserError(f"{processes} processes on this machine, but it has {torch.cuda.device_count()} GPU(s): "
                            "one per process; start at most that many per machine (--nproc-per-node)")
        return
    cores = os.cpu_count() or 1
    if processes > cores and not force:
        raise UserError(f"--nproc-per-node {processes}: more processes than this machine's {cores} CPU cores, and "
                        "no GPU; each process loads its own copy of the model (about 1 GB for bert-base) and they "
                        f"only share the cores, so it would be slower than {cores}: use at most {cores}"
                        + (", or pass --force to start them anyway" if forceable else ""))


def stop(world: World) -> None:
    import torch.distributed as dist

    if world.several and dist.is_initialized():
        dist.destroy_process_group()


def lost(exc: BaseException, world: World) -> RankLost:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^\[[^\]]*\] ", "", first).split(". This is typically")[0][:200]  # gloo's source path
    return RankLost(f"rank {world.rank} of {world.size} lost contact with the other processes ({first}): one of "
                    f"them died, was killed or stopped answering. Its own output says why; {world.left}")


@contextlib.contextmanager
def talking(world: World):
    """Around collectives: a failure because another rank is gone becomes one RankLost line."""
    try:
        yield
    except RankLost:
        raise
    except Exception as exc:
        if is_collective_error(exc):
            raise lost(exc, world) from None
        raise


def together(world: World, setup: Callable[[], Any]) -> Any:
    """`setup()` on every rank; a UserError on any rank stops them all. Rank 0's is said by rank 0 alone (the
    others met the same one); a problem of another rank's alone (its copy of the data) is said by that rank."""
    error = None
    try:
        result = setup()
    except UserError as exc:
        error = exc
    failed = gather_objects(error is not None, world)
    if failed[0] and not world.main:
        _outlive_main(world)
    if error is not None:
        raise error if world.main or not failed[0] else Reported(error.exit_code) from None
    if any(failed):
        raise Reported(2)
    return result


def _outlive_main(world: World) -> None:
    """Wait for rank 0 to leave (the collective fails as it exits): it says the job's error, and torchrun stops
    the processes still running as soon as one has ended, which could cut its line short."""
    import torch.distributed as dist

    try:
        dist.barrier()
    except Exception as exc:  # the way rank 0's exit is seen
        if not is_collective_error(exc):
            raise


def is_collective_error(exc: BaseException) -> bool:
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or (
        isinstance(exc, RuntimeError) and any(s in text for s in ("gloo", "NCCL", "Connection reset", "Connection closed")))


# ---- a step's share -------------------------------------------------------------------------------------


def step_share(index: np.ndarray, world: World) -> tuple[np.ndarray, float]:
    """This rank's texts of a step's batch `index`, and the weight of each one's summed loss (1 / global
    count, times the ranks to undo DDP's mean). Strided, so a batch sorted by length splits evenly. A rank
    left without texts (a last batch smaller than the world) runs one text at weight 0: DDP needs every
    rank's backward."""
    mine = index[world.rank::world.size]
    if len(mine) == 0:
        return index[:1], 0.0
    return mine, world.size / len(index)


def _all_reduce(values: torch.Tensor, world: World) -> torch.Tensor:
    import torch.distributed as dist

    with talking(world):
        dist.all_reduce(values)
    return values


def vote(loss: torch.Tensor, oom: bool, tokens: int, world: World) -> tuple[torch.Tensor, bool, int]:
    """Before the gradient exchange: the step's global loss (the ranks' shares summed), whether any rank ran
    out of memory (then all back off together and redo the step), and the tokens of the step. One small
    all-reduce, and so one host sync, a step."""
    if not world.several:
        return loss, oom, tokens
    values = torch.stack([loss.detach().double().reshape(()).to(world.device),
                          torch.tensor(float(oom), dtype=torch.float64, device=world.device),
                          torch.tensor(float(tokens), dtype=torch.float64, device=world.device)])
    values = _all_reduce(values, world)
    return values[0].float(), bool(values[1].item() > 0), int(values[2].item())


def agree(*flags: bool, world: World) -> list[bool]:
    """Each flag true on any rank: stop now, save now. Alone: the flags as given."""
    if not world.several:
        return list(flags)
    values = _all_reduce(torch.tensor([float(f) for f in flags], device=world.device), world)
    return [v > 0 for v in values.tolist()]


# ---- shared evaluation ------------------------------------------------------------------------------------


def gather_rows(rows: np.ndarray, logits: torch.Tensor, n: int, world: World) -> torch.Tensor:
    """Every rank's logits of its `rows`, assembled (n, k) in input order on every rank (CPU, fp32). Each row
    must come from exactly one rank: a hole or an overlap is a bug, and raises."""
    import torch.distributed as dist

    # padded to n: a rank's share of whole batches can hold more than n / size rows (a few floats a row)
    width, k = n, logits.shape[1]
    index = torch.full((width,), -1, dtype=torch.int64, device=world.device)
    index[:len(rows)] = torch.from_numpy(rows).to(world.device)
    values = torch.zeros(width, k, dtype=torch.float32, device=world.device)
    values[:len(rows)] = logits.to(world.device, torch.float32)
    indexes = [torch.empty_like(index) for _ in range(world.size)]
    all_values = [torch.empty_like(values) for _ in range(world.size)]
    with talking(world):
        dist.all_gather(indexes, index)
        dist.all_gather(all_values, values)
    index, values = torch.cat(indexes).cpu(), torch.cat(all_values).cpu()
    keep = index >= 0
    out = torch.zeros(n, k)
    out[index[keep]] = values[keep]
    if int(keep.sum()) != n or len(torch.unique(index[keep])) != n:
        raise RuntimeError(f"sharded evaluation covered {int(keep.sum())} rows for {n}")
    return out


# ---- checkpoints and the best model -----------------------------------------------------------------------


def gather_objects(obj: Any, world: World) -> list[Any]:
    """`obj` from every rank, in rank order, on every rank (RNG states for a checkpoint)."""
    if not world.several:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    with talking(world):
        dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank (which checkpoint to resume from)."""
    if not world.several:
        return obj
    import torch.distributed as dist

    box = [obj]
    with talking(world):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def weights_from_main(state: dict[str, torch.Tensor] | None, world: World) -> dict[str, torch.Tensor]:
    """Rank 0's `state` (a state dict) on every rank; the others pass None. The best model is read from the
    output folder by rank 0 alone: another node may not see that folder."""
    if not world.several:
        return state
    import torch.distributed as dist

    shapes = from_main({k: (tuple(v.shape), v.dtype) for k, v in state.items()} if world.main else None, world)
    out = {}
    with talking(world):
        for name in sorted(shapes):
            shape, dtype = shapes[name]
            tensor = (state[name].detach().to(world.device).contiguous().clone() if world.main
                      else torch.empty(shape, dtype=dtype, device=world.device))
            dist.broadcast(tensor, src=0)
            out[name] = tensor
    return out


def barrier(world: World) -> None:
    """Every rank waits here for the others (rank 0 finishing a checkpoint before anyone exits)."""
    if not world.several:
        return
    import torch.distributed as dist

    with talking(world):
        dist.barrier()
