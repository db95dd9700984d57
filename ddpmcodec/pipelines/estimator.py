"""An unbiased few-evaluation estimate of the bound, with an honest standard error.

Per image (bits/dim; the chain has K steps, column k of the full arrays is step k):

    L = L_prior + L_0 + S,     S = sum_{k=1}^{K-1} L_k

L_prior is closed form (no network call) and L_0, the decoder term, costs one call; both
are computed exactly. S is a sum of K-1 non-negative KL terms, most of it in the first
few dozen steps. With M network evaluations per image the estimator spends them as

* *exact steps* E: k = 0 and every step whose share of the proposal is so large that it
  would be drawn at least once anyway (``(M - |E|) q_k >= 1``, found by iterating, as
  "certainty units" in survey sampling); their terms are computed exactly;
* n = M - |E| *stratified importance draws* from the proposal q restricted to the other
  steps R: u_j = (j + U_j) / n, k_j = F^{-1}(u_j) for j = 0..n-1, U_j ~ U[0, 1), F the
  CDF of q on R. Then

      S_hat = sum_{k in E, k >= 1} L_k + (1/n) sum_j L_{k_j} / q_{k_j}

  is unbiased for S for any q > 0 on R: stratum j holds k with probability
  n * |[F(k-1), F(k)) & [j/n, (j+1)/n)|, which sums over j to n q_k.

The noise of pair (image i, step k) is ``counter_normal(seed, i, timesteps[k])``, the same
as the full bound's, so with the same seed the estimate is unbiased for *that* full bound
(only the choice of steps is random), and over seeds for the expected bound. The draws
U_j come from a counter-based stream keyed by (sample seed, image id): results do not
depend on batching, and a run resumes exactly.

Standard errors, both reported:

* ``total_se`` = sd over images of the per-image estimates / sqrt(N). Images are drawn
  independently and each image's draws are independent of the others', so the per-image
  estimates are i.i.d. with variance Var_image(L) + E[Var_MC]; their sample variance is
  unbiased for that sum. This is the error bar of the data set's mean NLL: it covers the
  image-to-image and the Monte-Carlo variation together (it needs N >= 2).
* ``mc_se`` = sqrt(sum_i v_i) / N, the Monte-Carlo part alone, i.e. the error against the
  full bound of these very images. v_i collapses neighbouring strata into groups of two
  (three for an odd remainder): for a group of g draws, g/(g-1) * sum (y - mean)^2 / n^2
  over-estimates the group's variance by the spread of its strata means, so v_i is
  conservative (never biased low); it needs n >= 2.

The proposal (:class:`Proposal`) only changes the variance, never the mean. The best q for
draws with replacement is proportional to sqrt(E_images[L_k^2]), learnt from the
per-step terms of an earlier full-bound run; it is mixed with a little of a uniform so that
no step is starved. Without any run at hand, :meth:`Proposal.gaussian` uses the expected
terms for Gaussian data of the right variance (closed form).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.core.rng import stream_keys, uniform_bits
from ddpmcodec.errors import DDPMCodecError

PROPOSAL_FILE = "proposal.json"
DEFAULT_MIX = 0.05  # weight of the uniform in the learnt proposal
_DRAW_TAG = 0x1A7E  # separates the draw streams from the noise streams (2 counters there)


# -- proposals ------------------------------------------------------------------------------
@dataclass
class Proposal:
    """Unnormalised per-step scales over a chain (``scale[k]`` ~ typical size of L_k,
    bits/dim; ``scale[0]`` is ignored: the decoder term is always computed exactly).

    ``probs`` (over k = 1..K-1) is ``(1 - mix) * scale / sum + mix / (K - 1)``.
    """

    scale: np.ndarray  # float64 [K]
    timesteps: np.ndarray  # long [K], original indices of the chain
    mix: float = DEFAULT_MIX
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        self.scale = np.asarray(self.scale, dtype=np.float64)
        self.timesteps = np.asarray(self.timesteps, dtype=np.int64)
        if self.scale.shape != self.timesteps.shape or self.scale.ndim != 1:
            raise DDPMCodecError("a proposal needs one scale per chain step")
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale < 0):
            raise DDPMCodecError("proposal scales must be finite and >= 0")
        if not 0.0 <= self.mix <= 1.0:
            raise DDPMCodecError(f"the proposal's uniform mix must lie in [0, 1], got {self.mix}")
        if len(self.scale) > 1 and self.mix == 0.0 and np.any(self.scale[1:] <= 0):
            raise DDPMCodecError("a proposal with zero scales needs a uniform mix > 0")

    @property
    def num_steps(self) -> int:
        return len(self.scale)

    @property
    def probs(self) -> np.ndarray:
        """float64 [K]: probs[0] = 0, probs[1:] sums to 1 and is > 0 everywhere."""
        K = self.num_steps
        p = np.zeros(K)
        if K < 2:
            return p
        s = self.scale[1:]
        learnt = s / s.sum() if s.sum() > 0 else np.full(K - 1, 1.0 / (K - 1))
        p[1:] = (1.0 - self.mix) * learnt + self.mix / (K - 1)
        return p / p.sum()

    def digest(self) -> str:
        h = hashlib.sha256(self.scale.tobytes() + self.timesteps.tobytes()
                           + np.float64(self.mix).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """What goes into results.json: where it came from, and a digest of the numbers."""
        return {**self.source, "mix": self.mix, "digest": self.digest()}

    # constructors
    @classmethod
    def from_terms(cls, vb: np.ndarray, timesteps, mix: float = DEFAULT_MIX,
                   source: dict | None = None) -> "Proposal":
        """Learnt from per-image, per-step terms vb [N, K] (bits/dim):
        scale_k = sqrt(mean_i vb[i, k]^2), the optimal importance density for draws of
        any image when the per-image terms are roughly proportional."""
        vb = np.asarray(vb, dtype=np.float64)
        if vb.ndim != 2 or vb.shape[1] != len(np.asarray(timesteps)):
            raise DDPMCodecError("per-step terms must be [images, steps] with one column per timestep")
        return cls(np.sqrt(np.mean(vb ** 2, axis=0)), timesteps, mix, source or {"kind": "terms"})

    @classmethod
    def from_results(cls, folder, mix: float = DEFAULT_MIX) -> "Proposal":
        """Learnt from the per-step terms of a complete full-bound nll results folder."""
        from ddpmcodec.io.results import load_arrays, read_results
        res = read_results(folder)
        if res.get("kind") != "nll" or res["config"].get("estimator", "full") != "full":
            raise DDPMCodecError(f"{folder}: a proposal is learnt from a full-bound nll results "
                                 f"folder (estimator full), not this one")
        arrays = load_arrays(folder)
        src = {"kind": "results", "path": str(folder),
               "fingerprint": res["config"]["model"]["fingerprint"],
               "num_images": int(arrays["vb"].shape[0])}
        return cls.from_terms(arrays["vb"], arrays["timesteps"], mix, src)

    @classmethod
    def gaussian(cls, diffusion: Diffusion, data_std: float = 0.5,
                 mix: float = DEFAULT_MIX) -> "Proposal":
        """Model-free default: the expected KL terms (nats/dim) for i.i.d. N(0, data_std^2)
        pixels under the Bayes-optimal denoiser, in closed form. data_std = 0.5 is about
        the per-pixel standard deviation of natural images on [-1, 1]."""
        from ddpmcodec.core.oracle import GaussianPixels
        kl = GaussianPixels(0.0, data_std).expected_kl_nats(diffusion).numpy()
        return cls(np.maximum(kl, 0.0), diffusion.timesteps.numpy(), mix,
                   {"kind": "gaussian", "data_std": data_std})

    @classmethod
    def load(cls, path) -> "Proposal":
        """From a proposal.json (see :meth:`save`) or a full-bound nll results folder."""
        path = Path(path)
        if path.is_dir():
            if (path / "results.json").is_file():
                return cls.from_results(path)
            if (path / PROPOSAL_FILE).is_file():
                path = path / PROPOSAL_FILE
        if not path.is_file():
            raise DDPMCodecError(f"no proposal at {path} (give a {PROPOSAL_FILE} or a "
                                 f"full-bound nll results folder)")
        try:
            obj = json.loads(path.read_text())
        except OSError as exc:  # the OS refuses the file: nothing is known about its content
            raise DDPMCodecError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # not UTF-8 (UnicodeDecodeError) or not JSON
            raise DDPMCodecError(f"unreadable proposal {path}: {exc}") from None
        # the shape of the document is checked here, so that nothing below needs a broad
        # except: an error raised while building the proposal is a bug and keeps its traceback
        if (not isinstance(obj, dict) or obj.get("kind", "proposal") != "proposal"
                or "scale" not in obj or "timesteps" not in obj):
            raise DDPMCodecError(f"{path} is not a proposal (a {PROPOSAL_FILE} holds kind "
                                 f"'proposal', scale and timesteps)")

        def numbers(key, kind=(int, float)):
            v = obj[key]
            if not isinstance(v, list) or not all(isinstance(x, kind) and not isinstance(x, bool)
                                                  for x in v):
                what = "integers" if kind is int else "numbers"
                raise DDPMCodecError(f"{path}: '{key}' is not a list of {what}")
            return v
        scale, timesteps = numbers("scale"), numbers("timesteps", int)
        mix, source = obj.get("mix", DEFAULT_MIX), obj.get("source", {})
        if not isinstance(mix, (int, float)) or isinstance(mix, bool):
            raise DDPMCodecError(f"{path}: 'mix' is not a number")
        if not isinstance(source, dict):
            raise DDPMCodecError(f"{path}: 'source' is not an object")
        return cls(np.asarray(scale, dtype=np.float64), np.asarray(timesteps, dtype=np.int64),
                   float(mix), dict(source))

    def save(self, path) -> None:
        from ddpmcodec.io.atomic import write_json_atomic
        write_json_atomic(Path(path), {"kind": "proposal", "scale": self.scale.tolist(),
                                       "timesteps": self.timesteps.tolist(), "mix": self.mix,
                                       "source": self.source, "digest": self.digest()})

    def for_chain(self, diffusion: Diffusion) -> "Proposal":
        """This proposal on ``diffusion``'s chain: itself when the timesteps agree; from a
        full chain to a respaced one by summing the scales of the original steps that
        each respaced step spans, (t_{k-1}, t_k]."""
        ts = diffusion.timesteps.numpy()
        if np.array_equal(ts, self.timesteps):
            return self
        full = np.array_equal(self.timesteps, np.arange(self.num_steps))
        if not full or ts[-1] >= self.num_steps:
            raise DDPMCodecError(
                f"the proposal is for a chain of {self.num_steps} steps and does not fit this "
                f"one ({len(ts)} steps up to timestep {ts[-1]}); learn it from a full-chain run "
                f"of the same schedule")
        csum = np.concatenate([[0.0], np.cumsum(self.scale)])
        scale = np.zeros(len(ts))
        scale[1:] = csum[ts[1:] + 1] - csum[ts[:-1] + 1]
        src = {**self.source, "respaced_from": self.num_steps}
        return Proposal(scale, ts, self.mix, src)


def default_proposal(model, diffusion: Diffusion) -> Proposal:
    """A proposal.json beside the model's checkpoint (the embedded model carries one),
    else the Gaussian-data proposal; either on ``diffusion``'s chain."""
    from ddpmcodec.io.models import DEFAULT_CHECKPOINT
    src = str(getattr(model, "source", ""))
    folder = DEFAULT_CHECKPOINT if src.startswith("embedded:") else Path(src)
    for cand in (folder / PROPOSAL_FILE, folder / "unet" / PROPOSAL_FILE):
        if cand.is_file():
            prop = Proposal.load(cand)
            if prop.timesteps[-1] == model.diffusion.num_steps - 1:
                return prop.for_chain(diffusion)
    return Proposal.gaussian(diffusion)


