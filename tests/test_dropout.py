"""Inverted dropout: the counter-based mask (bit-exact between the NumPy reference and the kernel,
the same for one seed on every backend), its statistics, scaling, gradients, errors, the layer's
single NumPy generator, and a bit-identical trainer resume."""
from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import checkpoint as ckpt
from gpuconv.data import DeviceLoader
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.layers import Dropout, Flatten, Linear, ReLU, Sequential
from gpuconv.ops import _dispatch, dropout_backward, dropout_forward
from gpuconv.ops import dropout as D
from gpuconv.optim import SGD, OneCycleLR
from gpuconv.trainer import Trainer, TrainingInterrupted
from test_trainer import SigintAt, assert_same_state

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def reference(x, p, key):
    """The NumPy reference's (y, mask) for a host array."""
    y, cache = D._dropout_forward_reference(np.asarray(x), p, np.uint64(key))
    return y, cache.mask


def assert_bits_equal(got, want):
    """Same shape, dtype and bytes (np.array_equal would let -0.0 pass for +0.0)."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.tobytes() == want.tobytes()


# ----------------------------------------------------------------------------- the mask
@DTYPES
@pytest.mark.parametrize("shape", [(0,), (1,), (3,), (257,), (2, 3, 5, 7)])
def test_kernel_matches_the_reference_bit_for_bit(backend, dtype, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::4] *= -1  # negative inputs: a dropped one is -0.0 in both
    dy = rng.standard_normal(shape).astype(dtype)
    for p in (0.1, 0.5, 0.9):
        key = D.draw_key(rng)
        y, cache = dropout_forward(backend.asarray(x), p, key=key)
        want_y, want_mask = reference(x, p, key)
        assert_bits_equal(backend.asnumpy(y), want_y)
        assert_bits_equal(backend.asnumpy(cache.mask), want_mask)
        assert_bits_equal(backend.asnumpy(dropout_backward(backend.asarray(dy), cache)), dy * want_mask)
    if x.size:
        backend.assert_kernels_ran("dropout_forward", "dropout_backward")


@DTYPES
def test_non_contiguous_input_is_masked_in_c_order(backend, dtype):
    base = np.random.default_rng(2).standard_normal((6, 10)).astype(dtype)
    x = backend.asarray(base)[:, ::2].T  # (5, 6), strided and transposed on the device
    y, cache = dropout_forward(x, 0.4, key=12345)
    want_y, want_mask = reference(base[:, ::2].T, 0.4, 12345)
    assert_bits_equal(backend.asnumpy(y), want_y)
    assert_bits_equal(backend.asnumpy(cache.mask), want_mask)
    flat_keep = (D.dropout_hash(12345, 30) >> np.uint64(11)) >= D.keep_threshold(0.4)
    np.testing.assert_array_equal(want_mask.ravel() != 0, flat_keep)  # element i = flat C-order index i


def _key_at(backend, key):
    """The key in a one-element uint64 device array, filled there (as Dropout.write_key does)."""
    key_at = backend.xp.zeros(1, np.uint64)
    key_at.fill(np.uint64(key))
    return key_at


@DTYPES
def test_a_key_read_from_the_device_gives_the_mask_of_the_key_by_value(backend, dtype):
    """key_at (a step replayed as a CUDA graph reads its key there) makes the mask that the same key
    passed by value makes, on the reference and the kernel, forward and backward."""
    rng = np.random.default_rng(5)
    x = backend.asarray(rng.standard_normal((3, 5, 7)).astype(dtype))
    for key in (0, 1, 12345, 2**63, 2**64 - 1, int(D.draw_key(rng))):
        y, cache = dropout_forward(x, 0.4, key=key)
        y_at, cache_at = dropout_forward(x, 0.4, key_at=_key_at(backend, key))
        assert_bits_equal(backend.asnumpy(y_at), backend.asnumpy(y))
        assert_bits_equal(backend.asnumpy(cache_at.mask), backend.asnumpy(cache.mask))
        assert_bits_equal(backend.asnumpy(y_at), reference(backend.asnumpy(x), 0.4, key)[0])
        assert_bits_equal(backend.asnumpy(dropout_backward(x, cache_at)), backend.asnumpy(dropout_backward(x, cache)))
    backend.assert_kernels_ran("dropout_forward")
    y, cache = dropout_forward(x, 0.4, training=False, key_at=_key_at(backend, 3))  # eval: the identity still
    assert y is x and cache.mask is None


def test_the_kernel_reads_key_at_instead_of_the_key_by_value(backend):
    """The kernel itself takes the key from key_at when it is given (the launcher passes a key of 0
    by value then): launched with another key by value, the mask is key_at's."""
    if backend.name == "numpy":
        pytest.skip("the kernel's argument: 'sim' and 'cuda'")
    x = backend.asarray(np.ones(300, np.float32))
    y, mask = backend.xp.empty_like(x), backend.xp.empty_like(x)
    from gpuconv import backend as B, kernels
    for key_by_value, key_at in ((0, 99), (99, 2**64 - 1)):
        kernels.launch_1d("dropout", "dropout_forward", B.kernel_target(x), (x, y, mask),
                          (np.uint64(key_by_value), D.keep_threshold(0.5), np.float32(2), _key_at(backend, key_at)))
        assert_bits_equal(backend.asnumpy(mask), reference(np.ones(300, np.float32), 0.5, key_at)[1])


