"""The discriminator regularizer: an online-trained critic that pulls samples toward real images.

A critic ``D(x) = σ(c(x))`` gives the probability that ``x`` is a real image. Its regularizer is

    R_D(x) = −log D(x) = softplus(−c(x))

and it is trained **online**: every ``k`` sampler steps, one optimizer step on a batch that is
half current chain states (label 0) and half real images (label ``1 − s``, one-sided label
smoothing), with the binary cross-entropy

    L = −(1 − s)·log D(x_real) − s·log(1 − D(x_real)) − log(1 − D(x_fake)) + (γ/2)·E‖∇_x c(x_real)‖²

(the last term is the R1 gradient penalty of Mescheder et al. 2018, off by default). The critic
therefore tracks the artifacts the sampler makes at each stage (PAPER.md §3, §6).

A weight ``w ∈ [0, 1]`` morphs between the neuron's pre-image (``w = 0``, plain LDAM) and what
the critic believes is real (``w = 1``, the classifier has no effect). Two ways to combine:

``"density"``  an exact density, usable with every method and exact under MALA:
               ``log p(x) = ((1 − w)·f(x) − w·R_D(x) − Σ λ_i R_i(x)) / T``.
               This is ``(f − λ_D R_D − …)/T'`` with ``λ_D = w/(1 − w)`` and ``T' = T/(1 − w)``.
``"mix"``      the authors' normalized mix, for ``method="paper"``: with per-pixel RMS
               normalization ``ĝ = g / √(acc + 1e-8)``, ``acc ← 0.9·acc + 0.1·g²``,
               the drift is ``(1 − w)·ĝ_f + w·ĝ_D`` where ``g_D = ∇ log D``. Not a density.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .energy import Regularizer, rms_normalized
from .errors import CheckpointError, CriticWarning, DataError, ShapeError
from .io import atomic_save, load_weights, safe_load

MODES = ("density", "mix")
FORMAT = "ldam-critic"


# ---- critic architectures ---------------------------------------------------------------------
class ConvCritic(nn.Module):
    """A DCGAN-style critic that mirrors a small classifier: ``len(widths)`` convolutions
    (4×4, stride 2, LeakyReLU 0.2), then ``hidden`` FC units and one logit.

    ``ConvCritic(1, (28, 28), (32, 64), 1024)`` is the authors' MNIST critic
    (conv32–conv64–fc1024) with one logit instead of two softmax outputs (the same model:
    ``c = z_real − z_fake``); ``(3, (32, 32), (64, 128, 256), 512)`` is the paper's 3-conv,
    2-FC CIFAR critic. Feature maps wider than 8×8 are average-pooled to 8×8 before the FC.
    """

    def __init__(self, channels: int, size: Sequence[int], widths: Sequence[int] = (32, 64), hidden: int = 1024):
        super().__init__()
        self.spec = {"kind": "conv", "channels": int(channels), "size": [int(s) for s in size],
                     "widths": [int(w) for w in widths], "hidden": int(hidden)}
        layers: list[nn.Module] = []
        c, h, w = int(channels), int(size[0]), int(size[1])
        for width in widths:
            layers += [nn.Conv2d(c, int(width), 5, padding=2), nn.LeakyReLU(0.2), nn.AvgPool2d(2, ceil_mode=True)]
            c, h, w = int(width), (h + 1) // 2, (w + 1) // 2
        if h > 8 or w > 8:
            layers.append(nn.AdaptiveAvgPool2d((min(h, 8), min(w, 8))))
            h, w = min(h, 8), min(w, 8)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, int(hidden)), nn.LeakyReLU(0.2),
                                  nn.Linear(int(hidden), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class MLPCritic(nn.Module):
    """A critic for inputs that are not images: an MLP with LeakyReLU and one logit."""

    def __init__(self, features: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.spec = {"kind": "mlp", "features": int(features), "hidden": [int(h) for h in hidden]}
        layers: list[nn.Module] = [nn.Flatten()]
        n = int(features)
        for h in hidden:
            layers += [nn.Linear(n, int(h)), nn.LeakyReLU(0.2)]
            n = int(h)
        layers.append(nn.Linear(n, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def critic_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a critic from its ``spec`` (what :func:`make_critic` records in checkpoints)."""
    try:
        kind = spec["kind"]
        if kind == "conv":
            return ConvCritic(spec["channels"], spec["size"], spec["widths"], spec["hidden"])
        if kind == "mlp":
            return MLPCritic(spec["features"], spec["hidden"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"malformed critic architecture {spec!r}: {e}") from None
    raise CheckpointError(f"unknown critic architecture kind {spec.get('kind')!r}; known: conv, mlp")


def make_critic(input_shape: Sequence[int]) -> nn.Module:
    """The default critic for one example's shape: conv32–conv64–fc1024 for one-channel images
    (the authors' MNIST critic), conv64–conv128–conv256–fc512 for colour images (the paper's
    CIFAR critic), an MLP for anything that is not an image."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3 and min(shape[1:]) >= 8:
        if shape[0] == 1:
            return ConvCritic(1, shape[1:], (32, 64), 1024)
        return ConvCritic(shape[0], shape[1:], (64, 128, 256), 512)
    return MLPCritic(math.prod(shape))


# ---- real images -----------------------------------------------------------------------------
class RealImages:
    """Batches of real images from a tensor ``[N, *shape]``, a ``Dataset`` or a ``DataLoader``.

    Dataset items and loader batches may be tensors or ``(image, label, ...)`` tuples; only the
    image is used. Tensors and datasets are drawn with a seeded shuffle, cycling forever;
    loaders are iterated in their own order and restarted when exhausted.
    """

    def __init__(self, source: torch.Tensor | Dataset | DataLoader | Any, seed: int = 0):
        self._gen = torch.Generator().manual_seed(int(seed))
        self._loader: DataLoader | None = None
        self._it: Iterator[Any] | None = None
        self._pending: torch.Tensor | None = None
        self._tensor: torch.Tensor | None = None
        self._dataset: Dataset | None = None
        if isinstance(source, DataLoader):
            self._loader = source
        elif isinstance(source, torch.Tensor) or hasattr(source, "__array__") and not isinstance(source, Dataset):
            t = torch.as_tensor(source)
            if not t.is_floating_point():
                raise DataError(f"real images must be floating point in the model's input units, got {t.dtype}; "
                                "normalize them first, e.g. (pixels / 255 − mean) / std")
            self._tensor = t
        elif isinstance(source, Dataset) or (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
            self._dataset = source  # type: ignore[assignment]
        else:
            raise TypeError(f"real images must be a tensor, a Dataset or a DataLoader, got {type(source).__name__}")
        n = self.size
        if n == 0:
            raise DataError("the real-image source is empty: the discriminator needs real images to learn from")
        self.shape = tuple(self._first().shape)
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0

    @property
    def size(self) -> int | None:
        """The number of images (``None`` for a loader of unknown length)."""
        if self._tensor is not None:
            return len(self._tensor)
        if self._dataset is not None:
            return len(self._dataset)  # type: ignore[arg-type]
        try:
            return len(self._loader.dataset)  # type: ignore[arg-type, union-attr]
        except (TypeError, AttributeError):
            return None

    @staticmethod
    def _image(item: Any) -> torch.Tensor:
        if isinstance(item, (tuple, list)):
            item = item[0]
        return torch.as_tensor(item)

    def _first(self) -> torch.Tensor:
        if self._tensor is not None:
            return self._tensor[0]
        if self._dataset is not None:
            return self._image(self._dataset[0])
        b = self._next_loader_batch()
        self._pending = b
        if len(b) == 0:
            raise DataError("the real-image loader yields empty batches")
        return b[0]

    def _next_loader_batch(self) -> torch.Tensor:
        assert self._loader is not None
        for _ in range(2):
            if self._it is None:
                self._it = iter(self._loader)
            try:
                return self._image(next(self._it))
            except StopIteration:
                self._it = None
        raise DataError("the real-image loader is empty: the discriminator needs real images to learn from")

    def check(self, input_shape: Sequence[int]) -> None:
        if self.shape != tuple(input_shape):
            raise ShapeError(
                f"real images have shape {list(self.shape)} but the sampler's inputs have shape {list(input_shape)}; "
                "give real images in the model's input space (same shape and normalization)"
            )

    def _indices(self, n: int) -> torch.Tensor:
        size = self.size or 0
        out = []
        while n > 0:
            if self._pos >= len(self._perm):
                self._perm, self._pos = torch.randperm(size, generator=self._gen), 0
            take = self._perm[self._pos:self._pos + n]
            self._pos += len(take)
            n -= len(take)
            out.append(take)
        return torch.cat(out)

    def batch(self, n: int) -> torch.Tensor:
        """The next ``n`` real images, ``[n, *shape]``."""
        if self._tensor is not None:
            return self._tensor[self._indices(n)]
        if self._dataset is not None:
            return torch.stack([self._image(self._dataset[int(i)]) for i in self._indices(n)])
        parts, have = [], 0
        while have < n:
            b = self._pending if self._pending is not None else self._next_loader_batch()
            self._pending = None
            if len(b) > n - have:
                b, self._pending = b[: n - have], b[n - have:]
            parts.append(b)
            have += len(b)
        return torch.cat(parts)


# ---- training settings -----------------------------------------------------------------------
@dataclass
class CriticTraining:
    """How the critic learns online.

    ``every``: one update every ``k`` sampler steps (the authors: once per frame).
    ``lr``, ``optimizer``: the authors used RMSProp with momentum 0.9 at 1e-4; ``"adam"``
    (β = 0.5, 0.999) and ``"sgd"`` are also available.
    ``batch_size``: fake images per update (as many real ones are drawn).
    ``label_smoothing``: real images get the label ``1 − s``.
    ``gradient_penalty``: ``γ`` of the R1 penalty ``(γ/2)·E‖∇_x c(x_real)‖²``.
    ``patience``: updates in a collapsed state before a :class:`~ldam.errors.CriticWarning`.
    """

    every: int = 10
    lr: float = 1e-4
    optimizer: str = "rmsprop"
    batch_size: int = 64
    label_smoothing: float = 0.1
    gradient_penalty: float = 0.0
    patience: int = 200

    def __post_init__(self) -> None:
        if self.every < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError(f"every, batch_size and patience must be >= 1, got {self}")
        if not self.lr > 0:
            raise ValueError(f"the critic's learning rate must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.gradient_penalty < 0:
            raise ValueError(f"gradient_penalty must be >= 0, got {self.gradient_penalty}")
        if self.optimizer not in ("rmsprop", "adam", "sgd"):
            raise ValueError(f"unknown critic optimizer {self.optimizer!r}; use 'rmsprop', 'adam' or 'sgd'")

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=self.lr, alpha=0.9, momentum=0.9)
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=(0.5, 0.999))
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9)


# ---- the regularizer -------------------------------------------------------------------------
class Discriminator(Regularizer):
    """``R_D(x) = −log D(x)`` with an online-trained critic; see the module docstring for the maths.

    Args:
        real: real images in the model's input space (tensor, Dataset or DataLoader); needed
            for online training, optional for a pretrained critic used as is.
        critic: an ``nn.Module`` mapping ``[B, *shape]`` to one logit per row (or two outputs,
            ``[fake, real]``); by default :func:`make_critic` builds one for the input shape.
        weight: ``w ∈ [0, 1]``; may be changed between steps.
        mode: ``"density"`` (exact, any method) or ``"mix"`` (the authors' normalized mix,
            ``method="paper"`` only).
        training: a :class:`CriticTraining` (default: ``CriticTraining()``), or ``None`` to freeze
            the critic.
        seed: seeds the default critic's initialization and the draws of real and fake images.
    """

    name = "disc"

    def __init__(
        self,
        real: torch.Tensor | Dataset | DataLoader | RealImages | None = None,
        critic: nn.Module | None = None,
        *,
        weight: float = 0.5,
        mode: str = "density",
        training: CriticTraining | None | str = "default",
        seed: int = 0,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown discriminator mode {mode!r}; use 'density' (exact, any method) or "
                             "'mix' (the authors' normalized mix, with method='paper')")
        if critic is not None and not isinstance(critic, nn.Module):
            raise TypeError(f"critic must be a torch.nn.Module, got {type(critic).__name__}")
        if isinstance(training, str):
            if training != "default":
                raise ValueError(f"training must be a CriticTraining, None or 'default', got {training!r}")
            training = CriticTraining()  # a fresh one per discriminator
        if training is not None and real is None:
            raise DataError("online critic training needs real images: pass real=... (a tensor, Dataset or "
                            "DataLoader in the model's input space), or training=None to use a pretrained critic as is")
        self.mode = mode
        self.weight = weight
        self.real = real if isinstance(real, RealImages) or real is None else RealImages(real, seed)
        self.critic = critic
        self.training = training
        self.seed = int(seed)
        self._gen = torch.Generator().manual_seed(self.seed + 1)
        self._opt: torch.optim.Optimizer | None = None
        self._acc: torch.Tensor | None = None
        self._device, self._dtype = torch.device("cpu"), torch.float32
        self.input_shape: tuple[int, ...] | None = None
        self.updates = 0
        self.last: dict[str, float] = {}
        self._collapsed = {"chance": 0, "saturated": 0}
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        critic = type(self.critic).__name__ if self.critic is not None else "default"
        return (f"Discriminator(weight={self.weight}, mode={self.mode!r}, critic={critic}, "
                f"training={self.training!r})")

    # ---- the weight and how it enters the energy ----
    @property
    def weight(self) -> float:
        return self._weight

    @weight.setter
    def weight(self, w: float) -> None:
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"the discriminator weight must be a number in [0, 1], got {w!r}") from None
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"the discriminator weight must be in [0, 1] (0: plain LDAM, 1: the critic alone), got {w}")
        self._weight = w

    @property
    def prior_weight(self) -> float | None:
        return self._weight if self.mode == "density" else None

    @property
    def activation_scale(self) -> float:
        return 1.0 - self._weight if self.mode == "density" else 1.0

    @property
    def mixes(self) -> bool:
        return self.mode == "mix" and self._weight > 0

    # ---- binding to a sampler ----
    def bind(self, input_shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> None:
        """Check the real images against the sampler's input shape and build/move the critic."""
        shape = tuple(int(s) for s in input_shape)
        if self.real is not None:
            self.real.check(shape)
        spec = getattr(self.critic, "spec", None)
        if isinstance(spec, dict):
            fits = (spec.get("kind") == "conv" and [spec.get("channels"), *spec.get("size", [])] == list(shape)
                    or spec.get("kind") == "mlp" and spec.get("features") == math.prod(shape))
            if not fits:
                raise ShapeError(f"the critic was built for inputs {spec} but the sampler's inputs have shape "
                                 f"{list(shape)}; use a critic trained for this model's inputs")
        if self.critic is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.critic = make_critic(shape)
        self.critic.to(device=device, dtype=dtype)
        self._device, self._dtype, self.input_shape = device, dtype, shape
        self._acc = None

    def _ensure_bound(self, x: torch.Tensor) -> None:
        if self.critic is None or self.input_shape != tuple(x.shape[1:]):
            self.bind(x.shape[1:], x.device, x.dtype)

    def reset(self) -> None:
        self._acc = None

    # ---- D, R_D and its gradient ----
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``c(x)``, one logit per row (``D = σ(c)``)."""
        self._ensure_bound(x)
        assert self.critic is not None
        out = self.critic(x)
        if out.dim() == 2 and out.shape[1] == 2:
            return out[:, 1] - out[:, 0]
        return out.reshape(len(x))

    @contextlib.contextmanager
    def _critic_mode(self, x: torch.Tensor, training: bool) -> Iterator[nn.Module]:
        """The critic, bound to ``x``'s shape, in train or eval mode for the block (then as it was)."""
        self._ensure_bound(x)
        assert self.critic is not None
        was = self.critic.training
        self.critic.train(training)
        try:
            yield self.critic
        finally:
            self.critic.train(was)

    def prob_real(self, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """``D(x)`` per row, without gradients, in eval mode."""
        with self._critic_mode(x, False), torch.no_grad():
            return torch.cat([torch.sigmoid(self.logits(x[i:i + batch_size].to(self._device, self._dtype)))
                              for i in range(0, len(x), batch_size)])

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``R_D(x) = −log D(x) = softplus(−c(x))``."""
        return F.softplus(-self.logits(x))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``∇_x R_D(x) = −∇_x log D(x)``; the critic's parameters get no gradient."""
        with self._critic_mode(x, False), torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.value(xr).sum(), xr)
        return g

    def mix(self, g_hat_f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The authors' drift ``(1 − w)·ĝ_f + w·ĝ_D`` from an RMS-normalized ``ĝ_f``."""
        g_d = self.grad(x).neg_()
        if self._acc is None or self._acc.shape != g_d.shape:
            self._acc = torch.zeros_like(g_d)
        g_hat_d = rms_normalized(g_d, self._acc, in_place=True)
        w = self._weight
        if w == 1.0:
            return g_hat_d
        return g_hat_d.mul_(w).add_(g_hat_f, alpha=1.0 - w)

    # ---- online training ----
    def observe(self, x: torch.Tensor, step: int) -> None:
        if self.training is not None and (step + 1) % self.training.every == 0:
            self.update(x)

    def update(self, fake: torch.Tensor) -> dict[str, float]:
        """One optimizer step of the critic: ``fake`` (up to ``batch_size`` rows) against as many
        real images. Returns ``D(real)``, ``D(fake)`` and the loss, measured before the step."""
        if self.training is None:
            raise RuntimeError("this discriminator is frozen (training=None); pass training=ldam.CriticTraining()")
        if self.real is None:
            raise DataError("online critic training needs real images (real=...)")
        tr = self.training
        fake = fake.detach()
        if len(fake) > tr.batch_size:
            fake = fake[torch.randperm(len(fake), generator=self._gen)[: tr.batch_size].to(fake.device)]
        with self._critic_mode(fake, True) as critic, torch.enable_grad():
            if self._opt is None:
                self._opt = tr.make_optimizer(critic.parameters())
            real = self.real.batch(len(fake)).to(self._device, self._dtype)
            if tr.gradient_penalty > 0:
                real = real.requires_grad_(True)
            lr_, lf = self.logits(real), self.logits(fake)
            smooth = 1.0 - tr.label_smoothing
            loss = (F.binary_cross_entropy_with_logits(lr_, torch.full_like(lr_, smooth))
                    + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))
            if tr.gradient_penalty > 0:
                (gr,) = torch.autograd.grad(lr_.sum(), real, create_graph=True)
                loss = loss + 0.5 * tr.gradient_penalty * gr.flatten(1).pow(2).sum(1).mean()
            self._opt.zero_grad(set_to_none=True)
            loss.backward()
            self._opt.step()
        scores = torch.stack([torch.sigmoid(lr_.detach()).mean(), torch.sigmoid(lf.detach()).mean(), loss.detach()])
        d_real, d_fake, critic_loss = scores.double().tolist()  # one device sync, not three
        self.updates += 1
        self.last = {"d_real": d_real, "d_fake": d_fake, "critic_loss": critic_loss}
        self._watch(d_real, d_fake)
        return dict(self.last)

    def _watch(self, d_real: float, d_fake: float) -> None:
        """Warn once when the critic has been at chance, or saturated, for ``patience`` updates."""
        assert self.training is not None
        states = {"chance": abs(d_real - 0.5) < 0.05 and abs(d_fake - 0.5) < 0.05,
                  "saturated": d_real > 0.98 * (1 - self.training.label_smoothing) and d_fake < 0.01}
        for state, on in states.items():
            self._collapsed[state] = self._collapsed[state] + 1 if on else 0
            if self._collapsed[state] >= self.training.patience and state not in self._warned:
                self._warned.add(state)
                if state == "chance":
                    msg = (f"the critic has scored real and sampled images alike (D ≈ 0.5) for {self._collapsed[state]} "
                           "updates: it gives the sampler no direction. Raise its learning rate (CriticTraining(lr=...)) "
                           "or update it more often (every=...); or the samples already look real to it")
                else:
                    msg = (f"the critic has separated real and sampled images perfectly (D(real) ≈ 1, D(fake) ≈ 0) for "
                           f"{self._collapsed[state]} updates, so the samples stay far from real images and its scores "
                           "carry no information about which sample is better. Raise the discriminator weight, or lower "
                           "the critic's learning rate, raise label_smoothing or add a gradient_penalty")
                warnings.warn(msg, CriticWarning, stacklevel=4)

    def fit(self, fake: torch.Tensor, steps: int, progress: bool = False) -> dict[str, float]:
        """Pretrain against a fixed set of fake images (e.g. earlier chain states) for ``steps`` updates."""
        from tqdm.auto import tqdm

        fake = torch.as_tensor(fake)
        if len(fake) == 0:
            raise DataError("fit() needs at least one fake image")
        if self.real is not None:
            self.real.check(fake.shape[1:])
        stats: dict[str, float] = {}
        for _ in tqdm(range(steps), desc="critic", disable=not progress, leave=False):
            idx = torch.randint(len(fake), (min(len(fake), self.training.batch_size if self.training else 64),),
                                generator=self._gen)
            stats = self.update(fake[idx].to(self._device, self._dtype))
        return stats

    def stats(self) -> dict[str, float]:
        return dict(self.last)

    # ---- persistence ----
    def save(self, path: str | Path) -> Path:
        """Write the critic atomically as ``{"format", "arch", "state_dict", "meta"}`` (weights only)."""
        if self.critic is None:
            raise RuntimeError("the critic is built when the discriminator is first used; nothing to save yet")
        spec = getattr(self.critic, "spec", None)
        blob = {"format": FORMAT, "arch": spec if isinstance(spec, dict) else None,
                "state_dict": {k: v.detach().cpu() for k, v in self.critic.state_dict().items()},
                "meta": {"input_shape": list(self.input_shape or ()), "updates": self.updates,
                         "training": asdict(self.training) if self.training else None, **self.last}}
        return atomic_save(blob, path)

    @classmethod
    def load(cls, path: str | Path, real: Any = None, critic: nn.Module | None = None, **kwargs: Any) -> "Discriminator":
        """Load a critic saved by :meth:`save`, safely (``weights_only=True``).

        A critic of ldam's own architectures is rebuilt from the recorded spec; for your own
        critic class pass an instance as ``critic``. Without ``real`` the critic is frozen unless
        ``training`` is given; with ``real`` it keeps learning online.
        """
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"critic checkpoint {path} does not exist")
        blob = safe_load(path, "ldam only loads weights-only critic checkpoints written by Discriminator.save")
        if not isinstance(blob, dict) or blob.get("format") != FORMAT or "state_dict" not in blob:
            raise CheckpointError(f"{path} is not an ldam critic checkpoint (written by Discriminator.save)")
        if critic is None:
            if not isinstance(blob.get("arch"), dict):
                raise CheckpointError(f"{path} holds a custom critic; pass an instance of its class as critic=...")
            critic = critic_from_spec(blob["arch"])
        load_weights(critic, blob["state_dict"], path, f"critic {type(critic).__name__}")
        if real is None:
            kwargs.setdefault("training", None)
        disc = cls(real, critic, **kwargs)
        meta = blob.get("meta") or {}
        shape = meta.get("input_shape")
        if shape:
            disc.input_shape = tuple(int(s) for s in shape)
            if disc.real is not None:
                disc.real.check(disc.input_shape)
        return disc


__all__ = ["Discriminator", "CriticTraining", "RealImages", "ConvCritic", "MLPCritic", "make_critic",
           "critic_from_spec"]
