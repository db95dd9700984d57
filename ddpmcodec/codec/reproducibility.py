"""Where float32 results are reproducible, and the settings that make them so.

A float32 file decodes only where the encoder's numbers can be remade: the same device
kind (:func:`device_kind`: the CPU's instruction set, or the GPU), the encoder's CPU
thread count (:func:`coding_threads`) and :func:`deterministic` torch settings (no TF32,
deterministic algorithms, cuDNN without benchmarking). The header records the first two;
:func:`decode_device` turns them into the device to decode on, or a clear refusal, and
:func:`check_threads` refuses a thread count above this machine's CPUs (a header may
claim up to 256).
"""
from __future__ import annotations

import contextlib
import os

from ddpmcodec.codec import container
from ddpmcodec.codec.container import Header
from ddpmcodec.errors import DDPMCodecError

# cuBLAS is deterministic only with a fixed workspace; it reads this when CUDA starts.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# -- what every codec checks and shares --------------------------------------------------
def device_kind(device) -> str:
    """Where results are reproducible: "cpu:<ISA>", or "cuda:<GPU name>;cpu:<ISA>" (the
    float64 coding math always runs on the CPU, so its instruction set counts too)."""
    import torch
    device = torch.device(device)
    try:
        isa = f"cpu:{torch.backends.cpu.get_cpu_capability()}"
    except AttributeError:  # pragma: no cover - old torch
        isa = "cpu:unknown"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"cuda:{name[:container.MAX_DEVICE_CHARS - 24]};{isa}"
    if device.type == "cpu":
        return isa
    raise DDPMCodecError(f"codecs run on cpu or cuda devices, not {device.type}")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - no affinity on this platform
        return max(1, os.cpu_count() or 1)


def coding_threads() -> int:
    """CPU threads to record in a header: float results of the CPU math (and of a CPU
    network) depend on how torch splits work between threads. Never more than this
    machine's CPUs, so that a file always decodes where it was made
    (:func:`check_threads`)."""
    import torch
    return min(torch.get_num_threads(), available_cpus(), container.MAX_THREADS)


def check_threads(num_threads: int) -> None:
    """DDPMCodecError unless this machine can run a file's ``num_threads`` CPU threads.

    A float32 file decodes only with the encoder's thread count (the work's split
    decides the rounding), so a decoder can neither use fewer threads (the checks would
    fail after all the work) nor start more threads than it has CPUs (a header may ask
    for up to 256): a file made with more threads than this machine has is refused, and
    says where it can be decoded. The encoder never records more than its CPUs."""
    cpus = available_cpus()
    if num_threads > cpus:
        raise DDPMCodecError(
            f"this file was encoded with {num_threads} CPU threads and decodes only with as "
            f"many (float results depend on how the work is split), but this machine has "
            f"{cpus} CPU(s); decode it on a machine with at least {num_threads} CPUs")


def decode_device(header: Header, requested=None):
    """The torch device to decode a file on: for an exact file the one ``requested``
    (default the CPU), else the one its header's device kind requires."""
    import torch
    kind = header.device_kind
    if kind in container.EXACT_KINDS:
        return torch.device(requested or "cpu")
    if kind.startswith("cpu"):
        here = device_kind("cpu")
        if kind != here:
            raise DDPMCodecError(
                f"this file was encoded on {kind} and must be decoded on the same kind of "
                f"device (this CPU is {here}): numerical results differ between them")
        return torch.device("cpu")
    if kind.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DDPMCodecError(f"this file was encoded on {kind}; decoding it needs that GPU "
                                 f"(no CUDA device is available)")
        here = [device_kind(f"cuda:{i}") for i in range(torch.cuda.device_count())]
        if kind in here:
            return torch.device(f"cuda:{here.index(kind)}")
        raise DDPMCodecError(f"this file was encoded on {kind}; no such device here "
                             f"({', '.join(here)})")
    raise DDPMCodecError(f"unknown device kind {kind!r} in the header")


@contextlib.contextmanager
def deterministic(device, num_threads: int = 0, exact: bool = False):
    """Torch settings under which the network gives the same bits on every run of the same
    device kind: deterministic algorithms, cuDNN without benchmarking, no TF32, and (on
    ``num_threads`` CPU threads (0: leave as is; more than this machine's CPUs: refused,
    :func:`check_threads`). The previous settings are restored.

    ``exact`` (a file of the exact network, whose numbers no algorithm choice moves):
    torch's deterministic-algorithms switch is left alone, because setting it imports
    torch's compiler (1.6 s of a one-image decode's cold start)."""
    import torch
    check_threads(num_threads)
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.get_num_threads())
    if not exact:
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        if not exact:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved[2:6]
        torch.set_num_threads(saved[6])
