"""Running the chains: the streaming :class:`Sampler` and the one-call :func:`sample`.

The chains for ``n`` targets are one batch of ``n · chains`` rows, target-major, so every step
is one batched forward and backward pass whatever the number of targets.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .burnin import AutoBurnIn, BurnIn, make_burn_in
from .callbacks import Callback, StepInfo
from .energy import L2, Energy, Regularizer
from .errors import DivergenceError, LdamError, NonFiniteActivationError, PrecisionNote, ShapeError
from .guard import model_guard
from .parameterization import LatentEnergy, Parameterization
from .results import Result
from .samplers import ChainNoise, Method, Metropolis, StepContext, chain_seeds, make_method
from .schedules import Schedule, evaluate
from .targets import Target, TargetSet, _model_device, _model_dtype, probe_layers, resolve
from .transforms import Transform, Transformed


def _check_arguments(model: Any, chains: int, thin: int, ema_tau: float | None) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if chains < 1:
        raise ValueError(f"chains must be >= 1, got {chains}")
    if thin < 1:
        raise ValueError(f"thin must be >= 1, got {thin}")
    if ema_tau is not None and ema_tau < 1:
        raise ValueError(f"ema_tau must be >= 1 step (or None), got {ema_tau}")


def _describe(v: Any) -> Any:
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers (names, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Sampler:
    """Langevin chains for one or more targets, advanced a step at a time.

    Temperature, step size, regularizer weights and even the method may be changed between
    calls to :meth:`run`; the live UI drives the sampler that way. Every call leaves the model
    exactly as found.

    Args:
        model: any ``nn.Module``; it is run in eval mode and never modified.
        targets: a target string such as ``"fc3:0-9"``, a :class:`~ldam.targets.Target`, or a list.
        input_shape: one example's shape without the batch dimension, e.g. ``(1, 28, 28)``.
        chains: chains per target.
        step_size: ``ε``, a float or a schedule ``t ↦ ε_t``.
        temperature: ``T``, a float or a schedule ``t ↦ T_t``.
        regularizers: values such as ``[ldam.L2(1.0), ldam.TotalVariation(0.1)]``.
        method: ``"sgld"``, ``"mala"``, ``"pmala"``, ``"hmc"``, ``"psgld"``, ``"paper"``, or a method
            value such as ``ldam.HMC(leapfrog=10)``.
        burn_in: steps to discard, ``"auto"``, or an :class:`~ldam.burnin.AutoBurnIn`.
        thin: keep every ``thin``-th state after burn-in.
        seed: chain ``k`` of target ``τ`` is seeded from ``(seed, τ, k)``.
        ema_tau: time constant ``τ`` (steps) of the exponential moving average of the chains
            after burn-in, the paper's averaging window; ``None`` to skip it.
        init_scale: chains start at ``init_scale · N(0, I)``, or pass ``init`` (a tensor).
        keep_samples: store the kept states (the mean and EMA are kept either way).
        callbacks: :class:`~ldam.callbacks.Callback` values.
        unit_axes: which axis holds the units of a layer, overriding the rule of
            :mod:`ldam.targets`, e.g. ``{"blocks.0.mlp": "last"}``.
        amp: ``"bf16"`` (or ``"fp16"``) runs the model's forward and backward under autocast;
            the chain state, the noise, the regularizers and Metropolis tests stay in the
            chains' dtype. ``None`` (the default) runs the model in its own dtype.
        noise: where the chains' Gaussian noise comes from: ``"chain"`` (one seeded CPU
            generator per chain, the fastest on a CPU), ``"counter"`` (Philox4x32-10 computed on
            the model's device, :class:`ldam.noise.CounterNoise`: no host round trip), or
            ``"auto"``: ``"chain"`` on the CPU, ``"counter"`` elsewhere. Either way a chain's
            stream depends only on ``(seed, target, chain index)``; the two kinds differ.
        parameterization: where the chains live (:mod:`ldam.parameterization`): ``None`` for the
            input itself, or e.g. ``ldam.Spectral()`` / ``ldam.Generator(G, (64,))``; the state
            :attr:`x` is then the latent ``z`` and :meth:`images` maps it to inputs. Means,
            samples and the EMA are kept as images.
        transforms: e.g. ``[ldam.Jitter(8), ldam.Rotate(10)]``: the activation becomes
            ``E_τ f(τ(x))``, estimated with ``transform_draws`` random transforms per chain and
            step (:mod:`ldam.transforms`). Unadjusted methods only.

    The chains are kept in the model's floating dtype (float32 or float64); for a bfloat16 or
    float16 model they are kept in float32 and cast for each forward pass (a
    :class:`PrecisionNote` warning says so).
    """

    def __init__(
        self,
        model: nn.Module,
        targets: str | Target | Iterable[str | Target],
        input_shape: Sequence[int],
        *,
        chains: int = 8,
        step_size: Schedule = 1e-2,
        temperature: Schedule = 1.0,
        regularizers: Sequence[Regularizer] = (),
        method: str | Method = "sgld",
        burn_in: int | str | BurnIn = 0,
        thin: int = 1,
        seed: int = 0,
        ema_tau: float | None = 200.0,
        init_scale: float = 1.0,
        init: torch.Tensor | None = None,
        keep_samples: bool = True,
        callbacks: Sequence[Callback] = (),
        check_every: int = 10,
        unit_axes: Mapping[str, str | int] | None = None,
        amp: str | None = None,
        noise: str = "auto",
        parameterization: Parameterization | None = None,
        transforms: Sequence[Transform] = (),
        transform_draws: int = 1,
    ):
        _check_arguments(model, chains, thin, ema_tau)
        self.model = model
        self.chains = chains
        self._setup_precision(model)
        self._setup_targets(model, targets, input_shape, amp, unit_axes)
        keys = chain_seeds(seed, self.target_set.describe(), chains)
        self._setup_energy(regularizers, parameterization, transforms, transform_draws, keys)
        self.method = make_method(method)
        self._check_mix(self.method)
        self.step_size: Schedule = step_size
        self.temperature: Schedule = temperature
        self.burn_in = make_burn_in(burn_in)
        self._burn_in_spec = copy.deepcopy(self.burn_in)
        self.thin = thin
        self.seed = seed
        self.ema_tau = ema_tau
        self.keep_samples = keep_samples
        self.callbacks = list(callbacks)
        self.check_every = max(1, check_every)
        self._config = {
            "targets": self.target_set.describe(),
            "input_shape": list(self.input_shape),
            "chains": chains,
            "step_size": _describe(step_size),
            "temperature": _describe(temperature),
            "regularizers": [repr(r) for r in self.energy.regularizers],
            "method": repr(self.method),
            "burn_in": _describe(burn_in),
            "thin": thin,
            "seed": seed,
            "ema_tau": ema_tau,
            "init_scale": init_scale,
            "noise": noise if noise != "auto" else ("chain" if self.device.type == "cpu" else "counter"),
            "model": type(model).__name__,
            "model_dtype": str(self.model_dtype).replace("torch.", ""),
            "chain_dtype": str(self.dtype).replace("torch.", ""),
            "amp": amp,
            "parameterization": None if parameterization is None else parameterization.describe(),
            "transforms": [repr(t) for t in self.transforms],
            "transform_draws": transform_draws if self.transforms else None,
            "model_sha256": model_fingerprint(model),
            "torch": torch.__version__,
        }
        self.noise = make_noise(noise, self.device)(keys, self.state_shape, self.device, self.dtype)
        self._setup_state(init, init_scale)

    def _setup_precision(self, model: nn.Module) -> None:
        """The device and the chains' dtype: the model's float32/float64, or float32 for a half-precision
        model (small Langevin steps vanish in bfloat16's 8-bit mantissa), cast for each forward."""
        self.device = _model_device(model)
        self.model_dtype = _model_dtype(model)
        self.dtype = self.model_dtype if self.model_dtype in (torch.float32, torch.float64) else torch.float32
        if self.dtype != self.model_dtype:
            warnings.warn(
                f"the model runs in {str(self.model_dtype).replace('torch.', '')}: the chains are kept in float32 "
                "and cast to the model's dtype for each forward pass", PrecisionNote, stacklevel=3,
            )

    def _setup_targets(self, model: nn.Module, targets: Any, input_shape: Sequence[int], amp: str | None,
                       unit_axes: Mapping[str, str | int] | None) -> None:
        """Probe the model's layers once (under the guard) and resolve the targets on them."""
        self.input_shape = tuple(int(s) for s in input_shape)
        if not self.input_shape:
            raise ShapeError("input_shape must give at least one dimension, e.g. (1, 28, 28) or (2, 128)")
        with model_guard(model):
            self.layers = probe_layers(model, self.input_shape, self.device, self.model_dtype, unit_axes)
            self.target_set: TargetSet = resolve(model, targets, self.input_shape, self.chains, self.layers,
                                                 amp=amp).to(self.device)
        self.targets = self.target_set.targets

    def _setup_energy(self, regularizers: Sequence[Regularizer], parameterization: Parameterization | None,
                      transforms: Sequence[Transform], transform_draws: int, keys: Sequence[int]) -> None:
        """The energy ``−log p``: the (transformed) activation and the regularizers, bound to the
        chains' shape, and wrapped in the parameterization's latent when there is one."""
        self.transforms = list(transforms)
        measured = Transformed(self.target_set, self.transforms, keys, transform_draws) if self.transforms else self.target_set
        self.energy: Energy = Energy(measured, regularizers)
        for r in self.energy.regularizers:
            r.bind(self.input_shape, self.device, self.dtype)
        self.parameterization = parameterization
        self.state_shape = self.input_shape
        if parameterization is not None:
            if not isinstance(parameterization, Parameterization):
                raise TypeError(f"parameterization must be a value such as ldam.Spectral(), got {parameterization!r}")
            self.state_shape = tuple(parameterization.bind(self.input_shape, self.device, self.dtype))
            self.energy = LatentEnergy(self.energy, parameterization)

    def _setup_state(self, init: torch.Tensor | None, init_scale: float) -> None:
        """The chains' first state (``init`` or scaled noise, projected into any box) and empty
        history: the activation trace, the kept samples, their sum and the moving average."""
        if init is not None:
            init = torch.as_tensor(init, dtype=self.dtype, device=self.device)
            if init.shape[1:] != self.state_shape or init.shape[0] not in (1, self.batch):
                where = "" if self.parameterization is None else " (the latent of the parameterization)"
                raise ShapeError(f"init must have shape [{self.batch} or 1, *{self.state_shape}]{where}, "
                                 f"got {list(init.shape)}")
            self.x = init.expand(self.batch, *self.state_shape).clone()
            self.noise.initial()
        else:
            self.x = self.noise.initial() * init_scale
        self.energy.project_(self.x)
        self._start_scale = float(self.x.abs().amax()) if self.x.numel() else 0.0
        self.t = 0
        self._act = torch.empty(64, self.batch, dtype=self.dtype, device=self.device)
        self._act_base = 0  # step of self._act[0]; raised by forget_trace
        self._samples: list[torch.Tensor] = []
        self._kept = 0
        self._sum = torch.zeros(self.batch, *self.input_shape, dtype=self.dtype, device=self.device)
        self.ema: torch.Tensor | None = None
        self.burn_in_step: int | None = None
        self._checked = 0
        self._good = self.x.clone()
        self._began = False
        self._attached = False

    # ---- knobs -------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return len(self.target_set.targets) * self.chains

    @property
    def regularizers(self) -> list[Regularizer]:
        return self.energy.regularizers

    def set_weight(self, name: str, weight: float | None) -> None:
        """Change the weight of the regularizer called ``name`` (``"l2"``, ``"tv"``, ...), adding an
        :class:`~ldam.energy.L2` if asked for ``"l2"`` and there is none."""
        for r in self.energy.regularizers:
            if r.name == name:
                r.weight = weight  # type: ignore[assignment]  (a discriminator checks 0 <= w <= 1)
                return
        if name == "l2" and weight is not None:
            self.energy.add_regularizer(L2(weight))
            return
        raise KeyError(f"no regularizer named {name!r}; have {[r.name for r in self.energy.regularizers]}")

    def add_regularizer(self, regularizer: Regularizer) -> None:
        """Add a regularizer while the chains run (the live UI's critic), checked as the constructor's
        are (a regularizer value; a ``mode="mix"`` discriminator only with ``method="paper"``) and
        bound to the chains' input shape, device and dtype; nothing is added when a check fails."""
        self.energy.add_regularizer(regularizer)
        try:
            self._check_mix(self.method)
            regularizer.bind(self.input_shape, self.device, self.dtype)
        except Exception:
            self.energy.regularizers.pop()
            raise

    def restart_average(self) -> None:
        """Restart the moving average :attr:`ema` from the chains' current images (after a
        :meth:`reset`, a display of the average then starts at once instead of after burn-in)."""
        self.ema = self.images().clone()

    def reserve_trace(self, steps: int) -> None:
        """Make room in the activation trace for ``steps`` more steps at once (none is regrown
        while they run: :func:`sample` knows its steps in advance)."""
        n = self.t - self._act_base
        if self._act.shape[0] < n + steps:
            self._resize_trace(n + steps)

    def _resize_trace(self, rows: int) -> None:
        n = self.t - self._act_base
        grown = torch.empty(rows, self.batch, dtype=self.dtype, device=self.device)
        grown[:n] = self._act[:n]
        self._act = grown

    def images(self, state: torch.Tensor | None = None) -> torch.Tensor:
        """The inputs ``x = Φ(z)`` for a state (default: the chains' current state :attr:`x`);
        the state itself without a parameterization."""
        z = self.x if state is None else state
        if self.parameterization is None:
            return z
        with torch.no_grad(), self.parameterization.guard():
            return self.energy.images(z)  # type: ignore[attr-defined]

    def set_method(self, method: str | Method) -> None:
        m = make_method(method)
        self._check_mix(m)
        self.method = m

    def _check_mix(self, method: Method) -> None:
        if isinstance(method, Metropolis) and getattr(self.energy, "implicit", False):
            raise ValueError(
                f"{method.name!r} needs log p itself, but a denoising-autoencoder prior gives only its gradient "
                "(the score): use method='sgld', 'psgld' or 'ascent', or Generator without a denoiser"
            )
        if isinstance(method, Metropolis) and self.transforms:
            raise ValueError(
                f"{method.name!r} needs the exact energy, but transforms make the activation a random estimate "
                "of E_τ f(τ(x)) (a Metropolis test on it would target another density): use method='sgld', "
                "'psgld' or 'ascent' with transforms, or drop the transforms"
            )
        if method.name != "paper" and any(getattr(r, "mode", None) == "mix" for r in self.energy.regularizers):
            raise ValueError(
                f"a discriminator in mode='mix' mixes RMS-normalized gradients, which only the authors' update "
                f"does: use method='paper', or Discriminator(mode='density') with {method.name!r}"
            )

    def reset(self, init_scale: float = 1.0) -> None:
        """Restart every chain from fresh noise (the streams continue; history is cleared)."""
        self.x = self.noise.normal() * init_scale
        self.energy.project_(self.x)
        self.method.reset()
        for r in self.energy.regularizers:
            r.reset()
        self._act_base = 0
        self.t, self._kept, self._checked = 0, 0, 0
        self._samples.clear()
        self._sum.zero_()
        self.ema, self.burn_in_step = None, None
        self.burn_in = copy.deepcopy(self._burn_in_spec)
        self._good = self.x.clone()

    # ---- running -----------------------------------------------------------------------
    @property
    def burned_in(self) -> bool:
        return self.burn_in_step is not None

    @contextmanager
    def attached(self) -> Iterator["Sampler"]:
        """Hold the model guard and the capture hooks across many :meth:`run` calls (a live
        session running one step per frame enters them once, not per frame). The model is
        restored when the block ends, as after a single :meth:`run`."""
        if self._attached:
            yield self
            return
        guard = self.parameterization.guard() if self.parameterization is not None else nullcontext()
        with model_guard(self.model), self.target_set.attached(), guard:
            self._attached = True
            try:
                yield self
            finally:
                self._attached = False

    def run(self, steps: int = 1, stop: Callable[[], bool] | None = None) -> StepInfo | None:
        """Advance every chain ``steps`` steps, or fewer when ``stop()`` (asked before each step)
        says so; the chains are checked for divergence once, at the end. Returns the last step's
        :class:`StepInfo`. If a step, the check or a callback raises (or the run is interrupted),
        the callbacks' ``on_end`` runs with ``None`` and the error propagates unchanged."""
        info = None
        try:
            with self.attached(), torch.no_grad():
                if not self._began:
                    self._began = True
                    for cb in self.callbacks:
                        cb.on_begin(self)
                try:
                    for i in range(steps):
                        if stop is not None and stop():
                            break
                        info = self._step(describe=bool(self.callbacks) or i == steps - 1)
                finally:
                    self._check()
        except BaseException:
            self._end(None)
            raise
        return info

    def close(self) -> None:
        """End the callbacks of a run whose result will not be collected (``on_end`` with ``None``);
        ``with Sampler(...) as s:`` calls it on leaving the block."""
        self._end(None)

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _end(self, result: Result | None) -> None:
        """Call every callback's ``on_end`` once for the current run. After an error (``result`` is
        ``None``) a failing ``on_end`` only warns, so that the first error is the one raised."""
        if not self._began:
            return
        self._began = False
        for cb in self.callbacks:
            if result is not None:
                cb.on_end(self, result)
                continue
            try:
                cb.on_end(self, None)
            except Exception as e:  # the run's own error is already propagating
                warnings.warn(f"{type(cb).__name__}.on_end failed while the run stopped: {e!r}", stacklevel=3)

    def _step(self, describe: bool = True) -> StepInfo | None:
        t = self.t
        eps = evaluate(self.step_size, t, "step_size")
        temp = evaluate(self.temperature, t, "temperature")
        self.energy.temperature = temp
        if self.burn_in_step is None and self.burn_in.ready(t):
            self._begin_keeping(t)
        elif self.burn_in_step is not None:
            keep = (t - self.burn_in_step) % self.thin == 0
            img = self.images() if self.ema is not None or keep else None
            if self.ema is not None:
                self.ema.lerp_(img, 1.0 / self.ema_tau)  # type: ignore[operator]
            if keep:
                self._keep(img)
        ctx = StepContext(self.energy, eps, temp, self.noise, t, adapting=self.burn_in_step is None)
        f = self.method.step(self.x, ctx)
        i = t - self._act_base
        if i >= self._act.shape[0]:
            self._resize_trace(2 * self._act.shape[0])
        self._act[i] = f
        observers = [r for r in self.energy.regularizers if type(r).observe is not Regularizer.observe]
        if observers:  # regularizers may be added while the chains run (the live UI's critic)
            img = self.images()
            for r in observers:
                r.observe(img, t)
        if self.burn_in_step is None:
            self.burn_in.observe(t, f.view(len(self.targets), self.chains))
        self.t = t + 1
        if self.t - self._checked >= self.check_every:
            self._check()
        if not describe:  # nobody reads it: no statistics (MALA's would cost a device sync)
            return None
        stats = self.method.stats()
        for r in self.energy.regularizers:
            stats.update(r.stats())
        info = StepInfo(t, f, temp, eps, self.burn_in_step is not None, stats, chains=self.chains,
                        images=self.images, ema=self.ema)
        for cb in self.callbacks:
            cb.on_step(self, info)
        return info

    def _begin_keeping(self, t: int) -> None:
        self.burn_in_step = t
        if isinstance(self.burn_in, AutoBurnIn) and self.burn_in.timed_out:
            warnings.warn(
                f"auto burn-in did not see the activations settle within {t} steps; keeping samples "
                "from here on. Run longer, raise the step size, or give burn_in as a number of steps.",
                stacklevel=3,
            )
        if isinstance(self.method, Metropolis):
            self.method.reset_counts()
        img = self.images()
        self._keep(img)
        if self.ema_tau is not None:
            self.ema = img.clone()

    def _keep(self, img: torch.Tensor) -> None:
        self._kept += 1
        self._sum.add_(img)
        if self.keep_samples:
            self._samples.append(img.clone())

    def _check(self) -> None:
        """Raise a clear error if any chain left the finite numbers since the last check."""
        if self.t == self._checked:
            return
        acts = self._act[self._checked - self._act_base : self.t - self._act_base]
        limit = self.divergence_limit(evaluate(self.temperature, max(0, self.t - 1), "temperature"))
        # one transfer for both numbers (a device sync per check, not three)
        big, finite = torch.stack([self.x.abs().amax().double(), torch.isfinite(acts).all().double()]).tolist()
        ok_x = math.isfinite(big) and big < limit
        ok_f = finite == 1.0
        if ok_x and ok_f:
            self._checked = self.t
            self._good.copy_(self.x)
            return
        bad_steps = (~torch.isfinite(acts)).any(1).nonzero()
        first_bad = self._checked + (int(bad_steps[0]) if len(bad_steps) else acts.shape[0] - 1)
        start, self._checked = self._checked, self.t
        x_good_finite = bool(torch.isfinite(self._good).all())
        grad_ok = True
        if x_good_finite:
            with torch.enable_grad():
                f_good, g_good = self.energy.activation(self._good)
            grad_ok = bool(torch.isfinite(f_good).all()) and bool(torch.isfinite(g_good).all())
        eps = evaluate(self.step_size, first_bad, "step_size")
        temp = evaluate(self.temperature, first_bad, "temperature")
        if ok_x and not ok_f or not grad_ok:
            raise NonFiniteActivationError(
                f"the model produced a NaN or Inf activation or gradient for a finite input "
                f"(first seen at step {first_bad}). This is a property of the model, not of the "
                "sampler: check it for log/sqrt/division on values that can reach zero, or add a "
                "Box constraint to keep inputs in range"
            )
        l2 = sum(r.weight for r in self.energy.regularizers if isinstance(r, L2) and r.weight)
        stable = getattr(self.method, "stable_step", None)
        bound = stable(l2, temp) if stable is not None and l2 else None
        raise DivergenceError(
            method=self.method.name, step_size=eps, temperature=temp, l2=l2, bound=bound,
            start=start, end=self.t, magnitude=float(self.x.abs().amax()), limit=limit,
            prior=bool(l2) or bool(self.energy.boxes),
        )

    def divergence_limit(self, temperature: float) -> float:
        """``|x|`` beyond which the chains count as diverged: ``10⁴ · r``, with ``r`` the largest of
        1, the starting states, the hard box's bounds and the L2 prior's spread ``√(T/λ)``."""
        r = max(1.0, self._start_scale)
        for b in self.energy.boxes:
            r = max(r, float(torch.as_tensor(b.low).abs().max()), float(torch.as_tensor(b.high).abs().max()))
        l2 = sum(reg.weight for reg in self.energy.regularizers if isinstance(reg, L2) and reg.weight)
        if l2 > 0:
            r = max(r, math.sqrt(temperature / l2))
        return min(1e4 * r, 1e12)

    # ---- results -----------------------------------------------------------------------
    @property
    def activations(self) -> torch.Tensor:
        """``f(x_t)`` for every step so far (since :meth:`forget_trace`), ``[steps, batch]``."""
        return self._act[: self.t - self._act_base]

    def forget_trace(self, keep: int = 0) -> None:
        """Drop all but the last ``keep`` steps of the activation trace (a long-running live
        session calls this to keep its memory bounded). Samples and means are unaffected."""
        self._check()
        n = self.t - self._act_base
        keep = max(0, min(int(keep), n))
        tail = self._act[n - keep:n].clone()
        self._act = torch.empty(max(64, 2 * keep), self.batch, dtype=self.dtype, device=self.device)
        self._act[:keep] = tail
        self._act_base = self.t - keep

    @property
    def mean(self) -> torch.Tensor | None:
        """Mean of the kept states, ``[batch, *input_shape]`` (``None`` before burn-in ends)."""
        if self._kept == 0:
            return None
        return self._sum / self._kept

    @property
    def samples(self) -> torch.Tensor:
        """Kept states (as images), ``[batch, n_kept, *input_shape]``."""
        if not self._samples:
            return torch.empty(self.batch, 0, *self.input_shape, dtype=self.dtype, device=self.device)
        return torch.stack(self._samples, 1)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config, steps=self.t, burn_in_step=self.burn_in_step)

    def result(self, device: torch.device | str | None = "cpu") -> Result:
        """Collect everything into a :class:`~ldam.results.Result` and end the run's callbacks
        (their ``on_end``, once per run).

        The result's tensors come back on ``device``: the CPU by default, wherever the chains ran,
        so that a result can be saved, drawn and compared anywhere; ``None`` keeps them where they
        are (the sampler's device, ``self.device``).
        """
        move = (lambda t: t) if device is None else (lambda t: t.to(device))
        if self.burn_in_step is None:
            warnings.warn(
                f"burn-in never ended in {self.t} steps, so no samples were kept; the result's mean "
                "is the final state. Run more steps or lower burn_in.",
                stacklevel=2,
            )
        acceptance = self.method.acceptance if isinstance(self.method, Metropolis) else None
        res = Result(
            targets=list(self.targets),
            chains=self.chains,
            samples=move(self.samples),
            mean=move(self.mean if self.mean is not None else self.images()),
            activations=move(self.activations),
            ema=None if self.ema is None else move(self.ema),
            last=move(self.images()),
            acceptance=None if acceptance is None else move(acceptance),
            burn_in=self.burn_in_step if self.burn_in_step is not None else self.t,
            config=self.config,
        )
        self._end(res)
        return res


def make_noise(kind: str, device: torch.device) -> type:
    """The noise class for ``kind`` (``"auto"``, ``"chain"`` or ``"counter"``) on ``device``."""
    from .noise import CounterNoise

    if kind == "auto":
        kind = "chain" if device.type == "cpu" else "counter"
    if kind == "chain":
        return ChainNoise
    if kind == "counter":
        return CounterNoise
    raise ValueError(f"noise must be 'auto', 'chain' or 'counter', got {kind!r}")


def sample(
    model: nn.Module,
    target_or_targets: str | Target | Iterable[str | Target],
    input_shape: Sequence[int] = (1, 28, 28),
    chains: int = 8,
    steps: int = 2000,
    step_size: Schedule = 1e-2,
    temperature: Schedule = 1.0,
    regularizers: Sequence[Regularizer] = (),
    method: str | Method = "sgld",
    burn_in: int | str | BurnIn | None = None,
    thin: int = 1,
    seed: int = 0,
    **options: Any,
) -> Result:
    """Sample ``x ~ p(x) ∝ exp((f(x) − Σ λ_i R_i(x)) / T)`` for each target with Langevin chains.

    Returns a :class:`~ldam.results.Result` with ``samples`` ``[n_targets·chains, n_kept, *shape]``,
    ``mean`` (of the kept samples) and ``activations`` ``[steps, n_targets·chains]``, on the CPU
    (the chains run on the model's device).
    ``burn_in`` defaults to the first quarter of ``steps``, so any ``steps`` works.
    Further keyword options (``ema_tau``, ``init_scale``, ``init``, ``keep_samples``,
    ``callbacks``) are those of :class:`Sampler`.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if burn_in is None:
        burn_in = steps // 4
    if isinstance(burn_in, int) and not isinstance(burn_in, bool) and burn_in >= steps:
        raise ValueError(f"burn_in ({burn_in}) must be smaller than steps ({steps}) or no sample is kept")
    if burn_in == "auto":
        burn_in = AutoBurnIn(max_steps=max(1, steps // 2))
    sampler = Sampler(
        model, target_or_targets, input_shape, chains=chains, step_size=step_size, temperature=temperature,
        regularizers=regularizers, method=method, burn_in=burn_in, thin=thin, seed=seed, **options,
    )
    sampler.reserve_trace(steps)
    sampler.run(steps)
    return sampler.result()


__all__ = ["Sampler", "sample", "StepInfo", "LdamError", "model_fingerprint"]
