"""One Gaussian target sent through the channel: encode (layout, search, index code)
and decode (regenerate the selected candidates)."""
from __future__ import annotations

import math

import numpy as np

from ddpmcodec.codec.progressive.channel.chunks import ChunkPlan
from ddpmcodec.codec.progressive.channel.index import IndexModel, SymbolReader, SymbolWriter
from ddpmcodec.codec.progressive.channel.params import (
    ChannelParams, ChannelStats, hint_to_int, search_budget)
from ddpmcodec.codec.progressive.channel.pool import check_search_workers, search_chunks
from ddpmcodec.codec.progressive.channel.search import kl_bits, score_coefficients
from ddpmcodec.errors import DDPMCodecError


def encode_gaussian(writer: SymbolWriter, mean_q, var_q, mean_p, var_p, params: ChannelParams,
                    key_seed: int, key_path: tuple, private_rng: np.random.Generator,
                    stats: ChannelStats | None = None, kl_hint: float | None = None,
                    index_model: IndexModel | None = None, search_device: str | None = None,
                    search_workers: int | None = 1, budget_rule: str = "layout") -> np.ndarray:
    """Send a sample of q = N(mean_q, var_q) to a receiver that knows p = N(mean_p, var_p)
    (float64 arrays of one shape, var_* > 0); return that sample (float64, q's shape),
    exactly as :func:`decode_gaussian` will regenerate it.

    ``key_seed`` and ``key_path`` (a tuple of ints, e.g. (image, step)) name the shared
    randomness; a path must never be reused within a stream. Encoder-only options of a
    v2 generator (the stream does not depend on them): ``search_device`` (None or "cpu":
    numpy; a torch device such as "cuda", or "torch:cpu": torch there) and
    ``search_workers`` (numpy searches: chunks searched at once on that many forked
    processes on Linux; None: one per CPU, :func:`default_search_workers`). ``budget_rule``
    (any generator; it changes the stream, not the format): how many candidates each
    chunk's search may score, :func:`search_budget`.
    """
    shape = np.shape(mean_p)
    mq, vq, mp, vp = (np.broadcast_to(np.asarray(a, dtype=np.float64), shape).reshape(-1)
                      for a in (mean_q, var_q, mean_p, var_p))
    dims = mp.size
    kl = kl_bits(mq, vq, mp, vp)
    total = float(kl.sum())
    if not math.isfinite(total):
        raise DDPMCodecError("channel simulation: non-finite KL (check the variances)")
    start_bits = dict(writer.bits)
    if kl_hint is None:
        q_int = int(math.ceil(total - 1e-9)) if total > 0 else 0
        writer.exp_golomb(q_int, "side")
    else:
        q_int = hint_to_int(kl_hint)
    plan = ChunkPlan.make(q_int, params, dims, key_seed, key_path, index_model)
    out = np.empty(dims)
    st = stats if stats is not None else ChannelStats()
    st.kl_bits += total
    st.num_chunks += len(plan.groups)
    chunk_kl = [float(kl[idx].sum()) for idx in plan.groups]
    chunks = [(*score_coefficients(mq[idx], vq[idx], mp[idx], vp[idx]),
               search_budget(d_j, plan.mean_bits, params, len(idx), budget_rule))
              for idx, d_j in zip(plan.groups, chunk_kl)]
    selections = search_chunks(plan, chunks, private_rng, search_device,
                                check_search_workers(search_workers))
    # the indices go to the stream, and the index model learns them, in chunk order
    for sel, d_j, (*_, budget) in zip(selections, chunk_kl, chunks):
        before = writer.bits.get("index", 0.0)
        writer.index(sel.index, plan.octave_probs())
        plan.update(sel.index)
        st.index_bits.append(writer.bits["index"] - before)
        st.chunk_kl.append(d_j)
        st.searched += sel.searched
        st.exact_chunks += int(sel.exact)
        st.saturated_chunks += int(not sel.exact and sel.index >= budget // 2 and budget > 1)
    plan.place(out, [sel.index for sel in selections], mp, vp)
    st.side_bits += writer.bits.get("side", 0.0) - start_bits.get("side", 0.0)
    return out.reshape(shape)


def decode_gaussian(reader: SymbolReader, mean_p, var_p, params: ChannelParams,
                    key_seed: int, key_path: tuple, kl_hint: float | None = None,
                    index_model: IndexModel | None = None) -> np.ndarray:
    """The receiver's half of :func:`encode_gaussian`: the same sample, from p alone
    (``index_model``: the stream's, in the same state as the sender's)."""
    shape = np.shape(mean_p)
    mp = np.asarray(mean_p, dtype=np.float64).reshape(-1)
    vp = np.broadcast_to(np.asarray(var_p, dtype=np.float64), shape).reshape(-1)
    dims = mp.size
    q_int = reader.exp_golomb() if kl_hint is None else hint_to_int(kl_hint)
    plan = ChunkPlan.make(q_int, params, dims, key_seed, key_path, index_model)
    out = np.empty(dims)
    indices = []
    for _ in plan.groups:
        indices.append(reader.index(plan.octave_probs()))
        plan.update(indices[-1])
    plan.place(out, indices, mp, vp)
    return out.reshape(shape)