def test_bad_key_at(backend):
    x = backend.asarray(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="pass key_at .* alone, without rng or key"):
        dropout_forward(x, 0.5, key=1, key_at=_key_at(backend, 1))
    with pytest.raises(ValueError, match="pass key_at .* alone, without rng or key"):
        dropout_forward(x, 0.5, rng=np.random.default_rng(0), key_at=_key_at(backend, 1))
    for bad in (backend.xp.zeros(1, np.int64), backend.xp.zeros(2, np.uint64), backend.xp.zeros((), np.uint64), 7):
        with pytest.raises(ValueError, match="key_at must be a one-element uint64 array on x's device"):
            dropout_forward(x, 0.5, key_at=bad)
    if backend.name == "cupy":  # a host array for a GPU x
        with pytest.raises(ValueError, match="key_at must be a one-element uint64 array on x's device"):
            dropout_forward(x, 0.5, key_at=np.zeros(1, np.uint64))


def test_the_grid_stride_loop_on_the_simulator(launches):
    """More elements than one grid covers (32 blocks per nominal SM): every thread loops."""
    x = np.random.default_rng(3).standard_normal(2**21 + 3).astype(np.float32)
    with gpuconv.default_device("sim"):
        y, cache = dropout_forward(x, 0.3, key=2**64 - 1)
    assert launches[-1].grid[0] * 256 < x.size
    want_y, want_mask = reference(x, 0.3, 2**64 - 1)
    assert_bits_equal(y, want_y)
    assert_bits_equal(cache.mask, want_mask)


def test_sim_runs_the_kernels(launches):
    x = np.ones((4, 5), np.float32)
    with gpuconv.default_device("sim"):
        y, cache = dropout_forward(x, 0.5, key=7)
        dropout_backward(y, cache)
    assert launches.names == ["dropout_forward", "dropout_backward"]
    launches.clear()
    dropout_forward(x, 0.5, key=7)  # default device 'cpu': the NumPy reference
    assert launches.names == []
    for op in ("dropout_forward", "dropout_backward"):
        assert _dispatch.get_launcher(op, "sim") is not None and _dispatch.get_launcher(op, "cuda") is not None


def test_hash_is_splitmix64():
    """``h(key, i)`` is SplitMix64's output i+1 from state ``key``: the published first outputs
    of SplitMix64 seeded with 1234567, computed here with Python ints (no wraparound shortcuts)."""
    def splitmix64(state, count):
        out, m = [], 2**64 - 1
        for _ in range(count):
            state = (state + 0x9E3779B97F4A7C15) & m
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
            out.append(z ^ (z >> 31))
        return out
    assert splitmix64(1234567, 5) == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                                      4593380528125082431, 16408922859458223821]
    for key in (0, 1234567, 2**64 - 1):
        assert D.dropout_hash(key, 5).tolist() == splitmix64(key, 5)


