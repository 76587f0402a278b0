"""Data parallelism for the analyses: the one place that talks to the process group.

Under `torchrun` or `accelerate launch` (WORLD_SIZE > 1), `start` joins the launcher's group through
accelerate's PartialState (gloo on the CPU, NCCL with one GPU per process); everything else here is a
thin wrapper over a torch.distributed collective. Without a launcher there is one process, and every
function returns its input unchanged: a plain run does exactly what it did before.

The main process (rank 0) decides whether a cached entry must be computed and is the only one that
writes; `shared_entry` is store.get_or_compute for a whole launch.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections import defaultdict
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from analysis.errors import UserError
from analysis.contract import job_folder, progress

# The other processes wait in a collective while the main one alone waits for another job's lock on an entry,
# estimates from the gathered points or writes the store: allow hours for that, not NCCL's default 10 minutes.
WAIT = timedelta(hours=6)


def start(device: torch.device) -> None:
    """Join the launcher's process group, if there is one. The other processes stay quiet: no progress bars, no
    job-folder reports, no repeated warnings (the main process says everything once)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    from accelerate import PartialState
    from transformers.utils import logging

    PartialState(cpu=device.type == "cpu", timeout=WAIT)
    if not is_main():
        os.environ.pop(job_folder.ENVIRONMENT, None)   # the main process reports to a dashboard job's folder
        progress.silence()
        logging.disable_progress_bar()
        logging.set_verbosity_error()
        warnings.simplefilter("ignore")


def stop() -> None:
    """Leave the process group at the end of a launched command (NCCL warns at exit otherwise)."""
    if count() > 1:
        dist.destroy_process_group()


def say(*args, **kwargs) -> None:
    """print, by the main process only (a launch's other processes would repeat it)."""
    if is_main():
        print(*args, **kwargs)


def count() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if count() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """The device this process computes on: its own GPU (cuda:LOCAL_RANK) when several processes share a host."""
    if count() == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise UserError(f"Under a launcher each process uses the GPU of its local rank; pass --device cuda or auto, "
                        f"not {device}.")
    from accelerate import PartialState
    local = PartialState().local_process_index
    if local >= torch.cuda.device_count():
        raise UserError(f"This host runs more processes than it has GPUs ({torch.cuda.device_count()}); launch at "
                        f"most one process per GPU.")
    return torch.device("cuda", local)


def process_seed(seed: int) -> int:
    """The seed of this process's own random stream: `seed` itself for one process, else one independent stream
    per (seed, rank)."""
    if count() == 1:
        return seed
    return int(np.random.SeedSequence([seed, rank()]).generate_state(1)[0])


def shard(items: int) -> range:
    """The positions among 0..items-1 this process takes: every count()-th from its rank (shares differ by one at
    most)."""
    return range(rank(), items, count())


def require_shares(items: int, what: str) -> None:
    """One sentence when `items` would leave a process with nothing to do."""
    if items < count():
        raise UserError(f"{count()} processes cannot share {items} {what}; give each process at least one (more "
                        f"examples, a smaller batch size, or fewer processes).")


def _collective_device() -> torch.device:
    """Where collectives run: NCCL needs tensors on this process's GPU, gloo on the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _in_place(tensors: list[torch.Tensor], collective) -> list[torch.Tensor]:
    device = _collective_device()
    for tensor in tensors:
        buffer = tensor.to(device)
        collective(buffer)
        if buffer is not tensor:
            tensor.copy_(buffer)
    return tensors


def sum_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every process's tensors replaced, in place, by their sum over the processes."""
    if count() == 1:
        return tensors
    return _in_place(tensors, dist.all_reduce)


def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's mean over the processes (a new tensor; with one process, the tensor itself)."""
    if count() == 1:
        return tensor
    return sum_([tensor.clone()])[0] / count()


def total(number: int | float) -> int | float:
    """A count (or sum) over all processes."""
    if count() == 1:
        return number
    value = torch.tensor(float(number), dtype=torch.float64)
    return type(number)(sum_([value])[0].item())