# -- the sampling plan ----------------------------------------------------------------------
@dataclass
class Plan:
    """How M evaluations per image are spent on a chain: exact steps and draws."""

    exact_k: np.ndarray  # long [E], sorted, always starts with 0
    sample_k: np.ndarray  # long [R], the steps the draws come from
    sample_q: np.ndarray  # float64 [R], > 0, sums to 1
    num_draws: int  # n
    nfe: int  # M
    scheme: str = "stratified"

    @classmethod
    def make(cls, proposal: Proposal, nfe: int, scheme: str = "stratified") -> "Plan":
        K = proposal.num_steps
        if scheme not in ("stratified", "iid"):
            raise DDPMCodecError(f"unknown sampling scheme {scheme!r}")
        if nfe < 1 or (nfe < 2 and K > 1):
            raise DDPMCodecError(f"--nfe must be at least 2 (one for the decoder term, one or "
                                 f"more for the KL terms), got {nfe}")
        p = proposal.probs
        exact = {0}
        if nfe >= K:  # enough evaluations for every step: the full bound itself
            exact = set(range(K))
        while len(exact) < K:
            rest = np.array([k for k in range(K) if k not in exact])
            n = nfe - len(exact)
            q = p[rest] / p[rest].sum()
            # q > 0 everywhere, so certain steps (q >= 1/n each) never use up all n draws
            # while other steps remain; checked because a plan without draws for remaining
            # steps would silently drop their terms
            if n < 1:
                raise RuntimeError("internal error: no draws left for the remaining steps")
            certain = rest[n * q >= 1.0] if scheme == "stratified" else rest[:0]
            if len(certain) == 0:
                return cls(np.array(sorted(exact)), rest, q, n, nfe, scheme)
            exact.update(int(k) for k in certain)
        return cls(np.arange(K), np.zeros(0, dtype=np.int64), np.zeros(0), 0, nfe, scheme)

    def draw(self, image_ids, sample_seed: int) -> np.ndarray:
        """Chain steps drawn for each image, long [N, n] (stratum order), from the
        counter-based stream of (sample_seed, image id)."""
        ids = torch.as_tensor(np.asarray(image_ids), dtype=torch.long)
        n = self.num_draws
        if n == 0:
            return np.zeros((len(ids), 0), dtype=np.int64)
        keys = stream_keys(sample_seed, ids, torch.full_like(ids, -1), torch.full_like(ids, _DRAW_TAG))
        words = uniform_bits(keys, n)
        u = ((words >> 11) & ((1 << 53) - 1)).to(torch.float64).numpy() * 2.0 ** -53  # [0, 1)
        if self.scheme == "stratified":
            u = (np.arange(n) + u) / n
        cdf = np.cumsum(self.sample_q)
        cdf /= cdf[-1]
        idx = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
        return self.sample_k[idx]

    def probability(self, k: np.ndarray) -> np.ndarray:
        """q of the given (sampled) chain steps."""
        q = np.zeros(int(max(self.sample_k.max(initial=0), self.exact_k.max(initial=0))) + 1)
        q[self.sample_k] = self.sample_q
        return q[k]

    def describe(self) -> dict:
        return {"nfe": self.nfe, "scheme": self.scheme, "exact_steps": self.exact_k.tolist(),
                "num_draws": self.num_draws}


