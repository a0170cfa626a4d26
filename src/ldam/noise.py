r"""Counter-based per-chain noise: Philox4x32-10 in plain torch ops, on the chains' own device.

Why
---
:class:`ldam.samplers.ChainNoise` draws every chain's noise on the CPU with one
``torch.Generator`` per chain and copies it to the device; on a GPU that copy and the serial
per-chain draws dominate the step. :class:`CounterNoise` computes the noise where the chains
live, in a handful of whole-batch tensor ops, and still gives each chain a stream that depends
only on its own seed.

The generator
-------------
Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC'11; Random123) is a keyed bijection of 128-bit counters, so a random number is a pure
function ``philox(key, counter)``; there is no state to carry or to split between chains.
With the counter ``c = (c0, c1, c2, c3)`` and key ``k = (k0, k1)`` (32-bit words), one round is

.. math::

    (h_0, l_0) &= \mathrm{mulhilo}(M_0, c_0), \qquad (h_1, l_1) = \mathrm{mulhilo}(M_1, c_2) \\
    c' &= (h_1 \oplus c_1 \oplus k_0,\; l_1,\; h_0 \oplus c_3 \oplus k_1,\; l_0)

where ``mulhilo(M, a)`` is the high and low 32-bit word of the 64-bit product ``M·a``; after
each round the key is bumped, ``k ← (k0 + W0, k1 + W1) mod 2^32``. Ten rounds, with
``M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85``.

**mulhilo in int64.** Torch has no portable unsigned 64-bit multiply, and ``M·a`` (up to
``2^64``) overflows a signed int64. Split the constant into 16-bit halves
``M = M_hi·2^16 + M_lo``; then ``p_lo = a·M_lo`` and ``p_hi = a·M_hi`` are both below
``2^48`` and ``M·a = p_hi·2^16 + p_lo``. Hence

.. math::

    \mathrm{lo} &= (M a) \bmod 2^{32} = \big((p_{hi} \bmod 2^{16})\,2^{16} + p_{lo}\big) \bmod 2^{32}
        \quad\text{(since } p_{hi} 2^{16} \equiv (p_{hi} \bmod 2^{16})\,2^{16} \pmod{2^{32}}) \\
    \mathrm{hi} &= \lfloor M a / 2^{32} \rfloor
        = \big\lfloor (p_{hi} + \lfloor p_{lo}/2^{16} \rfloor) / 2^{16} \big\rfloor
        \quad\text{(nested floors: } \lfloor (A 2^{16} + B)/2^{32} \rfloor
        = \lfloor (A + \lfloor B/2^{16} \rfloor)/2^{16} \rfloor)

and every intermediate stays below ``2^49``: no overflow, no reliance on wrap-around, so every
backend (cpu, cuda, mps) computes the same integers bit for bit.

Counter layout
--------------
Chain ``j`` with 63-bit seed ``s_j`` (:func:`ldam.samplers.chain_seeds`) has key
``k = (s_j mod 2^32, ⌊s_j / 2^32⌋)``. The 32-bit words for element block ``b`` of step ``t`` of
stream ``σ`` are ``philox(k, (b, t, σ, 0))``, with streams

==========  ==========================================================================
``σ = 0``   ``normal()``: step ``t`` is the ``t``-th call (``t = 0, 1, …``, below ``2^32``)
``σ = 1``   ``uniform()``: the ``t``-th call; only block ``b = 0`` is used
``σ = 2``   ``initial()``: ``t = 0``
==========  ==========================================================================

so chain ``j``'s numbers depend only on ``(s_j, σ, t, element)``: not on the batch, the other
chains, the device, or how many steps are generated at a time.

From words to floats
--------------------
*float32* (and every dtype other than float64): each block's four words give four normals by
Box–Muller on 24-bit uniforms. For the word pairs ``(w0, w1)`` and ``(w2, w3)``

.. math::

    u_1 = (\lfloor w_0 / 2^8 \rfloor + 1)\,2^{-24} \in (0, 1], \qquad
    u_2 = \lfloor w_1 / 2^8 \rfloor\,2^{-24} \in [0, 1), \\
    r = \sqrt{-2 \ln u_1}, \qquad z_{4b} = r\cos 2\pi u_2, \qquad z_{4b+1} = r \sin 2\pi u_2,

and likewise ``z_{4b+2}, z_{4b+3}`` from ``(w2, w3)``. Both uniforms are exact in float32 and
``u_1 > 0``, so ``r`` is finite; ``|z| ≤ \sqrt{48 \ln 2} ≈ 5.77`` (a tail probability of
``8·10^{-9}`` is cut). Element ``i`` of the flattened input is ``z_i``.

*float64*: each block gives two normals from 53-bit uniforms,
``u_1 = (2^{26}⌊w_0/2^5⌋ + ⌊w_1/2^6⌋ + 1)\,2^{-53} ∈ (0, 1]`` and
``u_2 = (2^{26}⌊w_2/2^5⌋ + ⌊w_3/2^6⌋)\,2^{-53} ∈ [0, 1)``, so ``z_{2b}, z_{2b+1}`` as above
(``|z| ≤ 8.57``). float64 streams are therefore *not* float32 streams in higher precision.

*uniform()*: float64 ``u = (2^{26}⌊w_0/2^6⌋ + ⌊w_1/2^6⌋ + ½)\,2^{-52} ∈ (0, 1)`` (52 random
bits; exact, never 0 or 1).

CPU and GPU give identical words; the floats agree to the rounding of ``log``, ``sqrt``,
``sin`` and ``cos`` on each backend. On one backend a chain's floats are bit-identical
whatever the batch, since torch evaluates vector tails and strided views with the same
vectorized functions as the body (``tests/test_noise.py`` checks this with exact equality).

Cost
----
Rounds 1–2 and half of round 3 depend on the step only through one word per (chain, step);
they are precomputed per chain (three ``[batch, blocks]`` int64 tensors, 6 bytes per float32
noise number). The remaining ~7.5 rounds (about 20 int64 passes each: 8 per mulhilo, 4 xors)
run in place on preallocated buffers, a few steps at a time, in tiles of ``cpu_tile_blocks``.
On a CPU that is still ~40 elementwise passes per float32 number, about 26 ns per number on
one core, against ~4 ns for ChainNoise's per-chain ``torch.randn`` on the same core
(``benchmarks/bench_noise.py``): CounterNoise is for accelerators, where the passes are
cheap and what it saves is the host draws and the copy. On a CPU whose other cores are busy,
run it with one intra-op thread: torch opens an OpenMP region for ``log``/``sqrt``/``sin``/
``cos`` above 2048 elements, and a descheduled worker makes each region wait a time slice.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF
ROUNDS = 10

STREAM_NORMAL, STREAM_UNIFORM, STREAM_INITIAL = 0, 1, 2

_M0_LO, _M0_HI = M0 & 0xFFFF, M0 >> 16
_M1_LO, _M1_HI = M1 & 0xFFFF, M1 >> 16
_TWO_PI = 2 * math.pi


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(hi, lo)`` 32-bit words of ``m·a`` for int64 ``a`` in ``[0, 2^32)``, without overflow."""
    p_lo = a * (m & 0xFFFF)
    p_hi = a * (m >> 16)
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(counter: Sequence[torch.Tensor | int], key: Sequence[torch.Tensor | int],
               rounds: int = ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32-``rounds`` of broadcastable int64 tensors holding 32-bit words.

    ``counter = (c0, c1, c2, c3)``, ``key = (k0, k1)``, each a tensor (or int) with values in
    ``[0, 2^32)``; returns the four output words, broadcast together, as int64 tensors.
    The straightforward (out-of-place) form: used for the uniform and initial streams and as
    the reference for the in-place normal path.
    """
    ref = next((v for v in (*counter, *key) if isinstance(v, torch.Tensor)), None)
    dev = ref.device if ref is not None else torch.device("cpu")
    as_t = lambda v: v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.int64, device=dev)  # noqa: E731
    c0, c1, c2, c3 = (as_t(v).to(torch.int64) for v in counter)
    k0, k1 = (as_t(v).to(torch.int64) for v in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        h0, l0 = _mulhilo(c0, M0)
        h1, l1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = h1 ^ c1 ^ k0, l1, h0 ^ c3 ^ k1, l0
    return torch.broadcast_tensors(c0, c1, c2, c3)


def _keys(seeds: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    s = [int(x) for x in seeds]
    if any(x < 0 or x >= 2**64 for x in s):
        raise ValueError("seeds must be in [0, 2^64)")
    k0 = torch.tensor([x & MASK32 for x in s], dtype=torch.int64, device=device)
    k1 = torch.tensor([x >> 32 for x in s], dtype=torch.int64, device=device)
    return k0, k1


def _bump(k: torch.Tensor, w: int, r: int) -> torch.Tensor:
    """The key word used in round ``r`` (0-based)."""
    return (k + r * w) & MASK32


def _per_block(dtype: torch.dtype) -> int:
    return 2 if dtype == torch.float64 else 4


def words_to_normals(w: Sequence[torch.Tensor], dtype: torch.dtype, out: torch.Tensor | None = None,
                     scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Box–Muller normals ``[..., per_block]`` from the four words ``w`` (int64, shape ``[...]``).

    ``per_block`` is 4 for float32 (24-bit uniforms) and 2 for float64 (53-bit uniforms); see
    the module docstring. The words are consumed (shifted in place).
    """
    w0, w1, w2, w3 = w
    shape = w0.shape
    fdt = torch.float64 if dtype == torch.float64 else torch.float32
    pairs = []
    if fdt == torch.float64:
        w0.bitwise_right_shift_(5).bitwise_left_shift_(26).add_(w1.bitwise_right_shift_(6)).add_(1)
        w2.bitwise_right_shift_(5).bitwise_left_shift_(26).add_(w3.bitwise_right_shift_(6))
        pairs = [(w0, w2, 2.0**-53)]
    else:
        pairs = [(w0.bitwise_right_shift_(8).add_(1), w1.bitwise_right_shift_(8), 2.0**-24),
                 (w2.bitwise_right_shift_(8).add_(1), w3.bitwise_right_shift_(8), 2.0**-24)]
    per = 2 * len(pairs)
    if out is None:
        out = torch.empty(*shape, per, dtype=fdt, device=w0.device)
    if scratch is None or scratch.shape != shape:
        scratch = torch.empty(shape, dtype=fdt, device=w0.device)
    for j, (a, b, scale) in enumerate(pairs):
        r = scratch
        r.copy_(a).mul_(scale).log_().mul_(-2.0).sqrt_()  # r = sqrt(-2 ln u1)
        theta = out[..., 2 * j + 1]
        theta.copy_(b).mul_(_TWO_PI * scale)  # θ = 2π u2 (kept in the sin slot until used)
        torch.cos(theta, out=out[..., 2 * j]).mul_(r)
        theta.sin_().mul_(r)
    return out if out.dtype == dtype else out.to(dtype)


def words_to_uniform(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """float64 uniforms in the open interval (0, 1) with 52 random bits (see the module docstring)."""
    m = ((w0 >> 6) << 26) + (w1 >> 6)
    return (m.to(torch.float64) + 0.5) * 2.0**-52


class CounterNoise:
    """Per-chain standard-normal and uniform streams from Philox4x32-10, computed on ``device``.

    Same interface as :class:`ldam.samplers.ChainNoise`: ``initial()``, ``normal()``,
    ``uniform()``, ``batch``. Chain ``j``'s numbers are a pure function of ``(seeds[j], stream,
    step, element)`` (see the module docstring), so they are the same whatever other chains
    share the batch, on any device, and however many steps are generated per refill.

    ``normal()`` returns a view into a buffer refilled every ``block`` calls (as ChainNoise's
    does): use it, or copy it, before the call that refills.
    """

    #: Philox blocks (of 4 words) per tile of work on the CPU: large enough to amortize the
    #: per-op overhead, small enough that the six int64 work arrays stay in a core's L2.
    #: Tiling never changes the values.
    cpu_tile_blocks = 2**15
    #: the same on other devices, where kernel launches are the overhead: 2^21 blocks is
    #: ~100 MB of int64 work arrays.
    device_tile_blocks = 2**21
    #: ``uniform()`` steps per refill.
    uniform_block = 256

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.shape = tuple(int(n) for n in shape)
        self.device, self.dtype = torch.device(device), dtype
        self.numel = math.prod(self.shape)
        self.per_block = _per_block(dtype)
        self.nb = max(1, -(-self.numel // self.per_block))
        self._k0, self._k1 = _keys(seeds, self.device)
        b = len(seeds)
        tile = self.cpu_tile_blocks if self.device.type == "cpu" else self.device_tile_blocks
        # steps per refill: enough to fill one tile (at most 64, as ChainNoise)
        self.block = int(max(1, min(64, -(-tile // max(1, b * self.nb)))))
        rows = max(1, tile // self.nb)  # (chain, step) rows per tile
        self._tile_steps = min(self.block, rows)
        self._tile_chains = max(1, min(b, rows // self._tile_steps))
        self._t = 0  # steps of the normal stream generated so far
        self._i = self.block
        self._tu = 0
        self._j = self.uniform_block
        self._u: torch.Tensor | None = None
        self._buf: torch.Tensor | None = None
        self._precompute()

    @property
    def batch(self) -> int:
        return self._k0.shape[0]

    # ---- the step-independent part of the normal stream -------------------------------
    def _precompute(self) -> None:
        """Rounds 1–2 and half of round 3 of ``philox(k, (b, t, 0, 0))`` that do not depend on ``t``."""
        dev, k0, k1 = self.device, self._k0[:, None], self._k1[:, None]
        blocks = torch.arange(self.nb, dtype=torch.int64, device=dev)
        # Round 1 (key k): c = (b, t, 0, 0).
        h0, l0 = _mulhilo(blocks, M0)
        h1c, l1c = _mulhilo(torch.tensor(STREAM_NORMAL, dtype=torch.int64), M1)
        self._h1c, self._l1c = int(h1c), int(l1c)  # y0 = h1c ^ t ^ k0 (per chain, step); y1 = l1c
        y2 = h0 ^ k1  # [B, nb]  (c3 = 0)
        self._y3 = l0  # [nb]
        # Round 2 (key k + W): y2 -> z0, z1 (step-independent); y0 -> z2, z3 (per step).
        h1, l1 = _mulhilo(y2, M1)
        z0 = h1 ^ self._l1c ^ _bump(k0, W0, 1)
        z1 = l1
        # Round 3 (key k + 2W): the M0 half acts on z0, independent of t.
        h0, l0 = _mulhilo(z0, M0)
        self._z1k = z1 ^ _bump(k0, W0, 2)  # new x0 = hi(M1 z2) ^ z1 ^ k0
        self._h0k = h0 ^ _bump(k1, W1, 2)  # new x2 = h0 ^ z3 ^ k1
        self._a3k = l0 ^ _bump(k1, W1, 3)  # new x3 = l0, xor-ed with k1 in round 4
        self._rk0 = [_bump(self._k0, W0, r)[:, None, None] for r in range(ROUNDS)]
        self._rk1 = [_bump(self._k1, W1, r)[:, None, None] for r in range(ROUNDS)]

    def _normal_words(self, t0: int, steps: int, c0: int, c1: int, bufs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Philox output words ``[chains c0:c1, steps, nb]`` of the normal stream, steps ``t0…``."""
        n = c1 - c0
        x0, x1, x2, x3, s0, s1 = (b[: n * steps * self.nb].view(n, steps, self.nb) for b in bufs)
        k0, k1 = self._k0[c0:c1, None], self._k1[c0:c1, None]
        t = torch.arange(t0, t0 + steps, dtype=torch.int64, device=self.device)
        # Round 1, per (chain, step): y0 = h1c ^ t ^ k0.  Round 2: M0 half on y0.
        y0 = (t ^ self._h1c) ^ k0  # [n, steps]
        h0, l0 = _mulhilo(y0, M0)
        z2 = (h0 ^ _bump(k1, W1, 1))[..., None]  # [n, steps, 1] ^ y3[nb]
        z3 = l0[..., None]
        torch.bitwise_xor(z2, self._y3, out=x2)  # x2 = z2 (full)
        # Round 3: M1 half on z2 (full); M0 half precomputed.
        self._mulhilo_(x2, _M1_LO, _M1_HI, s0, s1, x1)  # s0 = hi, x1 = lo = new x1
        torch.bitwise_xor(s0, self._z1k[c0:c1, None], out=x0)  # new x0
        torch.bitwise_xor(self._h0k[c0:c1, None], z3, out=x2)  # new x2
        a3k = self._a3k[c0:c1, None]  # new x3 (already xor-ed with round 4's k1), broadcast
        # Round 4: x3 is a broadcast [n, 1, nb] term.
        rk0, rk1 = self._rk0[3][c0:c1], self._rk1[3][c0:c1]
        self._mulhilo_(x0, _M0_LO, _M0_HI, s0, s1, x3)  # s0 = hi0, x3 = lo0
        s0.bitwise_xor_(a3k)  # new x2 = hi0 ^ x3 ^ k1 (k1 folded into a3k)
        self._mulhilo_(x2, _M1_LO, _M1_HI, x0, s1, x2)  # x0 = hi1, x2 = lo1
        x0.bitwise_xor_(x1).bitwise_xor_(rk0)  # new x0
        x0, x1, x2, x3, s0 = x0, x2, s0, x3, x1  # s0 <- old x1 buffer (free)
        for r in range(4, ROUNDS):
            rk0, rk1 = self._rk0[r][c0:c1], self._rk1[r][c0:c1]
            # (hi0, lo0) of M0·x0: hi0 -> s0, lo0 -> x0's buffer
            self._mulhilo_(x0, _M0_LO, _M0_HI, s0, s1, x0)
            s0.bitwise_xor_(x3).bitwise_xor_(rk1)  # new x2
            # (hi1, lo1) of M1·x2: hi1 -> x3's buffer, lo1 -> x2's buffer
            self._mulhilo_(x2, _M1_LO, _M1_HI, x3, s1, x2)
            x3.bitwise_xor_(x1).bitwise_xor_(rk0)  # new x0
            x0, x1, x2, x3, s0 = x3, x2, s0, x0, x1
        return [x0, x1, x2, x3]

    @staticmethod
    def _mulhilo_(a: torch.Tensor, m_lo: int, m_hi: int, hi: torch.Tensor, tmp: torch.Tensor,
                  lo: torch.Tensor) -> None:
        """In place: ``hi, lo ← mulhilo(M, a)``; ``tmp`` is scratch; ``lo`` may alias ``a``."""
        torch.mul(a, m_lo, out=hi)  # p_lo
        torch.mul(a, m_hi, out=tmp)  # p_hi
        torch.bitwise_and(tmp, 0xFFFF, out=lo)
        torch.add(hi, lo, alpha=0x10000, out=lo).bitwise_and_(MASK32)  # (p_lo + 2^16 (p_hi mod 2^16)) mod 2^32
        hi.bitwise_right_shift_(16).add_(tmp).bitwise_right_shift_(16)  # (p_hi + ⌊p_lo / 2^16⌋) / 2^16

    def _fill(self, steps: int) -> torch.Tensor:
        """``[batch, steps, numel]`` normals of steps ``self._t …``, written into ``self._buf``."""
        b, nb, per = self.batch, self.nb, self.per_block
        fdt = torch.float64 if self.dtype == torch.float64 else torch.float32
        if self._t + steps > 2**32:
            raise OverflowError("CounterNoise: more than 2^32 steps of one stream")
        if self._buf is None:
            self._buf = torch.empty(b, steps, nb, per, dtype=fdt, device=self.device)
            size = self._tile_chains * self._tile_steps * nb
            self._work = [torch.empty(size, dtype=torch.int64, device=self.device) for _ in range(6)]
            self._scratch = torch.empty(size, dtype=fdt, device=self.device)
        for c0 in range(0, b, self._tile_chains):
            c1 = min(b, c0 + self._tile_chains)
            for s0 in range(0, steps, self._tile_steps):
                s1 = min(steps, s0 + self._tile_steps)
                w = self._normal_words(self._t + s0, s1 - s0, c0, c1, self._work)
                scratch = self._scratch[: (c1 - c0) * (s1 - s0) * nb].view(c1 - c0, s1 - s0, nb)
                words_to_normals(w, self.dtype, out=self._buf[c0:c1, s0:s1], scratch=scratch)
        self._t += steps
        out = self._buf.view(b, steps, nb * per)[:, :, : self.numel]
        return out if fdt == self.dtype else out.to(self.dtype)

    # ---- the ChainNoise interface ------------------------------------------------------
    def initial(self) -> torch.Tensor:
        """A standard-normal starting point per chain, from its own stream (``σ = 2``, ``t = 0``)."""
        blocks = torch.arange(self.nb, dtype=torch.int64, device=self.device)
        w = philox4x32((blocks, 0, STREAM_INITIAL, 0), (self._k0[:, None], self._k1[:, None]))
        w = [x.clone() for x in w]
        z = words_to_normals(w, self.dtype).reshape(self.batch, -1)[:, : self.numel]
        return z.reshape(self.batch, *self.shape).to(self.dtype)

    def normal(self) -> torch.Tensor:
        """The next ``[batch, *shape]`` standard-normal draw (a view into the current block)."""
        if self._i == self.block:
            self._dev = self._fill(self.block)
            self._i = 0
        self._i += 1
        return self._dev[:, self._i - 1].view(self.batch, *self.shape)

    def uniform(self) -> torch.Tensor:
        """The next ``[batch]`` float64 uniform draw in (0, 1), for Metropolis tests."""
        if self._j == self.uniform_block:
            t = torch.arange(self._tu, self._tu + self.uniform_block, dtype=torch.int64, device=self.device)
            w0, w1, _, _ = philox4x32((0, t[:, None], STREAM_UNIFORM, 0), (self._k0, self._k1))
            self._u = words_to_uniform(w0, w1)  # [uniform_block, batch]
            self._tu += self.uniform_block
            self._j = 0
        self._j += 1
        return self._u[self._j - 1]
