"""ldam.noise: Philox4x32-10 in torch ops, and CounterNoise built on it.

Every check is against something independent of the code under test: Random123's published
known-answer vectors, a pure-Python Philox written from the spec with Python ints, the
documented word-to-float formulas evaluated with Python's ``math``, and distribution tests.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from ldam.noise import CounterNoise, _mulhilo, philox4x32

MASK = 0xFFFFFFFF

# ---- an independent reference: Philox4x32-R from the spec, with Python's exact integers ----


def philox_ref(ctr: list[int], key: list[int], rounds: int = 10) -> list[int]:
    """Salmon et al. (SC'11) / Random123 ``philox4x32_R``: R rounds of
    ``(hi1^c1^k0, lo1, hi0^c3^k1, lo0)`` with ``(hi0,lo0) = M0*c0``, ``(hi1,lo1) = M1*c2``,
    the key bumped by the Weyl constants between rounds."""
    m0, m1, w0, w1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + w0) & MASK, (k1 + w1) & MASK
        p0, p1 = m0 * c0, m1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
    return [c0, c1, c2, c3]


# Random123 tests/kat_vectors, "philox4x32 R" lines: rounds, ctr[4], key[2], expected[4]. Quoted
# identically in D. E. Shaw Research's own fs123 repository (core123/ut/ut_philox.cpp, "cut-and-
# pasted from the kat_vectors file in the original Random123 distribution") and in independent
# ports; the three R=10 lines are the ones that pin down Philox4x32-10.
KAT = """
7  00000000 00000000 00000000 00000000 00000000 00000000   5f6fb709 0d893f64 4f121f81 4f730a48
7  ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   5207ddc2 45165e59 4d8ee751 8c52f662
7  243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   4dfccaba 190a87f0 c47362ba b6b5242a
10 00000000 00000000 00000000 00000000 00000000 00000000   6627e8d5 e169c58d bc57ac4c 9b00dbd8
10 ffffffff ffffffff ffffffff ffffffff ffffffff ffffffff   408f276d 41c83b0e a20bc7c6 6d5451fd
10 243f6a88 85a308d3 13198a2e 03707344 a4093822 299f31d0   d16cfe09 94fdcceb 5001e420 24126ea1
"""
KAT_ROWS = [[int(f, 16) if i else int(f) for i, f in enumerate(line.split())] for line in KAT.strip().splitlines()]


@pytest.mark.parametrize("row", KAT_ROWS, ids=lambda r: f"R{r[0]}-{r[1]:08x}")
def test_known_answer_vectors(row):
    rounds, ctr, key, want = row[0], row[1:5], row[5:7], row[7:11]
    assert philox_ref(ctr, key, rounds) == want  # the reference is right
    got = philox4x32([torch.tensor(c) for c in ctr], [torch.tensor(k) for k in key], rounds=rounds)
    assert [int(w) for w in got] == want  # and so is the torch version


def test_torch_philox_matches_reference_bit_for_bit():
    rng = random.Random(1)
    edge = [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, MASK]
    rows = [([rng.getrandbits(32) for _ in range(4)], [rng.getrandbits(32) for _ in range(2)]) for _ in range(400)]
    rows += [([rng.choice(edge) for _ in range(4)], [rng.choice(edge) for _ in range(2)]) for _ in range(100)]
    ctr = torch.tensor([r[0] for r in rows]).T
    key = torch.tensor([r[1] for r in rows]).T
    got = torch.stack(philox4x32(list(ctr), list(key)), 1).tolist()
    assert got == [philox_ref(c, k) for c, k in rows]


def test_mulhilo_split_is_exact():
    rng = random.Random(2)
    a = [0, 1, MASK, 0x80000000, 0xFFFF, 0x10000] + [rng.getrandbits(32) for _ in range(2000)]
    for m in (0xD2511F53, 0xCD9E8D57, MASK):
        hi, lo = _mulhilo(torch.tensor(a), m)
        assert hi.tolist() == [(x * m) >> 32 for x in a]
        assert lo.tolist() == [(x * m) & MASK for x in a]


# ---- the stream layout and the word-to-float maps, checked against the documented formulas ----


def seeds_of(n: int, base: int = 12345) -> list[int]:
    rng = random.Random(base)
    return [rng.getrandbits(63) for _ in range(n)]


def ref_normals(seed: int, stream: int, step: int, numel: int, dtype: torch.dtype) -> list[float]:
    """The module docstring's maps, in float64 with Python's math."""
    key = [seed & MASK, seed >> 32]
    out: list[float] = []
    b = 0
    while len(out) < numel:
        w = philox_ref([b, step, stream, 0], key)
        if dtype == torch.float64:
            pairs = [(((w[0] >> 5) * 2**26 + (w[1] >> 6) + 1) * 2.0**-53,
                      ((w[2] >> 5) * 2**26 + (w[3] >> 6)) * 2.0**-53)]
        else:
            pairs = [(((w[0] >> 8) + 1) * 2.0**-24, (w[1] >> 8) * 2.0**-24),
                     (((w[2] >> 8) + 1) * 2.0**-24, (w[3] >> 8) * 2.0**-24)]
        for u1, u2 in pairs:
            r = math.sqrt(-2 * math.log(u1))
            out += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
        b += 1
    return out[:numel]


def ref_uniform(seed: int, step: int) -> float:
    w = philox_ref([0, step, 1, 0], [seed & MASK, seed >> 32])
    return ((w[0] >> 6) * 2**26 + (w[1] >> 6) + 0.5) * 2.0**-52


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_streams_follow_the_documented_layout(dtype, atol):
    seeds, shape = [7, 2**62 + 3, 0xDEADBEEF12345], (3, 5, 7)  # numel 105: not a multiple of 4
    noise = CounterNoise(seeds, shape, "cpu", dtype)
    x0 = noise.initial()
    steps = [noise.normal().clone() for _ in range(noise.block + 3)]  # crosses a refill
    us = [noise.uniform().clone() for _ in range(noise.uniform_block + 2)]
    assert x0.dtype == dtype and x0.shape == (3, *shape) and steps[0].shape == (3, *shape)
    for j, s in enumerate(seeds):
        want = torch.tensor(ref_normals(s, 2, 0, 105, dtype), dtype=torch.float64)
        torch.testing.assert_close(x0[j].flatten().double(), want, atol=atol, rtol=0)
        for t in (0, 1, noise.block - 1, noise.block, noise.block + 2):
            want = torch.tensor(ref_normals(s, 0, t, 105, dtype), dtype=torch.float64)
            torch.testing.assert_close(steps[t][j].flatten().double(), want, atol=atol, rtol=0)
        for t in (0, 1, noise.uniform_block, noise.uniform_block + 1):
            assert us[t].dtype == torch.float64 and us[t][j].item() == ref_uniform(s, t)  # exact


# ---- statistics ----------------------------------------------------------------------------


def draws(chains=64, shape=(8, 16, 16), steps=12, dtype=torch.float32, seeds=None) -> torch.Tensor:
    noise = CounterNoise(seeds or seeds_of(chains), shape, "cpu", dtype)
    return torch.stack([noise.normal().clone() for _ in range(steps)], 1).double()  # [chains, steps, *shape]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_moments_and_ks(dtype):
    z = draws(dtype=dtype).flatten().numpy()  # 64 * 12 * 2048 = 1.57M
    n = z.size
    se = lambda v: 5 * math.sqrt(v / n)  # noqa: E731  five standard errors
    assert abs(z.mean()) < se(1)
    assert abs(z.var() - 1) < se(2)
    assert abs(stats.skew(z)) < se(6)
    assert abs(stats.kurtosis(z)) < se(24)  # excess kurtosis
    assert stats.kstest(z[:400_000], "norm").pvalue > 1e-3
    assert stats.kstest(z[-400_000:], "norm").pvalue > 1e-3


def test_uniform_ks_and_range():
    noise = CounterNoise(seeds_of(100), (2,), "cpu", torch.float32)
    u = torch.stack([noise.uniform() for _ in range(600)]).flatten().numpy()
    assert u.dtype == np.float64 and (u > 0).all() and (u < 1).all()
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)


def corr(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1]), a.numel()


@pytest.mark.parametrize("seeds", ["random", "consecutive", "high-word"])
def test_no_correlation(seeds):
    # consecutive seeds differ in one key word by 1; "high-word" seeds only in the other word
    s = {"random": seeds_of(64), "consecutive": list(range(64)),
         "high-word": [(i << 32) | 5 for i in range(64)]}[seeds]
    z = draws(seeds=s)  # [64 chains, 12 steps, 8, 16, 16]
    flat = z.flatten(2)  # [chains, steps, 2048]
    pairs = {
        "across chains": (flat[:-1], flat[1:]),
        "across steps": (flat[:, :-1], flat[:, 1:]),
        "neighbouring elements": (flat[..., :-1], flat[..., 1:]),
        "elements 4 apart": (flat[..., :-4], flat[..., 4:]),  # same Box–Muller slot, next block
        "squares, neighbouring elements": (flat[..., :-1] ** 2, flat[..., 1:] ** 2),  # Box–Muller pairs share r
    }
    for name, (a, b) in pairs.items():
        r, n = corr(a, b)
        assert abs(r) < 4 / math.sqrt(n), (name, r)
    noise = CounterNoise(s, (8, 16, 16), "cpu", torch.float32)  # streams of one chain: initial vs step 0
    r, n = corr(noise.initial(), noise.normal())
    assert abs(r) < 4 / math.sqrt(n)


# ---- invariance, reproducibility, dtypes ----------------------------------------------------


class SmallTiles(CounterNoise):
    cpu_tile_blocks = 40  # many tiles per refill, chains split across them


@pytest.mark.parametrize("cls", [CounterNoise, SmallTiles])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chain_stream_does_not_depend_on_the_batch(cls, dtype):
    s = seeds_of(9)
    shape = (3, 7, 5)
    alone = cls([s[4]], shape, "cpu", dtype)
    batch = cls(s, shape, "cpu", dtype)
    other = cls(s[6:] + [s[4]] + seeds_of(30, 99), shape, "cpu", dtype)  # others before and after
    assert torch.equal(alone.initial()[0], batch.initial()[4])
    assert torch.equal(alone.initial()[0], other.initial()[3])
    for _ in range(2 * max(alone.block, batch.block, other.block) + 1):
        a = alone.normal()[0].clone()
        assert torch.equal(a, batch.normal()[4])
        assert torch.equal(a, other.normal()[3])
    for _ in range(alone.uniform_block + 5):
        u = alone.uniform()[0]
        assert u == batch.uniform()[4] and u == other.uniform()[3]


def test_tiling_and_block_size_do_not_change_values():
    s, shape = seeds_of(5), (1, 28, 28)
    big, small = CounterNoise(s, shape, "cpu", torch.float32), SmallTiles(s, shape, "cpu", torch.float32)
    assert big.block != small.block
    n = 3 * max(big.block, small.block)
    assert torch.equal(torch.stack([big.normal().clone() for _ in range(n)]),
                       torch.stack([small.normal().clone() for _ in range(n)]))


def test_reproducible_and_seed_sensitive():
    s, shape = seeds_of(4), (2, 9)

    def run(seeds, interleave_uniform):
        noise = CounterNoise(seeds, shape, "cpu", torch.float32)
        out = [noise.initial()]
        for _ in range(20):
            out.append(noise.normal().clone())
            if interleave_uniform:
                noise.uniform()  # the streams are independent: no effect on normal()
        return torch.stack(out)

    a = run(s, False)
    assert torch.equal(a, run(s, False))
    assert torch.equal(a, run(s, True))
    b = run([x ^ 1 for x in s], False)
    assert not torch.isclose(a, b).any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype):
    noise = CounterNoise(seeds_of(3), (4, 4), "cpu", dtype)
    for z in (noise.initial(), noise.normal(), noise.normal()):
        assert z.dtype == dtype and z.shape == (3, 4, 4) and torch.isfinite(z).all()
    assert noise.uniform().dtype == torch.float64 and noise.batch == 3


def test_float64_has_53_bit_uniforms():
    # float64 normals come from 53-bit uniforms: far more distinct values than 24 bits allow
    z = draws(chains=4, shape=(1024,), steps=8, dtype=torch.float64)
    r2 = (z.flatten()[0::2] ** 2 + z.flatten()[1::2] ** 2)
    u1 = torch.exp(-r2 / 2)  # recovers u1 up to rounding
    frac = (u1 * 2**24) - torch.floor(u1 * 2**24)
    assert frac.std() > 0.2  # on a 24-bit grid it would be ~0


def test_bad_seed():
    with pytest.raises(ValueError):
        CounterNoise([-1], (2,), "cpu", torch.float32)


# ---- devices ----------------------------------------------------------------------------


def accelerators() -> list[str]:
    devs = []
    if torch.cuda.is_available():
        devs.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devs.append("mps")
    return devs


@pytest.mark.skipif(not accelerators(), reason="no CUDA or MPS device")
@pytest.mark.parametrize("device", accelerators() or ["none"])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_cpu_and_accelerator_agree(device, dtype, atol):
    if device == "mps" and dtype == torch.float64:
        pytest.skip("MPS has no float64")
    rng = random.Random(3)
    ctr = [torch.tensor([rng.getrandbits(32) for _ in range(1000)]) for _ in range(4)]
    key = [torch.tensor([rng.getrandbits(32) for _ in range(1000)]) for _ in range(2)]
    words_cpu = philox4x32(ctr, key)
    words_dev = philox4x32([c.to(device) for c in ctr], [k.to(device) for k in key])
    for a, b in zip(words_cpu, words_dev):
        assert torch.equal(a, b.cpu())  # the integers are identical
    s, shape = seeds_of(6), (3, 32, 32)
    cpu, dev = CounterNoise(s, shape, "cpu", dtype), CounterNoise(s, shape, device, dtype)
    assert dev.initial().device.type == device
    torch.testing.assert_close(dev.initial().cpu(), cpu.initial(), atol=atol, rtol=0)
    for _ in range(max(cpu.block, dev.block) + 2):
        torch.testing.assert_close(dev.normal().cpu(), cpu.normal(), atol=atol, rtol=0)
    for _ in range(5):
        assert torch.equal(dev.uniform().cpu(), cpu.uniform())


def test_the_sampler_runs_on_counter_noise_and_a_chain_ignores_its_batch():
    """noise="counter" through the whole sampler: SGLD replays with CounterNoise's own draws, and
    a chain is the same alone or with other targets (issue 11's batch-composition invariance)."""
    import ldam
    from ldam.noise import CounterNoise
    from ldam.samplers import chain_seeds

    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))
    kw = dict(input_shape=(6,), chains=2, steps=12, burn_in=0, step_size=0.05, regularizers=[ldam.L2(1.0)],
              seed=5, noise="counter")
    alone = ldam.sample(m, "output:1", **kw)
    both = ldam.sample(m, ["output:2", "output:1"], **kw)
    assert torch.equal(both.samples[2:], alone.samples)
    noise = CounterNoise(chain_seeds(5, ["output:1"], 2), (6,), torch.device("cpu"), torch.float32)
    x = noise.initial()
    w = m[1].weight[1].detach()
    for t in range(12):
        torch.testing.assert_close(alone.samples[:, t], x, rtol=1e-5, atol=1e-5)
        x = x + 0.05 / 2 * (w - x) + 0.05 ** 0.5 * noise.normal()
    assert alone.config["noise"] == "counter"