def combine(plan: Plan, exact_vb: np.ndarray, draw_k: np.ndarray, draw_vb: np.ndarray) -> dict:
    """Per-image estimates from the exact terms [N, E] and the drawn terms [N, n].

    Returns float64 [N] arrays: decoder (L_0), kl (S_hat) and kl_var (the conservative
    Monte-Carlo variance estimate v_i of S_hat; NaN with fewer than two draws; 0 when the
    plan has no draws, the estimate then being the exact sum).
    """
    exact_vb = np.asarray(exact_vb, dtype=np.float64)
    N, n = draw_k.shape
    decoder = exact_vb[:, 0]
    kl = exact_vb[:, 1:].sum(1)
    var = np.zeros(N)
    if n:
        y = np.asarray(draw_vb, dtype=np.float64) / plan.probability(draw_k)
        kl = kl + y.mean(1)
        if n < 2:
            var = np.full(N, np.nan)
        elif plan.scheme == "iid":
            var = y.var(1, ddof=1) / n
        else:
            var = np.zeros(N)
            for g in _collapsed_groups(n):
                yg = y[:, g]
                var += len(g) / (len(g) - 1) * ((yg - yg.mean(1, keepdims=True)) ** 2).sum(1)
            var /= n ** 2
    return {"decoder": decoder, "kl": kl, "kl_var": var}


