"""The fast likelihood engine: many (image, chain step) pairs per network call.

Given x0, the bound terms of different chain steps are independent: term k needs only
x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps_k and one network evaluation at x_k. So
instead of the reference loop (one call per step for a batch of images, K calls per
batch), the engine flattens all (image, step) pairs of a group of images into one queue
and feeds the network fixed-size chunks of ``batch`` pairs, whatever the mix of steps.

Every pair gets the counter-based noise ``counter_normal(seed, image_id, timesteps[k])``
of :func:`ddpmcodec.core.likelihood.step_terms`, and the float64 term math is the very same
:func:`~ddpmcodec.core.likelihood.vb_terms_bpd`, so the engine's arrays equal
:func:`~ddpmcodec.core.likelihood.bound_plain_loop`'s pair by pair; the only difference is the
network's own float rounding, which can depend on the batch it sits in (measured: far
below 0.002 bits/dim; see docs/engine.md).

Speed comes from the network side (:class:`Network`), all optional and recorded:

* fixed-shape chunks (the last chunk of a group is padded by repeating its last pair and
  the padding discarded), so that ``torch.compile(dynamic=False)`` compiles once and a
  CUDA graph can be captured once and replayed;
* ``precision``: ``fp32`` (TF32 explicitly off on CUDA), ``tf32`` (CUDA only), ``bf16``
  (autocast), ``fp64`` (the float64-math reference); with ``fp32_timesteps=N`` pairs at
  original timestep indices < N (the low-noise steps, where the network error is
  amplified most) go to a second, fp32 network, so reduced precision is used only where a
  measurement shows it moves the bound by less than 0.002 bits/dim;
* channels-last memory layout on CUDA; noise and term math stay on the device, results
  are moved to the host once per group.

What has been run where is listed in docs/engine.md (the CUDA paths were written without a
GPU at hand and are untested).
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable

import torch

from ddpmcodec.core.diffusion import Diffusion
from ddpmcodec.core.likelihood import mean_flat, prior_bpd, vb_terms_bpd
from ddpmcodec.core.rng import counter_normal
from ddpmcodec.errors import DDPMCodecError
from ddpmcodec.pipelines.defaults import FAST_BATCH_CPU, FAST_BATCH_CUDA

PRECISIONS = ("fp32", "tf32", "bf16", "fp64", "exact")
# how each precision is recorded in results.json ("model_dtype", as the core writes it);
# exact: the codecs' integer network (ddpmcodec.core.exact), its spec's version
MODEL_DTYPE_NAMES = {"fp32": "float32", "tf32": "tf32", "bf16": "bfloat16", "fp64": "float64",
                     "exact": "exact-v1"}
TERM_NAMES = ("vb", "xstart_mse", "eps_mse")


def default_batch(device) -> int:
    """Pairs per network call when none is given: large on a GPU; 16 on a CPU, where the
    embedded model's throughput measured flat from 8 to 32 and lower at 64."""
    return FAST_BATCH_CUDA if torch.device(device).type == "cuda" else FAST_BATCH_CPU


@contextlib.contextmanager
def precision_context(device_type: str, precision: str):
    """Numerics of the network call: TF32 on/off on CUDA, bf16 autocast.

    ``fp32`` switches TF32 *off* for cuDNN convolutions and cuBLAS matmuls (PyTorch's own
    default leaves cuDNN TF32 on, so a "float32" network on an Ampere+ GPU is TF32 unless
    told otherwise); ``tf32`` switches both on. The previous settings are restored.
    Autocast runs with ``cache_enabled=False`` so that it can be captured in a CUDA graph.
    """
    if precision not in PRECISIONS:
        raise DDPMCodecError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    with contextlib.ExitStack() as stack:
        if device_type == "cuda":
            stack.enter_context(_tf32(precision == "tf32"))
        if precision == "bf16":
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16,
                                               cache_enabled=False))
        yield


