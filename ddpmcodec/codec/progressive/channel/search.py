"""The Poisson functional representation: scores of candidates against a target, the
v1 selection (one arrival stream across chunks) and the v2 search (float32 scores, an
arrival stream per chunk).

:func:`pfr_search` scores candidates in float32 (encoder-only: the decoder regenerates
only the winner) with a fixed order of float32 operations, so its scores, and hence its
result, are the same bits with numpy and with torch on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ddpmcodec.codec.progressive.channel.generator_v1 import candidate_normals
from ddpmcodec.codec.progressive.channel.generator_v2 import (
    BLOCK_WORDS, EPS_MAX, _check, _planes_numpy, _planes_torch, _scratch, _torch_block_words,
    words_per_candidate)

LN2 = 0.6931471805599453  # ln 2, correctly rounded (a literal: no libm)


# -- Gaussian algebra -----------------------------------------------------------------------
def kl_bits(mean_q, var_q, mean_p, var_p) -> np.ndarray:
    """Elementwise KL(N(mean_q, var_q) || N(mean_p, var_p)) in bits (float64 arrays)."""
    ratio = var_q / var_p
    return 0.5 * (ratio - 1.0 - np.log(ratio) + (mean_q - mean_p) ** 2 / var_p) / LN2


def score_coefficients(mean_q, var_q, mean_p, var_p):
    """log w(z) for z = mean_p + sqrt(var_p) * eps, as alpha . eps^2 + beta . eps + const
    (nats): alpha = (1 - var_p/var_q)/2, beta = sqrt(var_p) (mean_q - mean_p)/var_q,
    const = sum(-(mean_q - mean_p)^2 / (2 var_q) + log(var_p/var_q)/2)."""
    delta = mean_q - mean_p
    alpha = 0.5 * (1.0 - var_p / var_q)
    beta = np.sqrt(var_p) * delta / var_q
    const = float(np.sum(-0.5 * delta ** 2 / var_q + 0.5 * np.log(var_p / var_q)))
    return alpha, beta, const


def log_weight_bound(alpha, beta, const) -> float:
    """sup_z log w(z) in nats; +inf unless var_q < var_p in every dimension."""
    if not np.all(alpha < 0):
        return math.inf
    return const + float(np.sum(-beta ** 2 / (4.0 * alpha)))


@dataclass
class Selection:
    index: int          # n*, 0-based
    searched: int       # candidates scored
    budget: int         # N_j, the most the search would score
    exact: bool         # stopped because no later candidate could win (exact PFR)
    log_weight: float   # log w(z_{n*}) in nats


def pfr_select(alpha, beta, const, key, budget: int, private_rng: np.random.Generator,
               block_elems: int = 1 << 16) -> Selection:
    """Truncated Poisson functional representation over candidates 0..budget-1.

    alpha, beta: float64 [dims] score coefficients (:func:`score_coefficients`); key: the
    chunk's Philox key; private_rng: the sender's own generator for the arrival times.
    Returns the winner argmax_n (log w_n - log T_n) among the candidates searched.
    """
    dims = len(alpha)
    bound = log_weight_bound(alpha, beta, const)
    rows = max(1, min(budget, block_elems // max(dims, 1)))
    best, best_n, best_lw, t_last, start = -math.inf, 0, -math.inf, 0.0, 0
    exact = False
    while start < budget:
        count = min(rows, budget - start)
        eps = candidate_normals(key, start, count, dims)
        lw = (eps * eps) @ alpha + eps @ beta + const
        arrivals = t_last + np.cumsum(private_rng.standard_exponential(count))
        t_last = float(arrivals[-1])
        score = lw - np.log(arrivals)
        j = int(np.argmax(score))
        if score[j] > best:
            best, best_n, best_lw = float(score[j]), start + j, float(lw[j])
        start += count
        if bound - math.log(t_last) <= best:  # no later candidate can beat the winner
            exact = True
            break
    return Selection(best_n, start, budget, exact, best_lw)


# -- the PFR search ------------------------------------------------------------------------
def arrival_rng(seed) -> np.random.Generator:
    """The generator of a chunk's arrival times: ``seed`` itself if it is a numpy
    Generator, else numpy.random.default_rng(seed) (an int or a tuple of ints)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _score_terms(dims: int) -> int:
    """Rows of the planes the scores sum over: 2 W (an odd dims pads one zero term)."""
    return 2 * words_per_candidate(dims)


