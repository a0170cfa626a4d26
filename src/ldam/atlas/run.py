"""The atlas's work: a top-k pass per layer, then each unit sampled per facet, written as it finishes.

The work is cut into fixed *blocks* of units of one layer (``block`` units, in order). One block is
one batched :class:`~ldam.sampler.Sampler`: every unit of the block and every facet of each unit is
one target (the same ``layer:unit`` repeated once per facet), with ``chains`` chains each, started
from the facet's mean image. A chain's noise depends only on ``(seed, layer:unit, facet, chain)``
and the block's composition depends only on the configuration, so a block computes the same
numbers wherever and whenever it runs: in-process, on a Ray worker, or after a restart.

Nothing finished is recomputed or lost when a run is killed: a block's records are first written
together as one pending file (atomically), then as one shard per unit (atomically), and the pending
file is removed last. A restart finds each block in one of three states (not started, pending file
present: split it, all shards present: skip) and continues.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from ..analysis import count_modes
from ..energy import L2
from ..errors import LdamError
from ..guard import model_guard
from ..io import safe_load
from ..sampler import Sampler, model_fingerprint
from ..targets import LayerInfo, probe_layers
from .diagnostics import is_dead, unit_diagnostics
from .facets import default_feature_layer, facet_starts
from .store import AtlasStore, UnitRecord
from .topk import crops, receptive_field, stream_topk


@dataclass
class AtlasConfig:
    """What an atlas run does; every field is pinned in the manifest (a resumed run must match).

    ``k`` top dataset images per unit are shown; facets are found among the top ``top_n``;
    each facet gets ``chains`` chains of ``steps`` Langevin steps (``burn_in`` discarded, a
    quarter by default) at ``temperature`` and ``step_size`` with an L2 prior ``l2``;
    ``block`` units share one batched sampler; ``crop`` is the largest side of a stored crop.
    """

    layers: list[str]
    k: int = 9
    top_n: int = 64
    max_facets: int = 3
    chains: int = 2
    steps: int = 200
    burn_in: int | None = None
    step_size: float = 0.004
    temperature: float = 0.02
    l2: float = 0.3
    method: str = "sgld"
    seed: int = 0
    block: int = 16
    crop: int = 64
    feature_layer: str | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("k", "top_n", "max_facets", "chains", "steps", "block", "crop", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"atlas {name} must be >= 1, got {getattr(self, name)}")
        if self.burn_in is not None and not 0 <= self.burn_in < self.steps:
            raise ValueError(f"burn_in must be in [0, steps) = [0, {self.steps}), got {self.burn_in}")
        self.layers = list(self.layers)
        if not self.layers:
            raise ValueError("an atlas needs at least one layer")

    @property
    def kept_from(self) -> int:
        return self.steps // 4 if self.burn_in is None else self.burn_in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AtlasData:
    """The dataset of the top-k pass: ``inputs`` in the model's units ``[N, *input_shape]`` and
    the same rows as uint8 pictures ``pixels`` ``[N, C, H, W]`` for the crops; ``name`` for the
    manifest. ``fingerprint`` hashes the inputs, so a resumed run can tell another dataset."""

    inputs: torch.Tensor
    pixels: torch.Tensor
    name: str = "data"
    fingerprint: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.pixels):
            raise ValueError(f"inputs ({len(self.inputs)}) and pixels ({len(self.pixels)}) must have as many rows")
        if self.pixels.dtype != torch.uint8:
            raise TypeError(f"pixels must be uint8 pictures, got {self.pixels.dtype}")
        h = hashlib.sha256()
        h.update(str(tuple(self.inputs.shape)).encode())
        h.update(self.inputs.detach().cpu().contiguous().float().numpy().tobytes())
        self.fingerprint = h.hexdigest()


@dataclass
class LayerPlan:
    """A layer's share of the work: its units cut into blocks, and its top-k pass (if any data)."""

    layer: str
    units: int
    blocks: list[list[int]]
    topk: dict[str, torch.Tensor] | None = None


@dataclass
class BlockTask:
    """One block of units, with everything a worker needs besides the model: each unit's facet
    starts (``[F, *input_shape]``) and the top-k facts that go into its record."""

    layer: str
    units: list[int]
    starts: list[torch.Tensor]
    facet_labels: list[torch.Tensor]
    unit_facts: list[dict[str, Any]]


