"""What the channel tests share: a round trip through the channel, repeated draws, and the
check that samples follow the target Gaussian q."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ddpmcodec.codec.progressive import channel as ch


def roundtrip(mean_q, var_q, mean_p, var_p, params, seed=3, path=(0, 0), kl_hint=None,
              rng_seed=0, **encode_kw):
    """Encode one target and decode it: (sent sample, received sample, stats, words)."""
    w = ch.SymbolWriter()
    st = ch.ChannelStats()
    x = ch.encode_gaussian(w, mean_q, var_q, mean_p, var_p, params, seed, path,
                           np.random.default_rng(rng_seed), st, kl_hint, **encode_kw)
    words = w.words()
    y = ch.decode_gaussian(ch.SymbolReader(words), mean_p, var_p, params, seed, path, kl_hint)
    return x, y, st, words


def draws(mq, vq, mp, vp, params, count, **encode_kw):
    """``count`` independent channel samples of one target (image index i for draw i):
    (samples [count, d], code bits [count], the fraction of chunks searched exactly)."""
    out, bits, exact, chunks = [], [], 0, 0
    for i in range(count):
        st = ch.ChannelStats()
        out.append(ch.encode_gaussian(ch.SymbolWriter(), mq, vq, mp, vp, params, 99, (i, 1),
                                      np.random.default_rng(i), st, **encode_kw))
        bits.append(st.code_bits)
        exact += st.exact_chunks
        chunks += st.num_chunks
    return np.array(out), np.array(bits), exact / chunks


def assert_follows_q(samples, mq, vq):
    """Moments per dimension (mean and variance within 4.5 standard errors) and a
    Kolmogorov-Smirnov test of the standardised samples against N(0, 1)."""
    n = len(samples)
    z = (samples - mq) / np.sqrt(vq)
    assert np.all(np.abs(z.mean(0)) < 4.5 / math.sqrt(n)), z.mean(0)
    assert np.all(np.abs(z.var(0) - 1) < 4.5 * math.sqrt(2 / n)), z.var(0)
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-4