@contextlib.contextmanager
def _tf32(enabled: bool):
    # torch >= 2.9 has fp32_precision; mixing it with the legacy allow_tf32 flags raises,
    # so use the new API where it exists and restore exactly what was there
    matmul = torch.backends.cuda.matmul
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and conv is not None and hasattr(conv, "fp32_precision"):
        saved = (matmul.fp32_precision, conv.fp32_precision)
        matmul.fp32_precision = conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved
    else:  # pragma: no cover - older torch
        saved = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class Network:
    """A denoiser evaluated in chunks of at most ``batch`` pairs.

    ``forward(x, t)`` maps x [n,C,H,W] (``in_dtype``) and original timestep indices long
    [n] to the network output. With ``fixed_shape`` every call is padded to exactly
    ``batch`` rows (what torch.compile and CUDA graphs need); with ``cuda_graph`` the
    forward is captured once on the first call and replayed.
    """

    def __init__(self, forward: Callable, batch: int, in_dtype=torch.float32,
                 device="cpu", precision: str = "fp32", fixed_shape: bool = False,
                 cuda_graph: bool = False, channels_last: bool = False, label: str = ""):
        if batch < 1:
            raise DDPMCodecError(f"the batch must hold at least one pair, got {batch}")
        self.forward, self.batch, self.in_dtype = forward, int(batch), in_dtype
        self.device = torch.device(device)
        self.precision = precision
        self.fixed_shape = fixed_shape or cuda_graph
        self.cuda_graph = cuda_graph
        self.channels_last = channels_last
        self.label = label
        self._graph = None

    def _prepare(self, x):
        x = x.to(self.in_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _run(self, x, t):
        with torch.no_grad(), precision_context(self.device.type, self.precision):
            out = self.forward(x, t)
        return out.sample if hasattr(out, "sample") else out

    def _capture(self, shape):
        """Warm up on a side stream, then capture one forward into a CUDA graph."""
        dev = self.device
        self._static_x = self._prepare(torch.zeros(self.batch, *shape, device=dev))
        self._static_t = torch.zeros(self.batch, dtype=torch.long, device=dev)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._run(self._static_x, self._static_t)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._static_out = self._run(self._static_x, self._static_t)
        self._graph = graph

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Network output for n <= batch pairs (x_t float64 on the device, t long [n])."""
        n = x_t.shape[0]
        if n > self.batch:
            raise ValueError(f"{n} pairs exceed the network batch {self.batch}")
        x = x_t
        if self.fixed_shape and n < self.batch:  # pad with copies of the last pair
            x = torch.cat([x, x[-1:].expand(self.batch - n, *x.shape[1:])])
            t = torch.cat([t, t[-1:].expand(self.batch - n)])
        x = self._prepare(x)
        if self.cuda_graph:
            if self._graph is None:
                self._capture(tuple(x.shape[1:]))
            self._static_x.copy_(x)
            self._static_t.copy_(t)
            self._graph.replay()
            out = self._static_out.clone()  # the next replay overwrites the static output
        else:
            out = self._run(x, t)
        return out[:n]

    def describe(self) -> dict:
        return {"label": self.label, "batch": self.batch, "precision": self.precision,
                "fixed_shape": self.fixed_shape, "cuda_graph": self.cuda_graph,
                "channels_last": self.channels_last, "device": str(self.device)}


def build_network(unet: torch.nn.Module, device, precision: str = "fp32",
                  batch: int | None = None, compile: bool = False, cuda_graph: bool = False,
                  channels_last: bool | None = None) -> Network:
    """A :class:`Network` around a diffusers UNet2DModel (or any module called as
    ``unet(x, t).sample``).

    The module itself is left untouched: a copy is made when the dtype (``fp64``) or the
    memory layout changes. ``channels_last`` defaults to on for CUDA (faster convolutions
    with tensor cores), off on the CPU (measured no faster there).
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise DDPMCodecError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "tf32" and device.type != "cuda":
        raise DDPMCodecError("--precision tf32 needs a CUDA device")
    if cuda_graph and device.type != "cuda":
        raise DDPMCodecError("--cuda-graphs needs a CUDA device")
    if precision == "exact":
        return _exact_network(unet, device, batch, compile or cuda_graph)
    if channels_last is None:
        channels_last = device.type == "cuda"
    batch = batch or default_batch(device)
    net = unet
    if precision == "fp64" or channels_last:
        net = copy.deepcopy(unet)
        if precision == "fp64":
            net = net.double()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
    net = net.to(device).eval()

    def forward(x, t):
        return net(x, t).sample

    if compile:
        forward = torch.compile(forward, dynamic=False)
    in_dtype = torch.float64 if precision == "fp64" else torch.float32
    label = precision + ("+compile" if compile else "") + ("+cudagraph" if cuda_graph else "")
    return Network(forward, batch, in_dtype, device, precision, fixed_shape=compile,
                   cuda_graph=cuda_graph, channels_last=channels_last, label=label)


def _exact_network(unet, device: torch.device, batch: int | None, compiled: bool) -> Network:
    """The exact (integer) network of ``unet`` as a :class:`Network`: the numbers both
    codecs code with, so that the bound measures their rate cost."""
    if compiled:
        raise DDPMCodecError("--precision exact runs eagerly: no --compile or --cuda-graphs")
    from ddpmcodec.core.exact.unet import ExactUNet, plan_of_unet
    net = ExactUNet(plan_of_unet(unet), device)
    return Network(net, batch or default_batch(device), torch.float64, device, "exact",
                   label="exact")


def _diffusion_on(diffusion: Diffusion, device: torch.device) -> Diffusion:
    """The same Diffusion with every array moved (not recomputed) to ``device``, so the
    schedule is bitwise the host's."""
    if device.type == "cpu":
        return diffusion
    moved = copy.copy(diffusion)
    for name, value in vars(diffusion).items():
        if isinstance(value, torch.Tensor):
            setattr(moved, name, value.to(device))
    return moved


def group_size(batch: int, pairs_per_image: int, num_images: int, padded: bool,
               max_pairs: int | None = None) -> int:
    """Images per group (one results shard) for the engine.

    Eager networks need no padding: the smallest group that fills one call. Fixed-shape
    networks pad the last chunk of every group, so pick, among groups of up to
    ``max_pairs`` pairs (default 64 calls), the one that wastes the smallest fraction.
    """
    num_images = max(1, num_images)
    smallest = max(1, min(num_images, math.ceil(batch / pairs_per_image)))
    if not padded:
        return smallest
    max_pairs = max_pairs or 64 * batch
    best, best_waste = smallest, 1.0
    for g in range(smallest, max(smallest, min(num_images, max_pairs // pairs_per_image)) + 1):
        pairs = g * pairs_per_image
        waste = (-pairs % batch) / (pairs + (-pairs % batch))
        if waste < best_waste - 1e-12:
            best, best_waste = g, waste
        if waste == 0.0:
            break
    return best


class Engine:
    """Bound terms of arbitrary (image, chain step) pairs, in fixed-shape network calls.

    ``network`` evaluates every pair unless ``fp32_network`` is given, which then takes the
    pairs whose original timestep index is below ``fp32_timesteps``.
    """

    def __init__(self, network: Network, diffusion: Diffusion, seed: int = 0,
                 cdf: str = "exact", fp32_network: Network | None = None,
                 fp32_timesteps: int = 0):
        self.network = network
        self.device = network.device
        self.diffusion = diffusion
        self._diff = _diffusion_on(diffusion, self.device)
        self.seed = int(seed)
        self.cdf = cdf
        self.fp32_network = fp32_network if fp32_timesteps > 0 else None
        self.fp32_timesteps = int(fp32_timesteps) if self.fp32_network is not None else 0

    # -- construction -------------------------------------------------------------------
    @classmethod
    def for_model(cls, model, diffusion: Diffusion | None = None, seed: int = 0,
                  batch: int | None = None, precision: str = "fp32", compile: bool = False,
                  cuda_graph: bool = False, fp32_timesteps: int = 0,
                  channels_last: bool | None = None, cdf: str = "exact") -> "Engine":
        """An engine over a :class:`~ddpmcodec.io.models.LoadedModel` on its device."""
        diffusion = diffusion if diffusion is not None else model.diffusion
        if fp32_timesteps < 0:
            raise DDPMCodecError(f"--fp32-timesteps must be >= 0, got {fp32_timesteps}")
        net = build_network(model.unet, model.device, precision, batch, compile, cuda_graph,
                            channels_last)
        fp32_net = None
        if fp32_timesteps > 0 and precision in ("tf32", "bf16"):
            fp32_net = build_network(model.unet, model.device, "fp32", net.batch, compile,
                                     cuda_graph, channels_last)
        return cls(net, diffusion, seed, cdf, fp32_net, fp32_timesteps)

    @classmethod
    def for_denoiser(cls, denoiser: Callable, diffusion: Diffusion, seed: int = 0,
                     batch: int = 64, model_dtype=torch.float32, device="cpu",
                     cdf: str = "exact") -> "Engine":
        """An engine over any denoiser callable (x_t, t) -> output, e.g. an analytic
        oracle (use ``model_dtype=torch.float64`` there)."""
        precision = "fp64" if model_dtype == torch.float64 else "fp32"
        net = Network(denoiser, batch, model_dtype, device, precision, label="denoiser")
        return cls(net, diffusion, seed, cdf)

    def describe(self) -> dict:
        """JSON-able account of how the network is evaluated (for results' run info)."""
        out = {"network": self.network.describe()}
        if self.fp32_network is not None:
            out.update(fp32_network=self.fp32_network.describe(),
                       fp32_timesteps=self.fp32_timesteps)
        return out

    # -- computation --------------------------------------------------------------------
    def _chunk(self, net: Network, x0, image_ids, k) -> dict:
        """step_terms for one chunk, with the noise made on the device."""
        d = self._diff
        t = d.timesteps[k]
        noise = counter_normal(self.seed, image_ids, t, tuple(x0.shape[1:]), device=x0.device)
        x_t = d.q_sample(x0, k, noise)
        model_out = net(x_t, t)
        terms = vb_terms_bpd(d, x0, x_t, k, model_out, cdf=self.cdf)
        return {"vb": terms["vb"],
                "xstart_mse": mean_flat((terms["pred_x0"] - x0) ** 2),
                "eps_mse": mean_flat((terms["eps"] - noise) ** 2)}

    def pair_terms(self, x0: torch.Tensor, image_ids, pair_image, pair_k,
                   progress: Callable[[int], None] | None = None) -> dict:
        """Terms of n pairs: pair j is image ``pair_image[j]`` (a row of x0) at chain step
        ``pair_k[j]``.

        x0: float64 [G,C,H,W] in [-1, 1]; image_ids: long [G] (global ids: they pick the
        noise); pair_image, pair_k: long [n]. Returns float64 CPU tensors [n]: vb
        (bits/dim; the decoder term where k == 0), xstart_mse, eps_mse. ``progress`` is
        called with the number of pairs after every network call.
        """
        dev = self.device
        x0 = x0.to(dev, torch.float64)
        image_ids = torch.as_tensor(image_ids, dtype=torch.long).to(dev)
        pair_image = torch.as_tensor(pair_image, dtype=torch.long).to(dev)
        pair_k = torch.as_tensor(pair_k, dtype=torch.long).to(dev)
        n = len(pair_k)
        if n and (int(pair_k.min()) < 0 or int(pair_k.max()) >= self.diffusion.num_steps):
            raise ValueError(f"chain steps must lie in 0..{self.diffusion.num_steps - 1}")
        out = {name: torch.empty(n, dtype=torch.float64, device=dev) for name in TERM_NAMES}
        routes = [(self.network, torch.arange(n, device=dev))]
        if self.fp32_network is not None:
            low = self._diff.timesteps[pair_k] < self.fp32_timesteps
            routes = [(self.fp32_network, low.nonzero().flatten()),
                      (self.network, (~low).nonzero().flatten())]
        for net, idx in routes:
            for start in range(0, len(idx), net.batch):
                sel = idx[start:start + net.batch]
                rows = pair_image[sel]
                terms = self._chunk(net, x0[rows], image_ids[rows], pair_k[sel])
                for name in TERM_NAMES:
                    out[name][sel] = terms[name]
                if progress is not None:
                    progress(len(sel))
        return {name: v.cpu() for name, v in out.items()}

    def bound(self, x0: torch.Tensor, image_ids, progress: Callable[[int], None] | None = None) -> dict:
        """The full bound of a group of images: the arrays of
        :func:`~ddpmcodec.core.likelihood.bound_plain_loop` (vb, xstart_mse, eps_mse [B,K],
        prior [B], total [B]), from B*K pairs in chunks of ``batch``."""
        x0 = torch.as_tensor(x0).to(torch.float64)
        b, K = x0.shape[0], self.diffusion.num_steps
        pair_image = torch.arange(b).repeat_interleave(K)
        pair_k = torch.arange(K).repeat(b)
        terms = self.pair_terms(x0, image_ids, pair_image, pair_k, progress)
        out = {name: terms[name].reshape(b, K) for name in TERM_NAMES}
        out["prior"] = prior_bpd(self.diffusion, x0.cpu()).cpu()
        out["total"] = out["prior"] + out["vb"].sum(dim=1)
        return out

    @property
    def padded(self) -> bool:
        return self.network.fixed_shape or (self.fp32_network is not None
                                            and self.fp32_network.fixed_shape)

    @property
    def batch(self) -> int:
        return self.network.batch
