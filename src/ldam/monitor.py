"""A training-loop companion: sample what a few neurons respond to while the model trains, and
log it to TensorBoard.

    >>> monitor = ldam.Monitor(["fc3:0-9", "conv2:*"], input_shape=(1, 28, 28), steps=300, chains=4,
    ...                        log_dir="runs/tb", step_size=4e-3, temperature=0.02, regularizers=[ldam.L2(0.3)])
    >>> for epoch in range(epochs):
    ...     train_one_epoch(model)
    ...     monitor(model, step=epoch)      # the model being trained is left exactly as it was
    >>> monitor.close()

**A frozen copy.** The first call deep-copies the model once (``copy.deepcopy``, with every
parameter's ``requires_grad`` off and no ``.grad``); each later call copies the current
parameters and buffers into that copy under ``no_grad``. The chains run on the copy only, so the
model being trained is bitwise untouched: its weights, buffers, ``requires_grad`` flags, train/eval
modes, hooks and ``.grad``. (The copy keeps the model's own hooks, which may be part of what it
computes, such as the old ``weight_norm``; a hook with side effects outside the model sees the
copy's forward passes too.)

**Warm starts are continued chains.** One :class:`~ldam.sampler.Sampler` lives on the copy and
each call continues it for ``n`` more steps (its noise streams continue): with an unchanged model,
two calls of ``S`` steps leave the chains exactly where one run of ``2S`` steps with the same seed
does. A call's pictures and numbers use that call's states only: the chain mean of call ``k`` is
the mean of the states after its steps ``⌊discard·n⌋+1 … n`` (the first quarter of every call is
discarded by default, because the weights moved since the chains last ran). With
``warm_start=False`` every call starts a new Sampler with the same seed, so every epoch's chains
start from the same noise and differ only through the model (common random numbers).

**Bounded cost.** ``every=N`` samples only at steps divisible by ``N``. ``budget=b`` keeps the
monitor's time at most ``b`` times the time since the previous call returned (the training time
between calls): it measures the cost of a chain step (the first call times its first
``min_steps`` steps; later calls use the previous call's cost) and runs
``n = ⌊(b·interval − overhead) / cost⌋`` steps, clamped to ``[min_steps, steps]`` (``overhead``: the
previous call's time outside sampling). The clock is injectable (``clock=``).

**Background.** ``background=True`` runs the sampling, the analysis and the logging in one worker
thread. The weight copy is taken synchronously inside the call, so the loop may change the model
as soon as the call returns. One job at a time: a call while the previous job still runs waits for
it (``busy="wait"``, the default) or is skipped (``busy="skip"``: nothing is copied or logged, the
step is appended to :attr:`Monitor.skipped`). A job's error is raised by the next call,
:meth:`Monitor.wait`, :meth:`Monitor.flush` or :meth:`Monitor.close`.

**TensorBoard tags** (``T`` is a target as ``str(target)``, e.g. ``fc3:7``; ``step`` is the call's step):

* ``ldam/T/activation``: the mean over chains of ``f`` at the call's final states;
* ``ldam/T/activation_of_means``: the mean over chains of ``f`` at each chain's mean;
* ``ldam/T/diversity``: the mean pairwise cosine distance of the chain means (two chains or more);
* ``ldam/T/modes``: the number of modes among the chain means (:func:`ldam.analysis.count_modes`);
* ``ldam/T/acceptance``: the exact methods' (MALA, pMALA, HMC) mean acceptance rate in the call;
* ``ldam/T/trace``: the mean over chains of ``f(x_t)``, every ``trace_every``-th chain step; its
  x axis is the monitor's chain step ``t`` (counted over all calls), not ``step``;
* images ``ldam/T/means`` (the chain means in a row) and ``ldam/T/chains`` (rows: the first
  ``Pictures.chains`` chains, columns: ``Pictures.frames`` states spread over the call, the last
  being the final state), and ``ldam/overview`` (rows: targets, columns: chain means);
* ``ldam/monitor/steps`` (chain steps run) and ``ldam/monitor/seconds`` (the call's time).

Pictures use :mod:`ldam.render`'s displays: ``"signed"`` (the paper's: grey is 0, each picture on
its own scale) or ``"pixel"`` (undo ``(pixel − mean)/std``).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .analysis import cosine_distances, count_modes, mean_pairwise
from .callbacks import Callback, StepInfo
from .errors import LdamError
from .guard import model_guard
from .render import batch_grid
from .samplers import Metropolis
from .sampler import Sampler
from .targets import Target, probe_layers, resolve

#: Sampler arguments that the monitor sets itself.
_MANAGED = {"burn_in": "discard", "thin": None, "ema_tau": None, "keep_samples": None, "chains": "chains",
            "seed": "seed"}


@dataclass(frozen=True)
class Pictures:
    """What the monitor draws per target: ``chains`` chains by ``frames`` states for the ``chains``
    image, each tile enlarged ``zoom`` times, in the ``display`` of :func:`ldam.render.to_image`
    (``"signed"``, or ``"pixel"`` with the model's normalization ``mean``/``std``)."""

    chains: int = 4
    frames: int = 6
    zoom: int = 2
    display: str = "signed"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.display not in ("signed", "pixel"):
            raise ValueError(f"Pictures.display must be 'signed' or 'pixel', got {self.display!r}")
        if self.chains < 1 or self.frames < 1 or self.zoom < 1:
            raise ValueError(f"Pictures needs chains, frames and zoom >= 1, got {self}")


@dataclass
class MonitorRecord:
    """What one monitor call found; lists hold one value per target, in :attr:`targets` order.

    ``means`` (the chain means) and ``last`` (the final states) are ``[n_targets·chains, *input_shape]``
    on the CPU, target-major, and ``trace`` ``[steps, n_targets]`` the mean activation per chain step;
    :attr:`Monitor.history` keeps the records without these three tensors, :attr:`Monitor.last`
    the latest one with them.
    """

    step: int
    steps: int  # chain steps run in this call
    chain_step: int  # the monitor's chain step t at the start of the call (the trace's x axis)
    seconds: float  # the call's time: weight copy, sampling, analysis and logging
    interval: float  # time from the previous call's return to this call (the training time)
    targets: list[str]
    activation: list[float]
    activation_of_means: list[float]
    diversity: list[float]
    modes: list[int]
    acceptance: list[float] | None = None
    means: torch.Tensor | None = field(default=None, repr=False)
    last: torch.Tensor | None = field(default=None, repr=False)
    trace: torch.Tensor | None = field(default=None, repr=False)


def summary_writer(log_dir: str | Path) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``, or an ImportError naming the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "ldam.Monitor logs to TensorBoard, which is not installed: pip install 'ldam[monitor]' "
            f"(or pass log_dir=None to keep the records in monitor.history only). ({e})"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with gradients off (``requires_grad`` False, no ``.grad``), in eval mode."""
    try:
        twin = copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001 - reported with its cause and the fix
        raise LdamError(
            f"ldam.Monitor samples on a copy of the model made with copy.deepcopy, which fails for "
            f"{type(model).__name__}: {type(e).__name__}: {e}. Make the model deep-copyable (keep open files, "
            "locks or data loaders out of its attributes), or pass the plain module (for torch.compile: "
            "model._orig_mod)"
        ) from e
    for p in twin.parameters():
        p.requires_grad_(False)
        p.grad = None
    return twin.eval()


def copy_weights(model: nn.Module, twin: nn.Module) -> None:
    """Copy ``model``'s parameters and buffers into ``twin`` (matched by name) under ``no_grad``;
    ``model`` is only read."""
    with torch.no_grad():
        for kind, src, dst in (("parameters", dict(model.named_parameters()), dict(twin.named_parameters())),
                               ("buffers", dict(model.named_buffers()), dict(twin.named_buffers()))):
            if src.keys() != dst.keys():
                extra, missing = sorted(src.keys() - dst.keys())[:3], sorted(dst.keys() - src.keys())[:3]
                raise LdamError(
                    f"the model has other {kind} than at the monitor's first call (new: {extra}, gone: {missing}); "
                    "a Monitor follows one architecture: create a new Monitor for this model"
                )
            for name, s in src.items():
                d = dst[name]
                if s.shape != d.shape or s.dtype != d.dtype:
                    raise LdamError(
                        f"{name} changed from {list(d.shape)} {d.dtype} to {list(s.shape)} {s.dtype} since the "
                        "monitor's first call; create a new Monitor for this model"
                    )
                d.copy_(s)


class _CallRecorder(Callback):
    """The per-call bookkeeping on the monitor's sampler: the sum of the states after the call's
    discarded head, and a few chains' states at the frame steps.

    Step ``i`` (1-based within the call) is the state after the call's ``i``-th step. Until
    :meth:`plan` gives the call's length, states are held back (only the budget's timed first
    steps run before the length is known).
    """

    def __init__(self, chains: int, discard: float, pictures: Pictures | None):
        self.chains, self.discard, self.pictures = chains, discard, pictures
        self.begin(0, 0)

    def begin(self, t0: int, n_targets: int) -> None:
        """Start a call whose first step is the sampler's step ``t0``, for ``n_targets`` targets."""
        self.t0, self.n = t0, None
        shown = min(self.chains, self.pictures.chains) if self.pictures else 0
        self.shown = shown
        self.rows = torch.tensor([i * self.chains + c for i in range(n_targets) for c in range(shown)],
                                 dtype=torch.long)
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.sum: torch.Tensor | None = None
        self.count = 0
        self.frames: list[torch.Tensor] = []
        self.frame_at: set[int] = set()
        self.skip = 0

    def plan(self, n: int) -> None:
        """The call runs ``n`` steps: discard the first ``⌊discard·n⌋`` (at most ``n − 1``) and draw
        the states after steps ``⌈(j+1)·n/frames⌉``."""
        self.n = n
        self.skip = min(int(self.discard * n), n - 1)
        if self.pictures is not None:
            f = self.pictures.frames
            self.frame_at = {max(1, -(-(j + 1) * n // f)) for j in range(f)}
        pending, self.pending = self.pending, []
        for i, img in pending:
            self._take(i, img)

    def on_step(self, sampler: Any, info: StepInfo) -> None:
        i = info.t - self.t0 + 1
        img = info.images()
        if self.n is None:
            self.pending.append((i, img.clone()))
        else:
            self._take(i, img)

    def _take(self, i: int, img: torch.Tensor) -> None:
        if i > self.skip:
            self.sum = img.clone() if self.sum is None else self.sum.add_(img)
            self.count += 1
        if i in self.frame_at:
            self.frames.append(img.index_select(0, self.rows.to(img.device)).clone())

    def mean(self) -> torch.Tensor:
        assert self.sum is not None, "a call runs at least one step"
        return self.sum / self.count


def _picture(x: torch.Tensor, ncol: int, pictures: Pictures) -> np.ndarray:
    """``x`` ``[N, *shape]`` tiled ``ncol`` per row as an ``[H, W, 3]`` uint8 array (1-D inputs as strips)."""
    if x.dim() == 2:
        x = x.unsqueeze(1)
    img = batch_grid(x, ncol, pictures.display, zoom=pictures.zoom, mean=pictures.mean, std=pictures.std)
    return np.asarray(img.convert("RGB"))


class Monitor:
    """Sample what ``targets`` respond to at points of a training run, on a frozen copy of the model,
    and log pictures and numbers to TensorBoard (see the module's notes for the tags).

    Args:
        targets: target strings (``"fc3:0-9"``, ``"conv2:*"``, ...) or :class:`~ldam.targets.Target` values.
        input_shape: one example's shape, e.g. ``(1, 28, 28)``.
        every: sample at the calls whose step is divisible by ``every``.
        steps: chain steps per call (the most, with a ``budget``).
        chains: chains per target.
        log_dir: where a ``SummaryWriter`` writes (needs ``pip install 'ldam[monitor]'``); or pass
            ``writer`` (any object with ``add_scalar``, ``add_image`` and ``flush``, e.g. Lightning's
            ``TensorBoardLogger.experiment``; the monitor flushes it but does not close it). With
            neither, the records are kept in :attr:`history` only.
        warm_start: continue the chains from the previous call's states (the default), or start
            every call afresh from the same seed.
        budget: at most this share of the time since the previous call (``0.1`` is 10 %); ``None``
            always runs ``steps`` steps.
        min_steps: the fewest steps a call runs under a budget.
        discard: the share of each call's first steps left out of its chain means.
        background: sample in a worker thread; ``busy`` is ``"wait"`` or ``"skip"``.
        seed: chain ``k`` of target ``τ`` is seeded from ``(seed, τ, k)``, as in :class:`~ldam.sampler.Sampler`.
        pictures: what to draw (:class:`Pictures`), or ``None`` for numbers only.
        trace_every: log the activation trace every this many chain steps (``0``: not at all).
        mode_threshold: the cosine-distance cut of :func:`~ldam.analysis.count_modes` (needs scipy,
            ``pip install 'ldam[analysis]'``); ``None`` skips the mode count.
        clock: seconds as a float (default ``time.perf_counter``); the budget's only time source.
        sampler_options: further :class:`~ldam.sampler.Sampler` arguments: ``step_size``,
            ``temperature``, ``regularizers``, ``method``, ``init_scale``, ``callbacks``, ``amp``,
            ``noise``, ``parameterization``, ``transforms``, ``unit_axes``, ...
    """

    def __init__(
        self,
        targets: str | Target | Iterable[str | Target],
        input_shape: Sequence[int],
        *,
        every: int = 1,
        steps: int = 300,
        chains: int = 4,
        log_dir: str | Path | None = None,
        writer: Any = None,
        warm_start: bool = True,
        budget: float | None = None,
        min_steps: int = 10,
        discard: float = 0.25,
        background: bool = False,
        busy: str = "wait",
        seed: int = 0,
        pictures: Pictures | None = Pictures(),
        trace_every: int = 10,
        mode_threshold: float | None = 0.5,
        clock: Callable[[], float] = time.perf_counter,
        **sampler_options: Any,
    ):
        self._check(every, steps, chains, budget, min_steps, discard, busy, trace_every, log_dir, writer)
        self._check_options(sampler_options)
        if mode_threshold is not None and importlib.util.find_spec("scipy") is None:
            raise ImportError("the monitor's mode count needs scipy: pip install 'ldam[analysis]' "
                              "(or pass mode_threshold=None to skip it)")
        self.targets = [targets] if isinstance(targets, (str, Target)) else list(targets)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.every, self.steps, self.chains, self.seed = every, steps, chains, seed
        self.warm_start, self.budget, self.min_steps, self.discard = warm_start, budget, min_steps, discard
        self.background, self.busy = background, busy
        self.pictures, self.trace_every, self.mode_threshold = pictures, trace_every, mode_threshold
        self.clock = clock
        self.sampler_options = dict(sampler_options)
        self._owns_writer = writer is None and log_dir is not None
        self.writer = summary_writer(log_dir) if self._owns_writer else writer
        self.history: list[MonitorRecord] = []
        self.last: MonitorRecord | None = None
        self.skipped: list[int] = []
        self._copy: nn.Module | None = None
        self._sampler: Sampler | None = None
        self._recorder: _CallRecorder | None = None
        self._chain_step = 0
        self._cost: float | None = None  # seconds per chain step, measured
        self._overhead = 0.0  # seconds of the previous call outside sampling
        self._calls = 0
        self._pool: ThreadPoolExecutor | None = None
        self._job_future: Future | None = None
        self._closed = False
        self._last_return = clock()

    @staticmethod
    def _check(every: int, steps: int, chains: int, budget: float | None, min_steps: int, discard: float,
               busy: str, trace_every: int, log_dir: Any, writer: Any) -> None:
        for name, v in (("every", every), ("steps", steps), ("chains", chains), ("min_steps", min_steps)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if budget is not None and not budget > 0:
            raise ValueError(f"budget is a share of the training time, > 0 (e.g. 0.1 for 10 %), or None; got {budget!r}")
        if not 0 <= discard < 1:
            raise ValueError(f"discard is the share of each call's steps left out of the means, in [0, 1); got {discard!r}")
        if busy not in ("wait", "skip"):
            raise ValueError(f"busy must be 'wait' or 'skip', got {busy!r}")
        if trace_every < 0:
            raise ValueError(f"trace_every must be >= 0 (0: no trace), got {trace_every!r}")
        if log_dir is not None and writer is not None:
            raise ValueError("pass log_dir (the monitor makes a SummaryWriter) or writer, not both")

    @staticmethod
    def _check_options(options: dict[str, Any]) -> None:
        known = set(inspect.signature(Sampler.__init__).parameters) - {"self", "model", "targets", "input_shape"}
        for k in options:
            if k in _MANAGED:
                instead = f"; use the monitor's {_MANAGED[k]}=" if _MANAGED[k] else ""
                raise TypeError(f"Monitor sets the sampler's {k} itself{instead}")
            if k not in known:
                raise TypeError(f"Monitor got an unknown argument {k!r}; sampler options are {sorted(known - set(_MANAGED))}")

    # ---- the public surface -------------------------------------------------------------
    @property
    def sampler(self) -> Sampler | None:
        """The sampler on the frozen copy (``None`` before the first call)."""
        return self._sampler

    def __call__(self, model: nn.Module, step: int | None = None) -> MonitorRecord | None:
        """Sample on a copy of ``model``'s current weights and log the result under ``step``
        (default: the number of earlier calls). Returns the call's record in the foreground;
        ``None`` in the background, when ``step`` is not a multiple of ``every``, or when skipped."""
        if self._closed:
            raise LdamError("this monitor is closed; create a new Monitor")
        if not isinstance(model, nn.Module):
            raise TypeError(f"the monitor takes a torch.nn.Module, got {type(model).__name__}")
        start = self.clock()
        step = self._calls if step is None else int(step)
        self._calls += 1
        if step % self.every:
            return None
        if self._job_future is not None:
            if self.busy == "skip" and not self._job_future.done():
                self.skipped.append(step)
                return None
            self._collect()
        interval = start - self._last_return
        self._prepare(model)
        if self.background:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ldam-monitor")
            self._job_future = self._pool.submit(self._job, step, interval, start)
            self._last_return = self.clock()
            return None
        try:
            return self._job(step, interval, start)
        finally:
            self._last_return = self.clock()

    def check(self, model: nn.Module) -> list[str]:
        """Resolve the targets against ``model`` now, without copying it or sampling (to fail before a
        long training run rather than after its first epoch); returns the expanded target names.
        The model is left exactly as found."""
        with model_guard(model):
            layers = probe_layers(model, self.input_shape, unit_axes=self.sampler_options.get("unit_axes"))
            return resolve(model, self.targets, self.input_shape, self.chains, layers).describe()

    def wait(self) -> MonitorRecord | None:
        """Wait for a background job; raise its error if it failed. Returns the latest record."""
        self._collect()
        return self.last

    def flush(self) -> None:
        """Wait for a background job and flush the writer."""
        self._collect()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Wait for a background job, flush the writer (and close it if the monitor made it), end the
        sampler's callbacks. A failed background job's error is raised after everything is closed."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            self._collect()
        except BaseException as e:  # noqa: BLE001 - raised below, once everything is closed
            error = e
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self.writer is not None:
            self.writer.flush()
            if self._owns_writer:
                self.writer.close()
        if self._sampler is not None:
            self._sampler.close()
        if error is not None:
            raise error

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- one call -----------------------------------------------------------------------
    def _collect(self) -> None:
        future, self._job_future = self._job_future, None
        if future is not None:
            future.result()

    def _prepare(self, model: nn.Module) -> None:
        """Synchronously: copy the model (first call) or its weights; make the sampler when needed."""
        if self._copy is None:
            self._copy = frozen_copy(model)
        else:
            copy_weights(model, self._copy)
        if self._sampler is not None and not self.warm_start:
            self._sampler.close()
            self._sampler = None
        if self._sampler is None:
            self._recorder = _CallRecorder(self.chains, self.discard, self.pictures)
            options = dict(self.sampler_options)
            callbacks = [self._recorder, *options.pop("callbacks", ())]
            self._sampler = Sampler(self._copy, self.targets, self.input_shape, chains=self.chains, seed=self.seed,
                                    burn_in=0, ema_tau=None, keep_samples=False, callbacks=callbacks, **options)
        elif isinstance(self._sampler.method, Metropolis):
            self._sampler.method.reset()  # (f, ∇f) cached at the chains' states belong to the old weights

    def _job(self, step: int, interval: float, start: float) -> MonitorRecord:
        sampler, rec = self._sampler, self._recorder
        assert sampler is not None and rec is not None
        try:
            return self._sample_and_log(sampler, rec, step, interval, start)
        except BaseException:
            if self._sampler is not None:
                self._sampler.close()
            self._sampler = None  # the next call starts fresh chains
            raise

    def _sample_and_log(self, sampler: Sampler, rec: _CallRecorder, step: int, interval: float,
                        start: float) -> MonitorRecord:
        rec.begin(sampler.t, len(sampler.targets))
        if isinstance(sampler.method, Metropolis):
            sampler.method.reset_counts()  # the acceptance of this call alone
        t_sampling = self.clock()
        n = self._run(sampler, rec, interval)
        sampling = self.clock() - t_sampling
        self._cost = sampling / n
        record = self._analyse(sampler, rec, step, n, interval)
        self._chain_step += n
        if self.writer is not None:
            self._log(record, torch.stack(rec.frames).cpu() if rec.frames else None, rec.shown)
            record.seconds = self.clock() - start
            self.writer.add_scalar("ldam/monitor/steps", n, step)
            self.writer.add_scalar("ldam/monitor/seconds", record.seconds, step)
            self.writer.flush()
        record.seconds = self.clock() - start
        self._overhead = max(0.0, record.seconds - sampling)
        self.last = record
        self.history.append(replace(record, means=None, last=None, trace=None))
        return record

    def _run(self, sampler: Sampler, rec: _CallRecorder, interval: float) -> int:
        """Run the call's steps: ``steps``, or under a budget as many as fit. Returns their number."""
        if self.budget is None:
            n = self.steps
            rec.plan(n)
            sampler.reserve_trace(n)
            sampler.run(n)
            return n
        low = min(self.min_steps, self.steps)
        done = 0
        cost = self._cost
        if cost is None:  # the first call: time its first steps
            t = self.clock()
            sampler.reserve_trace(low)
            sampler.run(low)
            done = low
            cost = (self.clock() - t) / low
        allowed = self.budget * interval - self._overhead
        n = self.steps if cost <= 0 else int(max(0.0, allowed) // cost)
        n = max(low, min(self.steps, n))
        rec.plan(n)
        if n > done:
            sampler.reserve_trace(n - done)
            sampler.run(n - done)
        return n

    def _analyse(self, sampler: Sampler, rec: _CallRecorder, step: int, n: int, interval: float) -> MonitorRecord:
        nt, k = len(sampler.targets), self.chains
        means = rec.mean()
        last = sampler.images().clone()
        trace = sampler.activations[-n:].reshape(n, nt, k).double().mean(2).cpu()
        sampler.forget_trace(0)
        with sampler.attached(), torch.no_grad():  # the target set reads batches laid out as the chains
            f_last, f_means = (sampler.target_set.activation(x).double().cpu().view(nt, k).mean(1) for x in (last, means))
        means_cpu, last_cpu = means.detach().cpu(), last.detach().cpu()
        diversity, modes = [], []
        for i in range(nt):
            m = means_cpu[i * k:(i + 1) * k]
            diversity.append(mean_pairwise(cosine_distances(m)))
            modes.append(count_modes(m, self.mode_threshold) if self.mode_threshold is not None else 0)
        acceptance = None
        a = sampler.method.acceptance if isinstance(sampler.method, Metropolis) else None
        if a is not None:
            acceptance = a.double().cpu().view(nt, k).mean(1).tolist()
        return MonitorRecord(
            step=step, steps=n, chain_step=self._chain_step, seconds=0.0, interval=interval,
            targets=sampler.target_set.describe(), activation=f_last.tolist(), activation_of_means=f_means.tolist(),
            diversity=diversity, modes=modes, acceptance=acceptance, means=means_cpu, last=last_cpu, trace=trace,
        )

    def _log(self, r: MonitorRecord, frames: torch.Tensor | None, shown: int) -> None:
        """Write the record's scalars and pictures; ``frames`` ``[frames, n_targets·shown, *shape]``
        holds the first ``shown`` chains of each target at the frame steps."""
        w, k, step = self.writer, self.chains, r.step
        for i, name in enumerate(r.targets):
            p = f"ldam/{name}/"
            w.add_scalar(p + "activation", r.activation[i], step)
            w.add_scalar(p + "activation_of_means", r.activation_of_means[i], step)
            if k > 1 and math.isfinite(r.diversity[i]):
                w.add_scalar(p + "diversity", r.diversity[i], step)
            if self.mode_threshold is not None:
                w.add_scalar(p + "modes", r.modes[i], step)
            if r.acceptance is not None:
                w.add_scalar(p + "acceptance", r.acceptance[i], step)
            if self.trace_every and r.trace is not None:
                for j in range(0, r.steps, self.trace_every):
                    w.add_scalar(p + "trace", float(r.trace[j, i]), r.chain_step + j)
            if self.pictures is not None and r.means is not None:
                w.add_image(p + "means", _picture(r.means[i * k:(i + 1) * k], k, self.pictures), step,
                            dataformats="HWC")
                if frames is not None:
                    f = frames[:, i * shown:(i + 1) * shown]  # [frames, shown, ...] → rows: chains
                    w.add_image(p + "chains", _picture(f.transpose(0, 1).flatten(0, 1), len(frames), self.pictures),
                                step, dataformats="HWC")
        if self.pictures is not None and r.means is not None:
            w.add_image("ldam/overview", _picture(r.means, k, self.pictures), step, dataformats="HWC")


__all__ = ["Monitor", "MonitorRecord", "Pictures", "summary_writer", "frozen_copy", "copy_weights"]
