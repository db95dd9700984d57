"""splitmix64's finaliser: the one implementation, in its three forms, against the
published sequence of splitmix64 (Vigna's reference generator: x += GAMMA; mix(x))."""
import numpy as np
import torch

from ddpmcodec.core.splitmix import GAMMA, MASK64, mix64, mix64_numpy, mix64_torch, signed64

# the reference generator's first outputs from seed 0 and from seed 1234567
SEED0 = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F)
SEED1234567 = (6457827717110365317, 3203168211198807973)


def test_scalar_form_gives_the_published_sequence():
    assert tuple(mix64((i + 1) * GAMMA) for i in range(3)) == SEED0
    assert tuple(mix64(1234567 + (i + 1) * GAMMA) for i in range(2)) == SEED1234567


def test_numpy_and_torch_forms_equal_the_scalar_form():
    rng = np.random.default_rng(5)
    values = [int(v) for v in rng.integers(0, 1 << 63, 200, dtype=np.uint64)] + [
        0, 1, MASK64, 1 << 63, (1 << 63) - 1, GAMMA]
    z = np.array(values, dtype=np.uint64)
    mix64_numpy(z, np.empty_like(z))
    t = mix64_torch(torch.tensor([signed64(v) for v in values], dtype=torch.int64))
    want = [mix64(v) for v in values]
    assert [int(v) for v in z] == want
    assert [v & MASK64 for v in t.tolist()] == want
