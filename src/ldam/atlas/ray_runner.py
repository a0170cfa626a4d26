"""The atlas's blocks as Ray tasks: the same :func:`~ldam.atlas.run.sample_block` on every worker.

One actor per worker holds the model, sent once through Ray's object store (``ray.put``) rather
than with every task; each actor asks for one CPU, or one GPU where the cluster has GPUs, and moves
its copy of the model there. The driver hands out blocks with at most two in flight per actor and
writes each block's shards as its result comes back, so a killed driver resumes like an
in-process run. ``ray`` is an optional extra: ``pip install 'ldam[atlas]'``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import LdamError
from .run import AtlasConfig, BlockTask, Execute, sample_block
from .store import UnitRecord


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LdamError("the atlas runs on Ray with --ray, which is an optional extra: pip install 'ldam[atlas]'") from None
    return ray


class _Worker:
    """Holds one copy of the model on its device and samples blocks with it."""

    def __init__(self, model: nn.Module, cfg: AtlasConfig, input_shape: Sequence[int], threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.model = model.to(self.device)
        self.cfg, self.input_shape = cfg, tuple(input_shape)

    def run(self, index: int, task: BlockTask) -> tuple[int, list[UnitRecord]]:
        records = sample_block(self.model, self.cfg, task, self.input_shape)
        return index, records

    def where(self) -> str:
        return str(self.device)


def start(address: str | None = None, workers: int | None = None) -> Any:
    """Connect to a Ray cluster at ``address`` (``"auto"`` for the one this machine belongs to), or
    start a local one with ``workers`` CPUs; a session already open is reused."""
    ray = import_ray()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, **kwargs)
    return ray


def ray_executor(model: nn.Module, cfg: AtlasConfig, input_shape: Sequence[int], *, address: str | None = None,
                 workers: int | None = None, threads: int | None = 1,
                 on_start: Callable[[list[str]], None] | None = None) -> Execute:
    """An executor for :func:`~ldam.atlas.run.run_layers` that runs blocks on Ray actors.

    ``workers`` actors (default: one per GPU of the cluster, else one per CPU); each uses
    ``threads`` torch threads (one by default: parallelism comes from the actors)."""
    ray = start(address, workers)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    n = workers or (gpus if gpus else max(1, int(resources.get("CPU", 1))))
    per = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    model_ref = ray.put(model)
    actor = ray.remote(**per)(_Worker)
    actors = [actor.remote(model_ref, cfg, tuple(input_shape), threads) for _ in range(n)]
    if on_start is not None:
        on_start(ray.get([a.where.remote() for a in actors]))

    def execute(tasks: Iterator[tuple[int, BlockTask]], done: Callable[[int, list[UnitRecord]], None]) -> None:
        free = [a for a in actors for _ in range(2)]
        running: dict[Any, Any] = {}
        source = iter(tasks)
        exhausted = False
        while True:
            while free and not exhausted:
                try:
                    index, task = next(source)
                except StopIteration:
                    exhausted = True
                    break
                a = free.pop()
                running[a.run.remote(index, task)] = a
            if not running:
                return
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                free.append(running.pop(ref))
                try:
                    index, records = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    raise LdamError(f"an atlas block failed on a Ray worker: {e.cause!r}") from e.cause
                done(index, records)

    return execute


__all__ = ["ray_executor", "start", "import_ray"]