def _collapsed_groups(n: int) -> list[list[int]]:
    """Neighbouring strata in pairs, the last three together when n is odd."""
    groups = [[j, j + 1] for j in range(0, n - 1, 2)]
    if n % 2:
        groups[-1].append(n - 1)
    return groups


# -- running it -----------------------------------------------------------------------------
ARRAY_NAMES = ("prior", "decoder", "kl", "kl_var", "total", "nfe", "draw_k", "draw_vb",
               "exact_vb")


def estimate(engine, plan: Plan, x0: torch.Tensor, image_ids, sample_seed: int,
             progress=None) -> dict:
    """The estimator on a group of images through the engine (each distinct (image, step)
    pair evaluated once).

    x0: float64 [G,C,H,W]; image_ids: long [G]. Returns numpy arrays: prior, decoder, kl,
    kl_var, total (bits/dim) and nfe (network evaluations) [G]; draw_k, draw_vb [G, n]
    (the drawn steps and their terms) and exact_vb [G, E] (the exact steps' terms).
    """
    from ddpmcodec.core.likelihood import prior_bpd
    ids = np.asarray(image_ids, dtype=np.int64)
    G, E = len(ids), len(plan.exact_k)
    draw_k = plan.draw(ids, sample_seed)
    wanted = np.concatenate([np.repeat(plan.exact_k[None], G, 0), draw_k], axis=1)  # [G, E+n]
    pair_image = np.repeat(np.arange(G), wanted.shape[1])
    flat = wanted.reshape(-1)
    key = pair_image * (engine.diffusion.num_steps + 1) + flat
    uniq, inverse = np.unique(key, return_inverse=True)
    u_image, u_k = uniq // (engine.diffusion.num_steps + 1), uniq % (engine.diffusion.num_steps + 1)
    terms = engine.pair_terms(x0, torch.from_numpy(ids), torch.from_numpy(u_image),
                              torch.from_numpy(u_k), progress)
    vb = terms["vb"].numpy()[inverse].reshape(G, -1)
    out = combine(plan, vb[:, :E], draw_k, vb[:, E:])
    prior = prior_bpd(engine.diffusion, torch.as_tensor(x0).cpu()).numpy()
    nfe = np.bincount(u_image, minlength=G)
    return {"prior": prior, "decoder": out["decoder"], "kl": out["kl"], "kl_var": out["kl_var"],
            "total": prior + out["decoder"] + out["kl"], "nfe": nfe.astype(np.int64),
            "draw_k": draw_k, "draw_vb": vb[:, E:], "exact_vb": vb[:, :E]}