def broadcast_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The main process's tensors, in place, on every process (the shapes must agree)."""
    if count() == 1:
        return tensors
    return _in_place(tensors, lambda buffer: dist.broadcast(buffer, src=0))


def broadcast_object(value):
    """The main process's (picklable) value, on every process."""
    if count() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def average_gradients(parameters) -> None:
    """Each parameter's gradient replaced by its mean over the processes, as DDP averages them: one all-reduce per
    device and dtype (a model split with --device-map has its adapters on several GPUs). A parameter without a
    gradient counts as a zero one, so every process reduces the same tensors."""
    if count() == 1:
        return
    groups = defaultdict(list)
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        groups[parameter.grad.device, parameter.grad.dtype].append(parameter.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        sum_([flat])
        flat /= count()
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()


def gather_in_order(items: list, positions, everywhere: bool = False) -> list | None:
    """Every process's items (tensors, or lists of them) in the order of their global `positions`: on the main
    process, or on every process with `everywhere`; None on the others. With several processes the items come
    back on the CPU (each travels pickled, and must not land on another process's GPU)."""
    if count() == 1:
        return list(items)
    from accelerate.utils import send_to_device
    mine = list(zip(positions, send_to_device(list(items), "cpu")))
    parts = [None] * count() if everywhere or is_main() else None
    if everywhere:
        dist.all_gather_object(parts, mine)
    else:
        dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return None
    return [item for _, item in sorted((pair for part in parts for pair in part), key=lambda pair: pair[0])]


def gather_batches(batches: list[list[torch.Tensor]], positions) -> list[torch.Tensor] | None:
    """Batches spread over the processes, joined on the main process: each batch is a list of tensors (one per
    slot: a layer's states, say), and the result holds per slot every batch's rows in the order of the batches'
    global `positions`; None on the other processes. Every process holds at least one batch; the rows may differ
    between batches and slots (sampled tokens). Rows travel as tensors, one gather per slot, never pickled."""
    if count() == 1:
        return [torch.cat(slot) for slot in zip(*batches)]
    rows = [[tensor.shape[0] for tensor in batch] for batch in batches]
    layout = gather_in_order([list(zip(positions, rows))], [rank()], everywhere=True)   # every process's batches
    joined = []
    for j, slot in enumerate(zip(*batches)):
        local = torch.cat(slot).to(_collective_device())
        sizes = [sum(counts[j] for _, counts in part) for part in layout]
        padded = local.new_zeros((max(sizes), *local.shape[1:]))   # gather takes one shape from every process
        padded[: local.shape[0]] = local
        received = [torch.empty_like(padded) for _ in layout] if is_main() else None
        dist.gather(padded, received, dst=0)
        if received is not None:
            pieces = {}
            for part, tensor, size in zip(layout, received, sizes):
                chunks = tensor[:size].split([counts[j] for _, counts in part])
                pieces.update({position: chunk for (position, _), chunk in zip(part, chunks)})
            joined.append(torch.cat([pieces[position] for position in sorted(pieces)]))
    return joined if is_main() else None


def barrier() -> None:
    if count() > 1:   # NCCL warns about (and may hang on) a barrier that does not name this process's GPU
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


@contextlib.contextmanager
def main_first():
    """The main process runs the block first (filling caches on disk), then the others (reading them)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shared_entry(store, key: str, compute, meta: dict, on_wait=None):
    """store.get_or_compute for every process of a launch: (entry, computed_now) on each. The main process decides
    under the store's lock whether the entry must be computed and tells the others; then every process computes
    (the collectives inside need all of them) and only the main one writes; the others read the entry after it."""
    if count() == 1:
        return store.get_or_compute(key, compute, meta, on_wait)
    if is_main():
        told = []

        def announced():
            told.append(broadcast_object(True))
            return compute()
        entry, computed = store.get_or_compute(key, announced, meta, on_wait)
        if not told:
            broadcast_object(False)
    else:
        computed = broadcast_object(None)
        if computed:
            compute()
    barrier()
    return (entry if is_main() else store.get(key)), computed