#: Runs blocks (given lazily, so a big layer's starting images are not all held at once) and calls
#: ``done(index, records)`` in the caller's thread as each block finishes, in any order.
Execute = Callable[[Iterator[tuple[int, BlockTask]], Callable[[int, list[UnitRecord]], None]], None]


def check_layers(layers: dict[str, LayerInfo], names: Sequence[str]) -> None:
    """A clear error for a layer name the model does not have or that cannot be a target."""
    import difflib

    for name in names:
        if name not in layers:
            close = difflib.get_close_matches(name, list(layers), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise LdamError(f"no layer named {name!r}.{hint} Run `ldam layers MODEL` to list them")
        if not layers[name].addressable:
            raise LdamError(f"layer {name!r} cannot be sampled: {layers[name].reason}")


def expand_layers(layers: dict[str, LayerInfo], spec: Sequence[str]) -> list[str]:
    """``["*"]`` (or ``"all"``) → every addressable layer that is not an alias, in model order."""
    if list(spec) in (["*"], ["all"]):
        return [n for n, li in layers.items() if li.addressable and not li.alias_of]
    return list(spec)


def blocks_of(units: int, block: int) -> list[list[int]]:
    return [list(range(a, min(a + block, units))) for a in range(0, units, block)]


def manifest(model: nn.Module, cfg: AtlasConfig, layers: dict[str, LayerInfo], input_shape: Sequence[int],
             data: AtlasData | None, *, name: str, mean: Sequence[float], std: Sequence[float],
             live_model: str | None) -> dict[str, Any]:
    """The run's configuration as pinned in ``manifest.json``."""
    return {
        "model": name,
        "model_sha256": model_fingerprint(model),
        "input_shape": [int(s) for s in input_shape],
        "layers": [{"name": n, "units": layers[n].units} for n in cfg.layers],
        "dataset": None if data is None else data.name,
        "dataset_sha256": None if data is None else data.fingerprint,
        "dataset_rows": None if data is None else len(data.inputs),
        "k": cfg.k,
        "max_facets": cfg.max_facets,
        "sampler": cfg.to_dict(),
        "seed": cfg.seed,
        "display": "pixel" if data is not None else "signed",
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "live_model": live_model,
    }


def topk_pass(model: nn.Module, store: AtlasStore, cfg: AtlasConfig, layer: str, layers: dict[str, LayerInfo],
              input_shape: Sequence[int], data: AtlasData, progress: bool) -> dict[str, torch.Tensor]:
    """The layer's streaming top-``max(k, top_n)`` pass, stored once as ``topk.pt`` (read back when
    present), with each entry's receptive-field box."""
    done = store.read_layer(layer, "topk")
    if done is not None:
        return done
    keep = max(cfg.k, cfg.top_n)
    top = stream_topk(model, layer, data.inputs, keep, batch_size=cfg.batch_size, layers=layers, progress=progress)
    rf = receptive_field(model, layer, input_shape, layers=layers)
    boxes = rf.boxes(top.position, clip=False)  # unclipped: a crop keeps the unit's position at its centre
    li = layers[layer]
    out = {"score": top.score, "index": top.index, "position": top.position, "box": boxes,
           "max": top.max, "min": top.min, "nonnegative": torch.tensor(bool((top.min >= 0).all())),
           "spatial": torch.tensor(list(li.spatial), dtype=torch.long)}
    store.write_layer(layer, "topk", out)
    return out


def plan_block(model: nn.Module, cfg: AtlasConfig, layer: str, units: list[int], layers: dict[str, LayerInfo],
               input_shape: Sequence[int], data: AtlasData | None, topk: dict[str, torch.Tensor] | None,
               feature_layer: str | None) -> BlockTask:
    """Facets and starting points for each unit of a block (from its top-``top_n`` rows), and the
    top-k facts of its record. Without data every unit has one facet starting from zero."""
    starts, labels, facts = [], [], []
    for u in units:
        if data is None or topk is None or not bool((topk["index"][u] >= 0).any()):
            starts.append(torch.zeros(1, *input_shape))
            labels.append(torch.zeros(0, dtype=torch.long))
            facts.append(_no_data_facts(input_shape))
            continue
        rows = topk["index"][u]
        rows = rows[rows >= 0]
        pool = rows[: cfg.top_n]
        silhouette = None
        if is_dead(float(topk["max"][u]), float(topk["min"][u]), bool(topk["nonnegative"])):
            # its top images are ties at zero, not what it responds to: one facet, from zero
            starts.append(torch.zeros(1, *input_shape))
            labels.append(torch.zeros(len(pool), dtype=torch.long))
        else:
            facets, start = facet_starts(model, data.inputs[pool], feature_layer or default_feature_layer(layers),
                                         cfg.max_facets, seed=cfg.seed, layers=layers)
            starts.append(start.float())
            labels.append(facets.labels.long())
            silhouette = facets.silhouette
        top = rows[: cfg.k]
        boxes = topk["box"][u][: len(top)]
        facts.append({
            "topk_index": top.clone(),
            "topk_score": topk["score"][u][: len(top)].clone(),
            "topk_box": boxes.clone(),
            "topk_crops": crops(data.pixels, top, boxes, cfg.crop),
            "data_max": float(topk["max"][u]),
            "data_min": float(topk["min"][u]),
            "nonnegative": bool(topk["nonnegative"]),
            "silhouette": None if silhouette is None else float(silhouette),
        })
    return BlockTask(layer, units, starts, labels, facts)


def _no_data_facts(input_shape: Sequence[int]) -> dict[str, Any]:
    c = int(input_shape[0]) if len(input_shape) == 3 else 1
    return {"topk_index": torch.zeros(0, dtype=torch.long), "topk_score": torch.zeros(0),
            "topk_box": torch.zeros(0, 4, dtype=torch.long), "topk_crops": torch.zeros(0, c, 1, 1, dtype=torch.uint8),
            "data_max": None, "data_min": None, "nonnegative": False, "silhouette": None}


def sample_block(model: nn.Module, cfg: AtlasConfig, task: BlockTask, input_shape: Sequence[int]) -> list[UnitRecord]:
    """Run one block: one sampler over every (unit, facet) target, then one record per unit.

    The sampler draws from ``p(x) ∝ exp((f_u(x) − λ‖x‖²/2) / T)`` per target with ``chains``
    chains started at the facet's mean image; chain means are over the kept (post-burn-in) states.
    """
    targets = [f"{task.layer}:{u}" for u, s in zip(task.units, task.starts) for _ in range(len(s))]
    c = cfg.chains
    init = torch.cat([s.repeat_interleave(c, 0) for s in task.starts])
    sampler = Sampler(model, targets, input_shape, chains=c, step_size=cfg.step_size, temperature=cfg.temperature,
                      regularizers=[L2(cfg.l2)] if cfg.l2 else [], method=cfg.method, burn_in=cfg.kept_from,
                      seed=cfg.seed, ema_tau=None, keep_samples=False, init=init.to(dtype=torch.float32))
    sampler.reserve_trace(cfg.steps)
    sampler.run(cfg.steps)
    res = sampler.result()
    shape = tuple(int(s) for s in input_shape)
    records, row = [], 0
    for u, start, labels, facts in zip(task.units, task.starts, task.facet_labels, task.unit_facts):
        f = len(start)
        sl = slice(row, row + f * c)
        row += f * c
        means = res.mean[sl].reshape(f, c, *shape)
        trace = res.activations[:, sl].float()
        acceptance = None if res.acceptance is None else res.acceptance[sl]
        diag = unit_diagnostics(trace, f, cfg.kept_from, acceptance, facts["data_max"], facts["data_min"],
                                facts["nonnegative"])
        diag["facets"] = f
        diag["silhouette"] = facts["silhouette"]
        diag["modes"] = _modes(means.reshape(f * c, *shape))
        records.append(UnitRecord(
            layer=task.layer, unit=u, topk_index=facts["topk_index"], topk_score=facts["topk_score"],
            topk_box=facts["topk_box"], topk_crops=facts["topk_crops"], facet_labels=labels,
            facet_starts=start, chain_means=means.clone(), chain_last=res.last[sl].reshape(f, c, *shape).clone(),
            trace=trace.clone(), diagnostics=diag,
        ))
    return records


def _modes(means: torch.Tensor) -> int | None:
    """The number of distinct modes among the chain means (:func:`ldam.analysis.count_modes`);
    ``None`` without scipy (the ``analysis`` extra)."""
    if len(means) < 2:
        return 1
    try:
        return int(count_modes(means))
    except ImportError:
        return None


def commit_block(store: AtlasStore, layer: str, index: int, records: list[UnitRecord]) -> None:
    """Write a block's records: the pending file (atomic), each unit's shard (atomic), then drop the
    pending file. A kill between any two of these leaves a state :func:`recover_block` completes."""
    pending = store.layer_dir(layer) / f"block-{index}.pending.pt"
    from ..io import atomic_save

    atomic_save([r.to_dict() for r in records], pending)
    for r in records:
        if not store.has_unit(r.layer, r.unit):
            store.write_unit(r)
    pending.unlink()


def recover_block(store: AtlasStore, layer: str, index: int) -> list[UnitRecord] | None:
    """Finish a block whose pending file survived a kill; returns its records (``None`` if none)."""
    pending = store.layer_dir(layer) / f"block-{index}.pending.pt"
    if not pending.exists():
        return None
    try:
        recs = [UnitRecord.from_dict(d) for d in safe_load(pending)]
    except Exception:  # noqa: BLE001 - an unreadable pending file is recomputed
        pending.unlink()
        return None
    commit_block(store, layer, index, recs)
    return recs


def pending_blocks(store: AtlasStore, plan: LayerPlan) -> Iterator[tuple[int, list[int]]]:
    """The blocks of a layer that still have a missing unit (after recovering pending files)."""
    done = store.done_units(plan.layer)
    for i, units in enumerate(plan.blocks):
        if all(u in done for u in units):
            # killed after the last shard, before the pending file went: it is only a copy now
            (store.layer_dir(plan.layer) / f"block-{i}.pending.pt").unlink(missing_ok=True)
            continue
        if recover_block(store, plan.layer, i) is not None:
            continue
        yield i, units


def run_layers(model: nn.Module, store: AtlasStore, cfg: AtlasConfig, layers: dict[str, LayerInfo],
               input_shape: Sequence[int], data: AtlasData | None,
               execute: "Execute", progress: bool = True, on_unit: Callable[[UnitRecord], None] | None = None,
               on_layer: Callable[[str], None] | None = None) -> None:
    """Plan each layer, make its top-k pass, and hand its pending blocks to ``execute``
    (in-process or Ray), which calls back ``done(index, records)`` as each block finishes."""
    from tqdm.auto import tqdm

    for layer in cfg.layers:
        units = layers[layer].units
        plan = LayerPlan(layer, units, blocks_of(units, cfg.block))
        if data is not None:
            plan.topk = topk_pass(model, store, cfg, layer, layers, input_shape, data, progress)
        todo = list(pending_blocks(store, plan))
        done_now = units - sum(len(u) for _, u in todo)
        bar = tqdm(total=units, initial=done_now, unit="unit", desc=f"atlas {layer}", disable=not progress,
                   dynamic_ncols=True)

        def tasks() -> Iterator[tuple[int, BlockTask]]:
            for i, block_units in todo:
                yield i, plan_block(model, cfg, layer, block_units, layers, input_shape, data, plan.topk,
                                    cfg.feature_layer)

        def done(index: int, records: list[UnitRecord]) -> None:
            commit_block(store, layer, index, records)
            bar.update(len(records))
            if on_unit is not None:
                for r in records:
                    on_unit(r)

        try:
            execute(tasks(), done)
        finally:
            bar.close()
        if on_layer is not None:
            on_layer(layer)


def in_process(model: nn.Module, cfg: AtlasConfig, input_shape: Sequence[int]) -> "Execute":
    """Run blocks one after another in this process."""

    def execute(tasks: Iterator[tuple[int, BlockTask]], done: Callable[[int, list[UnitRecord]], None]) -> None:
        for index, task in tasks:
            done(index, sample_block(model, cfg, task, input_shape))

    return execute


def probe(model: nn.Module, input_shape: Sequence[int]) -> dict[str, LayerInfo]:
    with model_guard(model):
        return probe_layers(model, tuple(int(s) for s in input_shape))


__all__ = ["AtlasConfig", "AtlasData", "BlockTask", "LayerPlan", "check_layers", "expand_layers", "blocks_of",
           "manifest", "topk_pass", "plan_block", "sample_block", "commit_block", "recover_block", "pending_blocks",
           "run_layers", "in_process", "probe", "Execute"]