def estimate_from_table(plan: Plan, vb: np.ndarray, prior: np.ndarray, image_ids,
                        sample_seed: int) -> dict:
    """The estimator replayed on a table of full-bound terms vb [N, K] computed with the
    same noise seed: exactly what :func:`estimate` would return, without a network (used
    to study the estimator's variance and to check it)."""
    vb = np.asarray(vb, dtype=np.float64)
    draw_k = plan.draw(image_ids, sample_seed)
    rows = np.arange(len(vb))[:, None]
    out = combine(plan, vb[:, plan.exact_k], draw_k, vb[rows, draw_k])
    return {"prior": np.asarray(prior, dtype=np.float64), **out,
            "total": np.asarray(prior) + out["decoder"] + out["kl"], "draw_k": draw_k}


def summarize(arrays: dict) -> dict:
    """Summary numbers of an importance run (bits/dim): each mean with its image-level
    standard error ``*_se`` (covering image and Monte-Carlo variation), plus
    ``total_mc_se``, the Monte-Carlo part alone."""
    from ddpmcodec.io.results import mean_se
    N = len(arrays["total"])
    out = {"num_images": int(N), "nfe_per_image": float(np.mean(arrays["nfe"]))}
    for name, values in (("total_bpd", arrays["total"]), ("prior_bpd", arrays["prior"]),
                         ("kl_bpd", arrays["kl"]), ("rate_bpd", arrays["prior"] + arrays["kl"]),
                         ("decoder_bpd", arrays["decoder"])):
        out[name], out[name.replace("_bpd", "_se")] = mean_se(values)
    var = np.asarray(arrays["kl_var"], dtype=np.float64)
    mc = float(math.sqrt(var.sum()) / N) if np.all(np.isfinite(var)) else float("nan")
    out["total_mc_se"] = mc
    out["mc_sd_per_image"] = float(math.sqrt(var.mean())) if np.all(np.isfinite(var)) else float("nan")
    if N < 2:  # no image-to-image variation can be estimated from one image
        out["total_se"] = out["rate_se"] = out["kl_se"] = mc
    return out