def score_tolerance(alpha: np.ndarray, beta: np.ndarray) -> float:
    """A bound (nats) on |float32 score - exact score| of any candidate given its float32
    normals: each of the 2W terms (alpha_i eps + beta_i) eps takes 3 roundings and the
    coefficients' own, the pairwise sum ceil(log2 2W) more, all relative to
    sum |alpha_i| EPS_MAX^2 + |beta_i| EPS_MAX; doubled for safety."""
    depth = math.ceil(math.log2(_score_terms(len(alpha))))
    scale = EPS_MAX ** 2 * float(np.abs(alpha).sum()) + EPS_MAX * float(np.abs(beta).sum())
    return 2.0 * (depth + 5) * 2.0 ** -24 * scale


def _float32_below(x: float) -> np.float32:
    """The largest float32 <= x: ``v > _float32_below(x)`` keeps every float32 v > x."""
    f = np.float32(x)
    if float(f) > x:  # compared in float64 (numpy would round x to float32)
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def _plane_coefficients(c: np.ndarray) -> np.ndarray:
    """float64 [dims] -> float32 [2W, 1] in the planes' row order (cos normals, then sin
    normals); the padding normal of an odd dims gets 0, so it never counts."""
    out = np.zeros(_score_terms(len(c)), dtype=np.float32)
    out[:len(c)] = c
    return out[:, None]


def _pairwise_rows(terms, add) -> None:
    """Sum the rows of ``terms`` ([m, count]) into row 0 by a fixed pairwise tree (the
    same float32 additions in the same order in every backend); add(a, b) does a += b."""
    m = terms.shape[0]
    while m > 1:
        h = m // 2
        add(terms[:h], terms[m - h:m])  # an odd m keeps its middle row for the next level
        m -= h


class _NumpyScorer:
    """Float32 scores of blocks of candidates, from [2W, count] planes of their normals
    (in this thread's scratch)."""

    def __init__(self, key: int, alpha: np.ndarray, beta: np.ndarray):
        self.key, self.w = key, words_per_candidate(len(alpha))
        self.a, self.b = _plane_coefficients(alpha), _plane_coefficients(beta)

    def log_weights(self, start: int, count: int) -> np.ndarray:
        """sum_i (alpha_i eps_i + beta_i) eps_i (nats, without the constant) of candidates
        start..start+count-1: float32 [count] (valid until this thread's next call).
        Mirrors :meth:`_TorchScorer.log_weights`."""
        n = 2 * self.w * count
        sc = _scratch(self.w * count)
        planes, terms = sc.planes[:n].reshape(2 * self.w, count), sc.terms[:n].reshape(2 * self.w, count)
        _planes_numpy(self.key, start, count, self.w, planes.reshape(2, self.w, count))
        np.multiply(planes, self.a, out=terms)
        np.add(terms, self.b, out=terms)
        np.multiply(terms, planes, out=terms)
        _pairwise_rows(terms, lambda a, b: np.add(a, b, out=a))
        self.last = planes
        return terms[0]

    def normals(self, j: int, dims: int) -> np.ndarray:
        """The normals of candidate j of the last block: float32 [dims] (a copy)."""
        return self.last[:dims, j].copy()


class _TorchScorer:
    """:class:`_NumpyScorer` with torch on ``device``: the same float32 operations."""

    def __init__(self, key: int, alpha: np.ndarray, beta: np.ndarray, rows: int, device):
        import torch
        self.key, self.w = key, words_per_candidate(len(alpha))
        self.a = torch.from_numpy(_plane_coefficients(alpha)).to(device)
        self.b = torch.from_numpy(_plane_coefficients(beta)).to(device)
        self.planes = torch.empty((2 * self.w, rows), dtype=torch.float32, device=device)

    def log_weights(self, start: int, count: int) -> np.ndarray:
        planes = self.planes[:, :count]
        _planes_torch(self.key, start, count, self.w, planes.view(2, self.w, count))
        terms = planes * self.a
        terms = terms + self.b
        terms = terms * planes
        _pairwise_rows(terms, lambda a, b: a.add_(b))
        self.last = planes
        return terms[0].cpu().numpy()

    def normals(self, j: int, dims: int) -> np.ndarray:
        """The normals of candidate j of the last block: float32 [dims] (a numpy copy:
        on the CPU, .cpu() shares memory)."""
        return self.last[:dims, j].cpu().numpy().copy()