def test_threshold_rule_is_exact():
    """keep iff (h >> 11) >= ceil(p * 2^53), i.e. iff the 53-bit uniform (h >> 11) * 2^-53 >= p:
    the threshold is the least multiple of 2^-53 at or above p, exactly (no rounding)."""
    for p in (1e-30, 2**-60, 0.1, 0.3, 0.5, 1 - 2**-53):
        t = int(D.keep_threshold(p))
        assert Fraction(t - 1, 2**53) < Fraction(p) <= Fraction(t, 2**53), p
    assert int(D.keep_threshold(0.0)) == 0  # p = 0 keeps everything (the op short-cuts it anyway)
    assert D.keep_scale(0.3, np.float32) == np.float32(1 / 0.7)
    assert D.keep_scale(0.3, np.float64) == 1 / 0.7


def _key_whose_first_hash_is(h):
    """The key with ``dropout_hash(key, 1)[0] == h``: SplitMix64's mix is a bijection, undone step by
    step (an xorshift by re-applying it, a multiplication by the inverse modulo 2^64)."""
    m = 2**64 - 1

    def unxorshift(y, s):
        x = y
        for _ in range(64 // s + 1):
            x = y ^ (x >> s)
        return x
    z = unxorshift(h, 31)
    z = unxorshift((z * pow(0x94D049BB133111EB, -1, 2**64)) & m, 27)
    z = unxorshift((z * pow(0xBF58476D1CE4E5B9, -1, 2**64)) & m, 30)
    return (z - 0x9E3779B97F4A7C15) & m


@pytest.mark.parametrize("p", [0.3, 0.5])
def test_an_element_at_the_threshold_is_kept(backend, p):
    """keep iff (h >> 11) >= threshold: an element whose 53 bits equal the threshold is kept (its
    uniform is p rounded up to 2^-53), one below it dropped, whatever the 11 low bits."""
    t = int(D.keep_threshold(p))
    x = backend.asarray(np.ones(3, np.float32))
    for top, kept in ((t, True), (t - 1, False)):
        for low in (0, 2**11 - 1):
            key = _key_whose_first_hash_is((top << 11) | low)
            assert int(D.dropout_hash(key, 1)[0]) >> 11 == top
            mask = backend.asnumpy(dropout_forward(x, p, key=key)[1].mask)
            assert mask[0] == (D.keep_scale(p, np.float32) if kept else 0), (top - t, low)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_rate_and_inverted_scaling(backend, p):
    x = backend.asarray(np.ones((1000, 1000), np.float32))
    y, cache = dropout_forward(x, p, rng=np.random.default_rng(0))
    y = backend.asnumpy(y)
    assert y.dtype == np.float32
    kept = y != 0
    # 10^6 Bernoulli(1 - p) draws: 5 standard deviations is 0.0015 at p = 0.5 (and fails a biased mask)
    n = kept.size
    assert abs(kept.sum() - (1 - p) * n) < 5 * math.sqrt(n * p * (1 - p))
    np.testing.assert_array_equal(y[kept], np.float32(1 / (1 - p)))
    dx = backend.asnumpy(dropout_backward(backend.asarray(np.full((1000, 1000), 2.0, np.float32)), cache))
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_array_equal(dx[kept], np.float32(2) * np.float32(1 / (1 - p)))


def test_hash_statistics():
    """Every hash bit is fair, neighbours are independent, and masks of consecutive keys do not
    correlate (bounds at about 5 standard deviations)."""
    n = 1 << 18
    keys = D.draw_key(np.random.default_rng(5)), D.draw_key(np.random.default_rng(6))
    h = D.dropout_hash(keys[0], n)
    bits = (h[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
    assert np.abs(bits.mean(axis=0) - 0.5).max() < 5 * 0.5 / math.sqrt(n)
    keep = (h >> np.uint64(11)) >= D.keep_threshold(0.5)
    both = np.mean(keep[1:] & keep[:-1])
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)
    other = (D.dropout_hash(keys[1], n) >> np.uint64(11)) >= D.keep_threshold(0.5)
    assert abs(np.mean(keep == other) - 0.5) < 5 * 0.5 / math.sqrt(n)
    # Nearby keys (key, key + 1) still give unrelated masks: the mixer, not the key, spreads bits.
    near = (D.dropout_hash(keys[0] + np.uint64(1), n) >> np.uint64(11)) >= D.keep_threshold(0.5)
    assert abs(np.mean(keep == near) - 0.5) < 5 * 0.5 / math.sqrt(n)


def test_masks_differ_across_keys_and_repeat_for_a_seed(backend):
    x = backend.asarray(np.ones((16, 16), np.float32))
    masks = [backend.asnumpy(dropout_forward(x, 0.5, key=k)[1].mask) for k in (0, 1, 2**63)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])
    a, _ = dropout_forward(x, 0.5, rng=np.random.default_rng(7))
    b, _ = dropout_forward(x, 0.5, rng=np.random.default_rng(7))
    c, _ = dropout_forward(x, 0.5, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(backend.asnumpy(a), backend.asnumpy(b))
    assert not np.array_equal(backend.asnumpy(a), backend.asnumpy(c))
    # The same seed gives the NumPy reference's mask on every backend: one key drawn per forward.
    key = np.random.default_rng(7).integers(0, 2**64, dtype=np.uint64)
    assert_bits_equal(backend.asnumpy(a), reference(np.ones((16, 16), np.float32), 0.5, key)[0])


def test_one_key_gives_one_mask_in_both_dtypes(backend):
    x = np.random.default_rng(4).standard_normal((33, 7))
    _, c64 = dropout_forward(backend.asarray(x), 0.35, key=99)
    _, c32 = dropout_forward(backend.asarray(x.astype(np.float32)), 0.35, key=99)
    np.testing.assert_array_equal(backend.asnumpy(c64.mask) != 0, backend.asnumpy(c32.mask) != 0)


@pytest.mark.parametrize("training, p", [(False, 0.5), (True, 0.0)])
def test_identity_cases_draw_no_key(backend, training, p):
    x = backend.asarray(np.arange(6.0).reshape(2, 3))
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    y, cache = dropout_forward(x, p, training=training, rng=rng)
    assert y is x and cache.mask is None and rng.bit_generator.state == before
    dy = backend.asarray(np.ones((2, 3)))
    assert dropout_backward(dy, cache) is dy
    # an identity forward's backward checks dy's shape as a masking one does: a (3, 2) dy came back
    # as the input gradient of a (2, 3) x
    with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(2, 3\), got \(3, 2\)"):
        dropout_backward(backend.asarray(np.ones((3, 2))), cache)


def test_gradient_float64(backend):
    x = backend.asarray(np.random.default_rng(0).standard_normal((3, 4, 5)))
    dy = backend.asarray(np.random.default_rng(1).standard_normal((3, 4, 5)))
    _, cache = dropout_forward(x, 0.3, rng=np.random.default_rng(3))
    num = numerical_gradient_array(lambda a: dropout_forward(a, 0.3, rng=np.random.default_rng(3))[0], x, dy)
    assert relative_error(dropout_backward(dy, cache), num) < 1e-6


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("p", [1.0, -0.1, 2, "0.5", True])
def test_bad_p(backend, p):
    with pytest.raises(ValueError, match=r"p is the probability of dropping an element and must be in \[0, 1\)"):
        dropout_forward(backend.asarray(np.ones(3, np.float32)), p)


class FakeCupyGenerator:
    """Stands in for cupy.random.Generator (which needs a GPU to build)."""


FakeCupyGenerator.__module__ = "cupy.random._generator_api"


@pytest.mark.parametrize("rng", [np.random.RandomState(0), FakeCupyGenerator(), 42])
def test_rng_must_be_a_numpy_generator(backend, rng):
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator.*pass numpy.random.default_rng\(seed\)"):
        dropout_forward(backend.asarray(np.ones(3, np.float32)), 0.5, rng=rng)


@pytest.mark.parametrize("key", [-1, 2**64, 0.5, True, "3"])
def test_bad_key(backend, key):
    with pytest.raises(ValueError, match=r"key must be an int in \[0, 2\*\*64\)"):
        dropout_forward(backend.asarray(np.ones(3, np.float32)), 0.5, key=key)


def test_other_errors(backend):
    x = backend.asarray(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"x has dtype int64.*astype\(np.float32\)"):
        dropout_forward(backend.asarray(np.ones(3, np.int64)), 0.5)
    with pytest.raises(ValueError, match="pass rng .* or key .*, not both"):
        dropout_forward(x, 0.5, rng=np.random.default_rng(0), key=1)
    with pytest.raises(TypeError, match=r"training must be True or False, got 'False'"):  # it dropped
        dropout_forward(x, 0.5, training="False", key=1)
    _, cache = dropout_forward(x, 0.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"dy must have the forward input's shape \(2, 3\)"):
        dropout_backward(backend.asarray(np.ones((3, 2), np.float32)), cache)
    for dt in (np.float64, ml_dtypes.bfloat16):  # the forward's dtype, also where the mask's compute dtype agrees
        with pytest.raises(TypeError, match=rf"dy has dtype {np.dtype(dt)} but the forward's output had dtype float32"):
            dropout_backward(backend.asarray(np.ones((2, 3), dt)), cache)
    _, identity = dropout_forward(x, 0.5, training=False)
    with pytest.raises(TypeError, match=r"dy has dtype float64 but the forward's output had dtype float32"):
        dropout_backward(backend.asarray(np.ones((2, 3))), identity)


# ----------------------------------------------------------------------------- the layer
def test_layer_draws_one_key_per_training_forward(backend):
    x = backend.asarray(np.ones((8, 9), np.float32))
    layer = Dropout(0.5, seed=11)
    assert isinstance(layer._rng(backend.xp), np.random.Generator) and layer._rng() is layer._rngs["numpy"]
    keys = np.random.default_rng(11).integers(0, 2**64, size=2, dtype=np.uint64)
    for key in keys:
        assert_bits_equal(backend.asnumpy(layer(x)), reference(np.ones((8, 9), np.float32), 0.5, key)[0])
    state = layer._rng().bit_generator.state
    layer.eval()
    assert layer(x) is x and layer._rng().bit_generator.state == state  # eval draws nothing


@pytest.mark.real_cupy("ndarray type (isinstance of a NumPy array is false for a CuPy array)")
def test_a_layer_reading_its_key_from_the_device_makes_the_masks_it_would_draw(backend):
    """key_on_device (a captured step holds the layer): write_key draws the next key from the layer's
    generator and fills the device array the training forward reads, so the masks are those the
    layer draws itself; a forward with no key written (none, or a second use in one step) is
    refused, eval mode is the identity, and a copy draws its keys itself."""
    import copy
    x = backend.asarray(np.ones((8, 9), np.float32))
    eager, held = Dropout(0.5, seed=11), Dropout(0.5, seed=11)
    held.key_on_device()
    for _ in range(3):
        held.write_key(backend.xp)
        assert backend.xp is np or not isinstance(held._key_at, np.ndarray)  # on x's device
        assert_bits_equal(backend.asnumpy(held(x)), backend.asnumpy(eager(x)))
    assert held._rng().bit_generator.state == eager._rng().bit_generator.state
    with pytest.raises(RuntimeError, match="no key was written for this forward: call write_key"):
        held(x)  # the key was used
    state = held._rng().bit_generator.state
    held.eval()
    assert held(x) is x and held._rng().bit_generator.state == state
    held.train()
    twin = copy.deepcopy(held)
    assert not twin._key_on_device and twin._key_at is None
    want = backend.asnumpy(eager(x))
    assert_bits_equal(backend.asnumpy(twin(x)), want)  # drawn by the copy itself
    held.write_key(backend.xp)
    held.key_on_device(False)  # off: the written key is dropped, the forward draws the next one itself
    assert not held._key_written
    assert_bits_equal(backend.asnumpy(held(x)), backend.asnumpy(eager(x)))
    if backend.name != "numpy":
        backend.assert_kernels_ran("dropout_forward")


# ----------------------------------------------------------------------------- training: resume, parity
def _mlp_loader(cls=DeviceLoader):
    data = np.random.default_rng(0)
    images, labels = data.integers(0, 256, (48, 3, 4, 4), dtype=np.uint8), data.integers(0, 10, 48)
    return cls(images, labels, 8, shuffle=True, seed=4)


def _mlp_setup(out_dir):
    """An MLP with dropout (no convolution: every op is bit-exact between 'cpu' and 'sim'), a
    shuffling loader over synthetic images, SGD with a one-cycle schedule."""
    model = Sequential(Flatten(), Linear(48, 32, seed=1), ReLU(), Dropout(0.5, seed=2), Linear(32, 10, seed=3))
    loader = _mlp_loader()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=2 * len(loader))
    return Trainer(model, opt, sched, out_dir=out_dir, log_every=2, progress=False), loader


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_resume_mid_epoch_repeats_the_dropout_masks(tmp_path, device):
    with gpuconv.default_device(device):
        full, loader = _mlp_setup(tmp_path / "full")
        full.fit(loader, 2)

        first, _ = _mlp_setup(tmp_path / "cut")
        killer = _mlp_loader(SigintAt)
        killer.kill_at = (1, 2)  # Ctrl-C in the middle of epoch 2: the checkpoint is mid-run
        with pytest.raises(TrainingInterrupted):
            first.fit(killer, 2)
        saved = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.npz")
        assert int(saved["meta/epoch"]) == 1 and int(saved["meta/epoch_step"]) == 3
        assert "rng/model.3._rngs.numpy" in saved  # the dropout layer's generator, under a stable key

        second, loader2 = _mlp_setup(tmp_path / "cut")
        second.fit(loader2, 2, resume=True)
    assert_same_state(full, second)
    assert second.model[3]._rng().bit_generator.state == full.model[3]._rng().bit_generator.state

    # The control: the same resume without the generator's state ends elsewhere.
    del saved["rng/model.3._rngs.numpy"]
    ckpt.save_checkpoint(tmp_path / "cut" / "checkpoint.npz", saved)
    with gpuconv.default_device(device):
        third, loader3 = _mlp_setup(tmp_path / "cut")
        third.fit(loader3, 2, resume=True)
    assert not np.array_equal(third.model.state_dict()["4.weight"], full.model.state_dict()["4.weight"])


def test_cpu_and_sim_training_are_bit_identical(tmp_path, monkeypatch):
    """The same seed draws the same masks on the host reference and the kernel, so a parity run
    does not diverge: with the model's other ops on their NumPy references on both (the linear
    layers' kernels sum in another order than NumPy's matmul; the loss kernel's exp and log are the
    C library's, an ulp from NumPy's), every weight agrees bit for bit."""
    for op in ("softmax_cross_entropy", "linear_forward", "linear_backward"):
        monkeypatch.delitem(_dispatch._LAUNCHERS, (op, "sim"))
    states = {}
    for device in ("cpu", "sim"):
        with gpuconv.default_device(device):
            trainer, loader = _mlp_setup(tmp_path / device)
            trainer.fit(loader, 2)
            states[device] = trainer.model.state_dict()
    for k in states["cpu"]:
        assert_bits_equal(states["sim"][k], states["cpu"][k])
