"""The exact network evaluated in float64 carriers with torch (CPU or CUDA).

Every tensor holds integers (activations at 2^-FRAC_BITS); every operation is a sum of
integer products below 2^53, a rounding shift by a power of two, a table lookup, or a
correctly rounded IEEE operation on exactly known operands, each as its own kernel. So
the output is a function of the integer input alone, whatever the device, instruction
set, thread count, batch size or convolution library. ``tests/exact_oracle.py`` computes
the same integers in numpy int64.
"""
from __future__ import annotations

import functools
from decimal import Decimal, localcontext

import numpy as np
import torch
import torch.nn.functional as F

from ddpmcodec.core.exact import spec
from ddpmcodec.core.exact.functions import decimal_sin_cos
from ddpmcodec.core.exact.quantize import IntLinear, IntNorm, Plan
from ddpmcodec.core.exact.tables import at_every_step, silu_table, softmax_exp_table

_F = spec.FRAC_BITS
ROW_BLOCK = 4096                # output rows per block of a convolution (speed only)
CPU_BATCH = 8                   # images per evaluation at most on a CPU (speed only)


@functools.lru_cache(maxsize=4096)
def time_features(channels: int, shift: int, flip: bool, t: int) -> tuple:
    """The sinusoidal embedding of timestep index t as integers at 2^-F: diffusers'
    ``get_timestep_embedding`` (max period 10000, sin then cos unless ``flip``),
    computed in 40-digit decimal arithmetic and rounded once."""
    half = channels // 2
    with localcontext() as ctx:
        ctx.prec = 50
        ln = Decimal(10000).ln()
        sins, coss = [], []
        for i in range(half):
            freq = (-ln * i / (half - shift)).exp()
            s, c = decimal_sin_cos(Decimal(int(t)) * freq)
            sins.append(int((s * (1 << _F)).to_integral_value()))
            coss.append(int((c * (1 << _F)).to_integral_value()))
    emb = coss + sins if flip else sins + coss
    if channels % 2:
        emb.append(0)
    return tuple(emb)