def pfr_search(alpha, beta, const: float, key: int, budget: int, arrivals_seed,
               backend: str = "numpy", device="cpu", block_words: int | None = None):
    """Truncated PFR over candidates 0..budget-1 of chunk ``key`` with generator v2: the
    semantics of channel.pfr_select, faster. Returns a channel.Selection.

    alpha, beta: float64 [dims] score coefficients (channel.score_coefficients), const
    their constant (nats); key: the chunk's 64-bit key; arrivals_seed: the chunk's
    private randomness (:func:`arrival_rng`), from which the arrival times T_n (cumulative
    Exp(1)) are drawn in candidate order, so the result depends on (coefficients, key,
    budget, seed) only. backend "numpy" (CPU) or "torch" (on ``device``): the same float32
    scores, hence the same result. The winner is argmax_n (log w_n - log T_n) among the
    candidates searched; the search stops early, exactly, once the bound on log w (plus
    :func:`score_tolerance`) minus log T cannot beat it. ``searched`` counts the
    candidates up to that point (the budget if it never comes), whatever the block size
    (the search scores whole blocks). The returned log_weight is float64, from the
    winner's float32 normals.
    """
    alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    key, budget, dims = int(key), int(budget), len(alpha)
    _check(key, 0, budget, dims)
    w = words_per_candidate(dims)
    if backend == "numpy":
        rows = max(1, min(budget, (block_words or BLOCK_WORDS) // w))
        scorer = _NumpyScorer(key, alpha, beta)
    elif backend == "torch":
        rows = max(1, min(budget, (block_words or _torch_block_words(device)) // w))
        scorer = _TorchScorer(key, alpha, beta, rows, device)
    else:
        raise ValueError(f"unknown search backend {backend!r}")
    bound = log_weight_bound(alpha, beta, const) + score_tolerance(alpha, beta)
    rng = arrival_rng(arrivals_seed)
    best, best_n, best_eps, t_last, start, exact = -math.inf, 0, None, 0.0, 0, False
    while start < budget:
        count = min(rows, budget - start)
        lw = scorer.log_weights(start, count)
        arrivals = rng.standard_exponential(count)
        np.cumsum(arrivals, out=arrivals)
        arrivals += t_last
        t_last = float(arrivals[-1])
        best_before, cands, scores = best, [], []
        for a, b in _pieces(count):
            # T_n >= arrivals[a] for n >= a: only lw above best - const + log arrivals[a]
            # can win (after the first pieces, a few candidates)
            cand = a + np.flatnonzero(lw[a:b] > _float32_below(best - const + math.log(arrivals[a])))
            if cand.size:
                score = lw[cand].astype(np.float64) + const - np.log(arrivals[cand])
                j = int(np.argmax(score))
                if score[j] > best:
                    best, best_n = float(score[j]), start + int(cand[j])
                    best_eps = scorer.normals(int(cand[j]), dims)
                cands.append(cand)
                scores.append(score)
        if bound - math.log(t_last) <= best:  # no later candidate can beat the winner
            exact = True
            start += _stop_offset(arrivals, cands, scores, best_before, bound)
            break
        start += count
    eps = best_eps.astype(np.float64)
    log_weight = float((eps * eps) @ alpha + eps @ beta + const)
    return Selection(best_n, start, budget, exact, log_weight)


def _pieces(count: int):
    """[a, b) pieces of a block of ``count`` candidates, 64 then four times longer each:
    the pruning threshold is refreshed at each piece's start, so that the first block
    does not score every candidate."""
    a, size = 0, 64
    while a < count:
        b = min(count, a + size)
        yield a, b
        a, size = b, 4 * size


def _stop_offset(arrivals: np.ndarray, cands: list, scores: list, best_before: float,
                 bound: float) -> int:
    """Candidates of the last block an exact search needs: up to the first n with
    bound - log T_n <= (the best score among candidates up to n); ``cands``, ``scores``:
    the block's candidates that could win and their scores. It depends on the arrivals
    and scores only, not on how candidates were cut into blocks."""
    running = np.full(len(arrivals), -math.inf)
    for cand, score in zip(cands, scores):
        running[cand] = score
    running[0] = max(running[0], best_before)
    np.maximum.accumulate(running, out=running)
    return int(np.argmax(bound - np.log(arrivals) <= running)) + 1