class ExactUNet:
    """The plan's layers as float64 tensors on ``device``; call with integer inputs."""

    def __init__(self, plan: Plan, device="cpu"):
        self.plan = plan
        self.device = torch.device(device)
        self._silu = self._table(silu_table())
        self._exp = self._table(softmax_exp_table())
        self._silu_bound = float(self._silu.abs().max())  # largest |silu| the table gives
        self._layers = {}
        self._temb_cache = {}
        # images per evaluation at most (None: all at once): results do not depend on it,
        # so a decoder may bound its memory however it likes. On a CPU 8 at a time ran
        # 1.17x faster than 16 at once here (0.060 against 0.070 s an image: the smaller
        # activations stay nearer the caches); on a GPU all at once
        self.max_batch: int | None = CPU_BATCH if self.device.type == "cpu" else None

    # -- the integer operations ---------------------------------------------------------
    def _on_device(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(self.device)

    def _table(self, t: np.ndarray) -> torch.Tensor:
        """The table interpolated at every 2^-F (:func:`at_every_step`): a lookup is then
        one gather instead of an interpolation of two, the same integers. Held in float32
        where every entry is below 2^24 (silu's, 12.6 MB: half the cache misses of
        float64), else in int32 below 2^31 (the exponential's, 10.5 MB, not 21), else
        float64; each exactly converted back by whoever reads it."""
        t = at_every_step(t)
        largest = np.abs(t).max()
        if largest < 2 ** 24:
            return torch.from_numpy(t.astype(np.float32)).to(self.device)
        if largest < 2 ** 31:
            return torch.from_numpy(t.astype(np.int32)).to(self.device)
        return self._on_device(t)

    def _norm_t(self, norm: IntNorm):
        key = id(norm)
        if key not in self._layers:
            self._layers[key] = self._on_device(norm.beta)  # gamma is read on the host
        return self._layers[key]

    def _conv_t(self, layer: IntLinear):
        """(weights as [kh kw I, O] for NHWC columns, 2^-s [O], bias [O], start [O] or
        None) on the device. start = (b + 1/2) 2^s, an integer below 2^52 where s >= 1:
        a sum begun there ends at sum + (b + 1/2) 2^s, exact (below 2^53), and
        floor(that 2^-s) = floor(sum 2^-s + 1/2) + b, so the rounding takes two passes over
        the output instead of four (the same integers)."""
        key = id(layer)
        if key not in self._layers:
            w = layer.w
            if w.ndim == 4:
                w = w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
            else:
                w = w.T
            # column-major [K, O]: BLAS reads each output's weights contiguously (faster
            # on MKL for these shapes; the sums are exact, so the layout changes no bit)
            w = self._on_device(w).t().contiguous().t()
            shift = -np.frexp(layer.inv_scale)[1] + 1          # inv_scale = 2^-shift
            start = np.ldexp(layer.bias + 0.5, shift)
            ok = shift.min() >= 1 and np.abs(start).max() < 2.0 ** spec.SUM_BITS
            self._layers[key] = (w, self._on_device(layer.inv_scale),
                                 self._on_device(layer.bias),
                                 self._on_device(start) if ok else None)
        return self._layers[key]

    def conv(self, x: torch.Tensor, layer: IntLinear) -> torch.Tensor:
        """Convolution of integer x [B, H, W, I] (channels last), or a linear layer on
        [..., I]: round(sum of products / 2^s) + b, as [B, Ho, Wo, O] or [..., O]."""
        lt, same = self._conv_t(layer), self._same_conv(layer)
        if x.dtype != torch.float64 and not same:
            x = x.to(torch.float64)
        if layer.w.ndim == 2:
            lead = x.shape[:-1]
            x = x.clamp(-layer.act_max, layer.act_max).reshape(-1, x.shape[-1])
            return self._row_blocks(x, lt, [0]).reshape(*lead, -1)
        _, _, kh, kw = layer.w.shape
        if same:
            return self._conv_shared_pad(x, layer.act_max, lt, kh, layer.padding)
        p, s = layer.padding, layer.stride
        x = x.clamp(-layer.act_max, layer.act_max)
        if layer.pad_right:
            x = F.pad(x, (0, 0, 0, 1, 0, 1))
        elif p:
            x = F.pad(x, (0, 0, p, p, p, p))
        B, H, W, C = x.shape
        Ho, Wo = (H - kh) // s + 1, (W - kw) // s + 1
        # im2col, channels last: a plain sum of products, never FFT or Winograd
        cols = torch.cat([x[:, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s, :]
                          for i in range(kh) for j in range(kw)], dim=3)
        out = self._row_blocks(cols.reshape(B * Ho * Wo, -1), lt, [0])
        return out.reshape(B, Ho, Wo, -1)

    @staticmethod
    def _same_conv(layer: IntLinear) -> bool:
        """A stride-1 k x k convolution padded by (k - 1) / 2 on every side."""
        if layer.w.ndim != 4:
            return False
        _, _, kh, kw = layer.w.shape
        return (layer.stride == 1 and kh == kw == 2 * layer.padding + 1
                and not layer.pad_right)

    def _conv_shared_pad(self, x, act_max, lt: tuple, k: int, p: int) -> torch.Tensor:
        """A stride-1 k x k convolution with padding p = (k - 1) / 2 of x [B, H, W, C], on
        the pixels as rows of one matrix, so each tap is one product with no column
        matrix. p zero rows above each image and p zero columns left of each row serve
        also as the bottom padding of the image before and the right padding of the row
        before: the grid is (H + p) x (W + p), not (H + 2p) x (W + 2p), and fewer garbage
        rows are computed (for the embedded model 10% fewer products in all: 1.68 G
        multiply-adds an image, not 1.86). Output (i, j) of image b is row
        (b (H + p) + i) (W + p) + j, and tap (di, dj) reads the row di (W + p) + dj
        further on. x is clamped to +-act_max as it is written into the rows (one pass)."""
        B, H, W, C = x.shape
        Hp, Wp = H + p, W + p
        extra = (k - 1) * Wp + k - 1
        rows = torch.empty(B * Hp * Wp + extra, C, dtype=torch.float64, device=x.device)
        grid = rows[:B * Hp * Wp].view(B, Hp, Wp, C)
        if p:  # only the padding is zeroed: the rest is written once, below
            grid[:, :p].zero_()
            grid[:, p:, :p].zero_()
            rows[B * Hp * Wp:].zero_()
        if x.dtype == torch.float32 and act_max >= self._silu_bound:
            grid[:, p:, p:].copy_(x)  # silu's values: within +-act_max, exact in float64
        else:
            torch.clamp(x.to(torch.float64), -act_max, act_max, out=grid[:, p:, p:])
        offsets = [i * Wp + j for i in range(k) for j in range(k)]
        acc = self._row_blocks(rows, lt, offsets, B * Hp * Wp)
        return acc.reshape(B, Hp, Wp, -1)[:, :H, :W]

    @staticmethod
    def _row_blocks(rows: torch.Tensor, lt: tuple, offsets: list,
                    R: int | None = None) -> torch.Tensor:
        """round(sum over taps k of rows[off_k + r] . w_k / 2^s) + b for r < R, as [R, O]:
        ``lt`` = (w, 2^-s, b, start) of :meth:`_conv_t`, w one [C, O] block per offset.
        Done ROW_BLOCK output rows at a time, every tap's product added in place and
        rounded while the block is in cache: BLAS runs the products of a 32x32 batch
        faster in blocks than on all rows at once, and an exact sum is the same in any
        order, so the blocking changes no bit."""
        w, inv, b, start = lt
        C = rows.shape[1]
        R = rows.shape[0] if R is None else R
        out = rows.new_empty(R, w.shape[1])
        taps = [w[k * C:(k + 1) * C] for k in range(len(offsets))]
        for a in range(0, R, ROW_BLOCK):
            n = min(ROW_BLOCK, R - a)
            o = out[a:a + n]
            first = rows[a + offsets[0]:a + offsets[0] + n]
            if start is None:
                torch.mm(first, taps[0], out=o)
            else:
                torch.addmm(start, first, taps[0], out=o)
            for off, tap in zip(offsets[1:], taps[1:]):
                o.addmm_(rows[a + off:a + off + n], tap)
            if start is None:
                o.mul_(inv).add_(0.5).floor_().add_(b)
            else:
                o.mul_(inv).floor_()
        return out

    def group_norm(self, x: torch.Tensor, norm: IntNorm) -> torch.Tensor:
        """GroupNorm of integer x [B, H, W, C]: integer mean (rounded), the sum of squared
        deviations rounded once, then correctly rounded IEEE operations and a floor."""
        beta = self._norm_t(norm)
        lo, hi = torch.aminmax(x)
        m = max(-float(lo), float(hi))
        if m > spec.ACT_MAX:  # clamped only where something lies beyond (rare): a read, not a copy
            x, m = x.clamp(-spec.ACT_MAX, spec.ACT_MAX), spec.ACT_MAX
        B, C = x.shape[0], x.shape[-1]
        G = norm.groups
        xg = x.reshape(B, -1, G, C // G)
        N = xg.shape[1] * xg.shape[3]
        # the [B, G] statistics in numpy: the same IEEE operations as torch's, without a
        # kernel launch each (a dozen tiny ones took a fifth of a group norm's time)
        num = 2.0 * _host(_group_sum(xg)) + N               # mean = floor((2 S + N) / 2N)
        mu = np.floor(num / (2 * N))
        r = num - mu * (2 * N)
        mu = mu - (r < 0) + (r >= 2 * N)
        # mu per channel, [B, 1, C]: a broadcast along whole rows of channels runs
        # vectorized, one along groups of C/G (often 2) does not (2x slower here)
        mu_c = self._on_device(np.repeat(mu, C // G, axis=1))[:, None, :]
        d = (x.reshape(B, -1, C) - mu_c).view(xg.shape)
        var = _host(self._sum_squares(d, N, m + float(np.abs(mu).max()))) / N
        rstd = 1.0 / np.sqrt(var + norm.eps)
        factor = rstd[:, :, None] * norm.gamma.reshape(1, G, -1)  # [B, G, C/G]
        y = d.mul_(self._on_device(factor).view(B, 1, G, -1)).add_(beta.view(1, 1, G, -1))
        return y.add_(0.5).floor_().reshape(x.shape)

    @staticmethod
    def _sum_squares(d: torch.Tensor, N: int, bound: float) -> torch.Tensor:
        """sum of d^2 [B, HW, G, C/G] over dims (1, 3), correctly rounded to float64
        (exact below 2^53); ``bound`` >= max |d|. Small deviations sum directly; larger
        ones as d = hi 2^S + lo, where hi^2 2^2S + 2 hi lo 2^S is exact and adding lo^2
        rounds once. Both give the exact sum wherever the direct one is exact, so a
        looser bound changes no bit."""
        if bound * bound * N < 2.0 ** 53:
            return _group_sum(d * d)
        S = spec.GROUP_SPLIT_BITS
        dh = torch.floor(d * 2.0 ** -S)
        dl = d - dh * 2.0 ** S
        v_hi = _group_sum(dh * dh)
        v_mid = _group_sum(dh * dl)
        v_lo = _group_sum(dl * dl)
        return (v_hi * 2.0 ** (2 * S) + v_mid * 2.0 ** (S + 1)) + v_lo

    @staticmethod
    def _lookup(table: torch.Tensor, u: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """The table's linear interpolation (every 2^-TABLE_BITS) at integers u + offset >= 0
        (at 2^-F, below 2^31): T[i] + round((T[i+1] - T[i]) f / 2^D), precomputed for
        every u; in the table's dtype (silu's float32: exact integers below 2^24). The
        index in int32: half the bytes of int64 to write and to read."""
        i = u.to(torch.int32)
        if offset:
            i.add_(offset)
        return table.index_select(0, i.reshape(-1)).view(u.shape)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        """silu of integer x by table. Inside the table (nearly always) the values come
        back as float32, which a "same" convolution reads as it writes its rows (one
        conversion pass fewer); every other reader converts them to float64 first."""
        L = spec.SILU_RANGE << _F
        lo, hi = torch.aminmax(x)
        if -float(lo) <= L and float(hi) <= L:
            return self._lookup(self._silu, x, L)
        y = self._lookup(self._silu, x.clamp(-L, L), L).to(x.dtype)
        return torch.where(x > L, x, y)

    def attention(self, x: torch.Tensor, a: dict) -> torch.Tensor:
        B, H, W, C = x.shape
        T, heads = H * W, a["heads"]
        h = self.group_norm(x, a["norm"]).reshape(B, T, C)
        split = lambda y: y.reshape(B, T, heads, C // heads).transpose(1, 2)
        q = split(self.conv(h, a["q"]).clamp_(-spec.QK_MAX, spec.QK_MAX))
        k = split(self.conv(h, a["k"]).clamp_(-spec.QK_MAX, spec.QK_MAX))
        v_max = spec.value_max(T, spec.PROB_BITS + 1)
        v = split(self.conv(h, a["v"]).clamp_(-v_max, v_max))
        s = (q @ k.transpose(-1, -2)).mul_(2.0 ** -_F).add_(0.5).floor_()   # [B, h, T, T]
        gap = (s.amax(-1, keepdim=True) - s).clamp_(max=float(spec.SOFTMAX_EXP_RANGE << _F))
        e = self._lookup(self._exp, gap).to(gap.dtype)
        z = e.sum(-1, keepdim=True)
        p = e.mul_(2.0 ** spec.PROB_BITS).div_(z).add_(0.5).floor_()
        o = (p @ v).mul_(2.0 ** -spec.PROB_BITS).add_(0.5).floor_()          # [B, h, T, d]
        o = self.conv(o.transpose(1, 2).reshape(B, T, C), a["out"])
        return o.reshape(B, H, W, C) + x

    def resnet(self, x: torch.Tensor, r: dict, temb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.silu(self.group_norm(x, r["norm1"])), r["conv1"])
        h = h + self.conv(temb_act, r["temb"])[:, None, None, :]
        h = self.conv(self.silu(self.group_norm(h, r["norm2"])), r["conv2"])
        if r["shortcut"] is not None:
            x = self.conv(x, r["shortcut"])
        return x + h

    # -- the network ----------------------------------------------------------------------
    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """silu(temb) as integers [B, C_t] (what every resnet's projection reads)."""
        tp = self.plan.time
        rows = []
        for ti in t.tolist():
            if ti not in self._temb_cache:
                f = torch.tensor([time_features(tp["channels"], tp["shift"], tp["flip"], int(ti))],
                                 dtype=torch.float64, device=self.device)
                e = self.conv(self.silu(self.conv(f, tp["l1"])), tp["l2"])
                self._temb_cache[ti] = self.silu(e)[0].to(torch.float64)
            rows.append(self._temb_cache[ti])
        return torch.stack(rows)

    def forward_int(self, x: torch.Tensor, t) -> torch.Tensor:
        """The network on integer input x (float64 [B, C, H, W] at 2^-INPUT_FRAC_BITS)
        at timestep indices t (long [B]): integer output at 2^-OUTPUT_FRAC_BITS."""
        plan = self.plan
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).expand(x.shape[0])
        temb = self.time_embedding(t.cpu())
        h = self.conv(x.permute(0, 2, 3, 1), plan.conv_in)
        skips = [h]
        for blk in plan.down:
            for j, r in enumerate(blk["resnets"]):
                h = self.resnet(h, r, temb)
                if blk["attentions"]:
                    h = self.attention(h, blk["attentions"][j])
                skips.append(h)
            if blk["sampler"] is not None:
                h = self.conv(h, blk["sampler"])
                skips.append(h)
        if plan.mid is not None:
            h = self.resnet(h, plan.mid["resnets"][0], temb)
            for a, r in zip(plan.mid["attentions"], plan.mid["resnets"][1:]):
                h = self.resnet(self.attention(h, a), r, temb)
        for blk in plan.up:
            for j, r in enumerate(blk["resnets"]):
                h = self.resnet(torch.cat([h, skips.pop()], 3), r, temb)
                if blk["attentions"]:
                    h = self.attention(h, blk["attentions"][j])
            if blk["sampler"] is not None:
                h = h.repeat_interleave(2, 1).repeat_interleave(2, 2)
                h = self.conv(h, blk["sampler"])
        h = self.silu(self.group_norm(h, plan.norm_out))
        return self.conv(h, plan.conv_out).permute(0, 3, 1, 2).contiguous()

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        """Float input (any dtype), float64 output: x rounded to 2^-INPUT_FRAC_BITS
        (half to even, exact in float64), the output's integers times 2^-OUTPUT_FRAC_BITS.
        ``t``: int64 [N] timesteps (or one). Evaluated ``max_batch`` images at a time."""
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1).expand(x.shape[0])
        step = self.max_batch or x.shape[0]
        outs = [self.forward_int(quantize_input(x[a:a + step].to(self.device)), t[a:a + step])
                for a in range(0, x.shape[0], max(step, 1))]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out * 2.0 ** -spec.OUTPUT_FRAC_BITS


def _host(t: torch.Tensor) -> np.ndarray:
    """A small float64 tensor as a numpy array (a view on the CPU)."""
    return t.cpu().numpy()


def _group_sum(t: torch.Tensor) -> torch.Tensor:
    """[B, HW, G, C/G] summed over dims 1 and 3, as [B, G]: over the pixels first (a
    reduction along contiguous rows, several times faster than both dims at once); the
    sums are of integers below 2^53, so the order changes no bit."""
    return t.sum(1).sum(-1)


def quantize_input(x: torch.Tensor) -> torch.Tensor:
    """The integers the exact network reads for latents x (float64)."""
    return torch.round(x.to(torch.float64) * 2.0 ** spec.INPUT_FRAC_BITS)


def plan_of_model(model) -> Plan:
    """The integer plan of a LoadedModel's UNet (cached on the model object)."""
    plan = getattr(model, "_exact_plan", None)
    if plan is None:
        from ddpmcodec.core.exact.quantize import build_plan
        # from the model's config and weights, not its module: a lazy model's diffusers
        # module is never built for the exact network
        plan = model._exact_plan = build_plan(model.unet_config(), model.weights())
    return plan


def plan_of_unet(unet) -> Plan:
    """The integer plan of a diffusers UNet2DModel: its config and float32 weights."""
    from ddpmcodec.core.exact.quantize import build_plan
    cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    sd = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in unet.state_dict().items()}
    return build_plan(cfg, sd)


