"""Optimizers and schedules: hand-computed steps, PyTorch's formulas, state save/restore, no readbacks."""
from __future__ import annotations

import copy
import io
import math
import pickle

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv.layers import Parameter
from gpuconv.optim import SGD, Adam, AdamW, CosineLR, Muon, OneCycleLR, StepLR

# The kernel targets a fused update runs on: the simulator, and a GPU when one answers (the same
# test bodies: GPUCONV_REQUIRE_GPU=1 fails them where they skip).
KERNEL_DEVICES = ["sim", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")])]


def _param(backend, values, dtype=np.float64):
    return Parameter(backend.asarray(np.array(values, dtype=dtype)), "p")  # a copy: steps are in place


def _quadratic_steps(opt, p, backend, n):
    """Minimize f(p) = |p|^2 / 2 (grad = p) for n steps; return the trajectory on the host."""
    out = []
    for _ in range(n):
        p.grad = p.data.copy()
        opt.step()
        out.append(backend.asnumpy(p.data).copy())
    return out


# ----------------------------------------------------------------------------- SGD
def test_sgd_plain_and_weight_decay(backend):
    p = _param(backend, [1.0, -2.0])
    opt = SGD([p], lr=0.1)
    p.grad = backend.asarray(np.array([0.5, 0.25]))
    opt.step()
    np.testing.assert_allclose(backend.asnumpy(p.data), [1.0 - 0.05, -2.0 - 0.025], rtol=0, atol=1e-15)

    q = _param(backend, [1.0, -2.0])
    opt = SGD([q], lr=0.1, weight_decay=0.1)
    q.grad = backend.asarray(np.array([0.5, 0.25]))
    opt.step()
    # g = grad + wd * p = [0.6, 0.05]
    np.testing.assert_allclose(backend.asnumpy(q.data), [1.0 - 0.06, -2.0 - 0.005], rtol=0, atol=1e-15)


def test_sgd_momentum_matches_hand_computation(backend):
    # grad = p, lr 0.1, momentum 0.9: b1 = 1 -> p = 0.9; b2 = 0.9*1 + 0.9 = 1.8 -> p = 0.72
    p = _param(backend, [1.0])
    traj = _quadratic_steps(SGD([p], lr=0.1, momentum=0.9), p, backend, 2)
    np.testing.assert_allclose(np.concatenate(traj), [0.9, 0.72], rtol=1e-14)


def test_sgd_nesterov_matches_pytorch_formulation(backend):
    # PyTorch: b = momentum*b + g (b = g first); g <- g + momentum*b.
    # step 1: b = 1, g' = 1.9 -> p = 0.81; step 2: g = 0.81, b = 1.71, g' = 2.349 -> p = 0.5751
    p = _param(backend, [1.0])
    traj = _quadratic_steps(SGD([p], lr=0.1, momentum=0.9, nesterov=True), p, backend, 2)
    np.testing.assert_allclose(np.concatenate(traj), [0.81, 0.5751], rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.0, False, 5e-4), (0.9, False, 0.0),
                                                  (0.9, True, 5e-4), (0.85, True, 0.0)])
@pytest.mark.parametrize("target", KERNEL_DEVICES)
def test_sgd_kernel_is_the_array_form_bit_for_bit(dtype, momentum, nesterov, wd, target):
    """On a kernel target SGD runs one fused kernel per parameter (kernels/optim.cu); on the host
    simulator and on a GPU it gives the array form's bits (NumPy's), state included, step after step."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((5, 3, 3, 7)).astype(dtype)
    grads = [rng.standard_normal(w0.shape).astype(dtype) for _ in range(4)]
    runs = {}
    for device in ("cpu", target):
        with gpuconv.default_device(device), gpuconv.kernels.launch_log() as log:
            p = Parameter(B.to_device(w0.copy(), device), "w")
            opt = SGD([p], lr=0.37, momentum=momentum, nesterov=nesterov, weight_decay=wd)
            for g in grads:
                p.grad = B.to_device(g.copy(), device)
                opt.step()
            buf = opt.state[0].get("momentum_buffer")
            runs[device] = (B.asnumpy(p.data).copy(), None if buf is None else B.asnumpy(buf), log.names)
    (cpu, cbuf, cnames), (sim, sbuf, snames) = runs["cpu"], runs[target]
    assert cnames == [] and snames == ["sgd_update"] * len(grads)
    np.testing.assert_array_equal(sim, cpu)
    assert sim.dtype == dtype and not np.array_equal(sim, w0)
    if momentum:
        np.testing.assert_array_equal(sbuf, cbuf)
    else:
        assert sbuf is None and cbuf is None


def test_sgd_kernel_updates_a_group_per_launch():
    """SGD batches each parameter group's parameters into launches of up to SGD_TENSORS (grid y
    picks the parameter): 11 parameters of mixed sizes in one group and 3 in another with their
    own hyperparameters are 3 launches a step, with the array form's bits (momentum buffers
    included); a frozen parameter and one without a gradient are left alone."""
    from gpuconv.optim import SGD_TENSORS
    rng = np.random.default_rng(4)
    shapes = [(7,), (3, 5), (1,), (300,), (2, 3, 3, 3), (64,), (5, 5), (9,), (1000,), (4, 4), (2,), (17,), (3,), (6, 2)]
    w0 = [rng.standard_normal(sh).astype(np.float32) for sh in shapes]
    grads = [[rng.standard_normal(sh).astype(np.float32) for sh in shapes] for _ in range(3)]
    runs = {}
    for device in ("cpu", "sim"):
        with gpuconv.default_device(device), gpuconv.kernels.launch_log() as log:
            ps = [Parameter(w.copy(), f"w{i}") for i, w in enumerate(w0)]
            frozen, gradless = Parameter(w0[0].copy(), "frozen", requires_grad=False), Parameter(w0[1].copy(), "none")
            opt = SGD([{"params": ps[:11] + [frozen, gradless]},
                       {"params": ps[11:], "lr": 0.05, "momentum": 0.5, "weight_decay": 1e-3}],
                      lr=0.37, momentum=0.9, nesterov=True, weight_decay=5e-4)
            for step in grads:
                for p, g in zip(ps, step):
                    p.grad = g.copy()
                frozen.grad = step[0].copy()
                opt.step()
            runs[device] = ([p.data.copy() for p in ps + [frozen, gradless]],
                            [opt.state[opt.params.index(p)].get("momentum_buffer") for p in ps], log.names)
    (cpu, cbufs, cnames), (sim, sbufs, snames) = runs["cpu"], runs["sim"]
    assert SGD_TENSORS == 8 and cnames == [] and snames == ["sgd_update"] * 3 * len(grads)
    for a, b in zip(sim + sbufs, cpu + cbufs):
        assert a.tobytes() == b.tobytes()
    assert np.array_equal(sim[-2], w0[0]) and np.array_equal(sim[-1], w0[1])


def test_sgd_kernel_declines_what_it_does_not_take():
    """A gradient in another dtype or a non-contiguous one: the array form runs (no launch)."""
    with gpuconv.default_device("sim"), gpuconv.kernels.launch_log() as log:
        p = Parameter(np.ones((4, 6), np.float32), "w")
        opt = SGD([p], lr=0.5, momentum=0.9)
        p.grad = np.ones((6, 4), np.float32).T  # Fortran order
        opt.step()
        p.grad = np.ones((4, 6), np.float64)
        opt.step()
    assert log.names == []
    np.testing.assert_allclose(p.data, 1 - 0.5 * (1 + 1.9), rtol=1e-6)


def test_sgd_rejects_bad_arguments():
    p = Parameter(np.zeros(2), "p")
    with pytest.raises(ValueError, match="momentum > 0"):
        SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="lr must be"):
        SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="not a gpuconv Parameter"):
        SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        SGD([p, p], lr=0.1)
    opt = SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="lr must be"):
        opt.lr = float("nan")


# ----------------------------------------------------------------------------- Adam / AdamW
def _adam_reference(p0, grads, lr, b1, b2, eps, wd, decoupled):
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("cls,wd", [(Adam, 0.0), (Adam, 0.1), (AdamW, 0.1)])
def test_adam_first_step_is_lr_times_sign(backend, cls, wd):
    g = np.array([3.0, -1e-3, 0.5])
    p = _param(backend, [1.0, 2.0, -3.0])
    opt = cls([p], lr=0.01, weight_decay=wd)
    p.grad = backend.asarray(g)
    opt.step()
    p0 = np.array([1.0, 2.0, -3.0])
    if cls is AdamW:  # decoupled: shrink, then a pure Adam step of size lr
        expect = p0 * (1 - 0.01 * wd) - 0.01 * g / (np.abs(g) + 1e-8)
    else:
        ge = g + wd * p0
        expect = p0 - 0.01 * ge / (np.abs(ge) + 1e-8)
    np.testing.assert_allclose(backend.asnumpy(p.data), expect, rtol=1e-13)


@pytest.mark.parametrize("cls,wd", [(Adam, 0.05), (AdamW, 0.05)])
def test_adam_several_steps_match_textbook_formula(backend, cls, wd):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) for _ in range(6)]
    p = _param(backend, p0)
    opt = cls([p], lr=0.03, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    for g in grads:
        p.grad = backend.asarray(g)
        opt.step()
    expect = _adam_reference(p0, grads, 0.03, 0.8, 0.95, 1e-6, wd, decoupled=cls is AdamW)
    np.testing.assert_allclose(backend.asnumpy(p.data), expect, rtol=1e-12)


def test_adam_second_moment_of_a_huge_float32_gradient_stays_finite(backend):
    """|g| = 2e19: g*g overflows float32 but (1 - b2) g * g = 4e35 does not (PyTorch's order); an
    infinite second moment would never decay again and freeze the weight."""
    p = _param(backend, np.zeros(3), np.float32)
    opt = Adam([p], lr=0.1)
    for g in ([1, 1, 1], [2e19, 1, 1], [1, 1, 1], [1, 1, 1]):
        p.grad = backend.asarray(np.asarray(g, np.float32))
        before = float(backend.asnumpy(p.data)[0])
        opt.step()
    assert np.isfinite(float(backend.asnumpy(p.data)[0]))
    assert float(backend.asnumpy(p.data)[0]) < before - 1e-3  # still moving


def test_adamw_default_weight_decay_and_bad_betas():
    p = Parameter(np.zeros(2), "p")
    assert AdamW([p]).weight_decay == 1e-2
    assert Adam([p]).weight_decay == 0.0
    with pytest.raises(ValueError, match="betas"):
        Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas must be two numbers in \\[0, 1\\), got 0.9"):
        Adam([p], betas=0.9)


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=0.1)])
def test_step_runs_a_closure_first_and_returns_its_loss(make):
    """PyTorch's ``optimizer.step(closure)``: the closure computes the loss and the gradients, the
    step uses them and returns the loss (a positional argument was once the overflow flag: a
    function counted as true and every update was undone)."""
    p = Parameter(np.ones(3, np.float32), "p")
    opt = make([p])

    def closure():
        opt.zero_grad()
        p.grad = 2 * p.data  # d/dp of sum(p^2)
        return float((p.data ** 2).sum())

    assert opt.step(closure) == 3.0 and (p.data < 1).all()
    before = p.data.copy()
    assert opt.step() is None and (p.data < before).all()  # the last gradient again
    with pytest.raises(TypeError, match=r"closure must be a function.*step\(skip=...\)"):
        opt.step(np.asarray(False))


# ----------------------------------------------------------------------------- Muon
def _newton_schulz_reference(g, steps):
    """Muon's orthogonalization written out in float64 (zeropower_via_newtonschulz5 of Keller
    Jordan's airbench94_muon): g / ||g||_F, transposed when it has more rows than columns, then
    ``steps`` times X = a X + (b A + c A A) X with A = X X^T."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (np.linalg.norm(g) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def _muon_reference(w, grads, lr, momentum, nesterov, steps, normalize):
    """The weights after Muon's steps on ``grads`` (b = momentum b + g; Nesterov's g + momentum b
    or b; w rescaled to ||w||_F = sqrt(rows); w -= lr NS(update as rows x rest)), in float64."""
    w, buf = w.astype(np.float64), np.zeros(w.shape)
    for g in grads:
        buf = momentum * buf + g
        u = g + momentum * buf if nesterov else buf
        if normalize:
            w = w * (np.sqrt(w.shape[0]) / np.linalg.norm(w))
        w = w - lr * _newton_schulz_reference(u.reshape(len(u), -1), steps).reshape(w.shape)
    return w


@pytest.mark.parametrize("shape", [(4, 2, 3, 3), (7, 3), (3, 7)], ids=["filters", "tall", "wide"])
@pytest.mark.parametrize("nesterov, normalize, steps", [(True, True, 3), (False, False, 5)],
                         ids=["airbench", "plain-5-steps"])
def test_muon_steps_are_the_float64_reference(backend, shape, nesterov, normalize, steps):
    """Muon's update in float64 on every backend (on 'sim' and 'cuda' its products run on the
    linear layer's kernels) against the formula written out with NumPy's matmul: a filter bank
    (rows = output channels), a tall matrix (orthogonalized transposed) and a wide one; three steps
    so that the momentum buffer and the renormalization of the weights take part."""
    rng = np.random.default_rng(21)
    w0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(3)]
    p = Parameter(backend.asarray(w0.copy()), "w")  # (a copy: the step is in place)
    opt = Muon([p], lr=0.1, momentum=0.6, nesterov=nesterov, steps=steps, normalize=normalize)
    for g in grads:
        p.grad = backend.asarray(g)
        opt.step()
    want = _muon_reference(w0, grads, 0.1, 0.6, nesterov, steps, normalize)
    # float64 sums in another order: a few units of 2^-53 of the values (about 1)
    np.testing.assert_allclose(backend.asnumpy(p.data), want, rtol=1e-12, atol=1e-13)
    backend.assert_kernels_ran("conv2d_forward")


def test_newton_schulz_computes_low_precision_in_float32(backend):
    """The precision rule: a bfloat16 or float16 momentum is orthogonalized in float32, exactly as
    its float32 upcast is (the result is float32, with the upcast's bits)."""
    from gpuconv.optim import newton_schulz
    g = np.random.default_rng(22).standard_normal((5, 12)).astype(ml_dtypes.bfloat16)
    want = backend.asnumpy(newton_schulz(backend.asarray(g.astype(np.float32))))
    for dtype in (ml_dtypes.bfloat16, np.float16):
        got = backend.asnumpy(newton_schulz(backend.asarray(g.astype(dtype))))
        assert got.dtype == np.float32 and got.tobytes() == want.tobytes()


# ----------------------------------------------------------------------------- common behaviour
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                  lambda ps: Adam(ps, lr=1e-2, weight_decay=1e-3),
                                  lambda ps: AdamW(ps, lr=1e-2)])
def test_step_keeps_dtype_device_and_identity_and_skips_missing_grads(backend, make):
    a = Parameter(backend.asarray(np.ones((3, 2), np.float32)), "a")
    b = Parameter(backend.asarray(np.ones(4, np.float32)), "b")
    opt = make([a, b])
    data_a = a.data
    a.grad = backend.asarray(np.full((3, 2), 0.5, np.float32))
    grad_before = backend.asnumpy(a.grad).copy()
    opt.step()
    assert a.data is data_a, "the update must be in place"
    assert a.data.dtype == np.float32 and B.device_of(a.data) == B.device_of(data_a)
    assert not np.allclose(backend.asnumpy(a.data), 1.0)
    np.testing.assert_array_equal(backend.asnumpy(a.grad), grad_before)  # grads are not modified
    np.testing.assert_array_equal(backend.asnumpy(b.data), np.ones(4, np.float32))  # no grad: untouched
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    a.grad = backend.asarray(np.ones(2, np.float32))  # set by hand, of another shape: it would broadcast
    stepped = backend.asnumpy(a.data).copy()
    with pytest.raises(ValueError, match=r"parameter 0 \('a'\) has shape \(3, 2\) but its .grad has shape \(2,\)"):
        opt.step()
    np.testing.assert_array_equal(backend.asnumpy(a.data), stepped)
    # a wrong gradient after a right one: refused before any parameter changes
    a.grad, b.grad = backend.asarray(np.full((3, 2), 0.5, np.float32)), backend.asarray(np.ones(2, np.float32))
    before = [backend.asnumpy(p.data).copy() for p in (a, b)]
    with pytest.raises(ValueError, match=r"parameter 1 \('b'\) has shape \(4,\) but its .grad has shape \(2,\)"):
        opt.step()
    for p, was in zip((a, b), before):
        np.testing.assert_array_equal(backend.asnumpy(p.data), was)



@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, lr=1e-2),
                                  lambda ps: AdamW(ps, lr=1e-2)])
@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_a_read_only_parameter_is_refused_before_any_update(make, device):
    """A read-only ``.data`` (a broadcast or memory-mapped array) cannot be updated in place: the
    step names it before touching any parameter (the NumPy path used to update the others, then
    fail inside NumPy; a second step would then update them twice)."""
    with gpuconv.default_device(device):
        a = Parameter(np.ones((3, 2), np.float32), "a")
        b = Parameter(np.broadcast_to(np.float32(1.0), (4,)), "b")
        opt = make([a, b])
        a.grad, b.grad = np.full((3, 2), 0.5, np.float32), np.full(4, 0.5, np.float32)
        with pytest.raises(ValueError, match=r"parameter 1 \('b'\) is a read-only array.*p.data = p.data.copy\(\)"):
            opt.step()
        np.testing.assert_array_equal(a.data, np.ones((3, 2), np.float32))
        b.requires_grad = False  # frozen: the step leaves it alone, and runs
        opt.step()
        assert (a.data < 1).all()

def test_step_makes_no_host_readback():
    # On 'sim', NumPy arrays stand for device arrays and every readback through the backend counts.
    with gpuconv.default_device("sim"):
        ps = [Parameter(np.ones((5, 5), np.float32), "w"), Parameter(np.ones(5, np.float32), "b")]
        opts = [SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4), Adam(ps), AdamW(ps)]
        sched = OneCycleLR(opts[0], max_lr=0.2, total_steps=10)
        B.transfers.reset()
        for opt in opts:
            for _ in range(3):
                for p in ps:
                    p.grad = np.full(p.shape, 0.1, np.float32)
                opt.step()
                sched.step()
        assert B.transfers.device_to_host == 0 and B.transfers.host_to_device == 0


# ----------------------------------------------------------------------------- save / restore
def _grad_fn(p):
    # a deterministic, parameter-dependent gradient so a wrong restored state changes the path
    return np.sin(3.0 * p) + 0.1 * p


def _run(opt, sched, ps, backend, steps):
    for _ in range(steps):
        for p in ps:
            p.grad = backend.asarray(_grad_fn(backend.asnumpy(p.data)))
        opt.step()
        sched.step()


def _roundtrip_npz(d):
    """Through np.savez and np.load(allow_pickle=False), as a checkpoint would go."""
    buf = io.BytesIO()
    np.savez(buf, **d)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("via_npz", [False, True])
def test_save_restore_mid_training_continues_bit_identically(backend, name, via_npz):
    def make(ps):
        opt = {"sgd": lambda: SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4),
               "nesterov": lambda: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
               "adam": lambda: Adam(ps, lr=1e-2, weight_decay=1e-4),
               "adamw": lambda: AdamW(ps, lr=1e-2)}[name]()
        return opt, OneCycleLR(opt, max_lr=0.05, total_steps=20, anneal_strategy="linear")

    rng = np.random.default_rng(1)
    init = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
    ps = [Parameter(backend.asarray(a.copy()), f"p{i}") for i, a in enumerate(init)]
    opt, sched = make(ps)
    _run(opt, sched, ps, backend, 6)
    saved_params = [backend.asnumpy(p.data).copy() for p in ps]
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    for key, value in opt_state.items():
        assert isinstance(value, (np.ndarray, int, float, str, bool)), (key, type(value))
        assert not B.is_cupy_array(value)
    if via_npz:
        opt_state, sched_state = _roundtrip_npz(opt_state), _roundtrip_npz(sched_state)
    _run(opt, sched, ps, backend, 7)
    reference = [backend.asnumpy(p.data).copy() for p in ps]

    ps2 = [Parameter(backend.asarray(a.copy()), f"p{i}") for i, a in enumerate(saved_params)]
    opt2, sched2 = make(ps2)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(sched_state)
    assert sched2.last_step == 6 and opt2.lr == sched2.lr_at(6)
    for state in opt2.state:
        for value in state.values():
            if not isinstance(value, int):
                assert B.device_of(value) == B.device_of(ps2[0].data)
    _run(opt2, sched2, ps2, backend, 7)
    for got, want in zip(ps2, reference):
        np.testing.assert_array_equal(backend.asnumpy(got.data), want)
    assert sched2.last_step == sched.last_step == 13
    assert opt2.lr == opt.lr


def test_restored_state_is_a_copy():
    p = Parameter(np.ones(3), "p")
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(3)
    opt.step()
    d = opt.state_dict()
    d["state.0.momentum_buffer"][:] = 123.0  # mutating the dict must not reach the optimizer
    assert opt.state[0]["momentum_buffer"][0] == 1.0
    opt2 = SGD([p], lr=0.1, momentum=0.9)
    opt2.load_state_dict(d)
    d["state.0.momentum_buffer"][:] = 7.0
    assert opt2.state[0]["momentum_buffer"][0] == 123.0


def test_state_is_indexed_by_parameter_as_in_pytorch_and_a_chain_shows_its_members():
    """``opt.state[p]`` (PyTorch's spelling) is parameter ``p``'s state, the dict ``opt.state[i]``
    is, before and after a load (it raised "list indices must be integers"); a Chain's ``state``
    is its members' (it was a list of empty dicts of its own)."""
    from gpuconv.optim import Chain
    p, q, other = Parameter(np.ones((2, 2)), "p"), Parameter(np.ones(3), "q"), Parameter(np.ones(1), "other")
    opt = SGD([p, q], lr=0.1, momentum=0.9)
    p.grad, q.grad = np.ones((2, 2)), np.full(3, 2.0)
    opt.step()
    assert opt.state[q] is opt.state[1]
    np.testing.assert_array_equal(opt.state[q]["momentum_buffer"], np.full(3, 2.0))
    with pytest.raises(KeyError, match="parameter 'other' is not one of this optimizer's"):
        opt.state[other]
    opt.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], np.ones((2, 2)))
    chain = Chain(Muon([p]), SGD([q], lr=0.1, momentum=0.9))
    chain.step()
    assert len(chain.state) == 2
    assert chain.state[q] is chain.optimizers[1].state[0]
    np.testing.assert_array_equal(chain.state[1]["momentum_buffer"], np.full(3, 2.0))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", ["SGD", "Muon"])
def test_a_copied_optimizer_steps_as_the_original(how, name):
    """A copy (copy.deepcopy, pickle) of an optimizer that has stepped on a kernel target steps over
    its own parameters with the original's bits (its device learning rates, looked up by the
    parameters' ids, are made anew), and one copied while a captured step held the original
    (gpuconv.graphs) is held by nothing: it writes its own lrs and takes hyperparameters."""
    copier = copy.deepcopy if how == "deepcopy" else (lambda o: pickle.loads(pickle.dumps(o)))
    with gpuconv.default_device("sim"):
        p = Parameter(B.to_device(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "sim"), "w")
        opt = SGD([p], lr=0.1, momentum=0.9) if name == "SGD" else Muon([p], lr=0.1, momentum=0.9)
        p.grad = p.data * 0 + 1
        opt.step()
        opt.lr_written_by_owner = True  # as StepGraph.for_optimizer's first call leaves it
        twin = copier(opt)
        assert not twin.lr_written_by_owner
        twin.momentum = 0.9  # the same value: a change would be free too
        for o in (opt, twin):
            o.lr = 0.05
            o.params[0].grad = o.params[0].data * 0 + 1
        opt.write_lrs()  # the owner's write before its step
        opt.step(), twin.step()
        np.testing.assert_array_equal(B.asnumpy(twin.params[0].data), B.asnumpy(p.data))
        twin.momentum = 0.5


def test_load_state_dict_gives_each_slot_its_parameters_layout():
    """A saved slot in another memory order (a transposed source) is loaded in its parameter's
    layout, as the parameters are: a C-contiguous weight's momentum stays C-contiguous (the fused
    update takes only those), a channels_last one's stays channels_last."""
    rng = np.random.default_rng(0)
    params = [Parameter(rng.standard_normal((3, 4)).astype(np.float32)),
              Parameter(gpuconv.to_channels_last(rng.standard_normal((2, 3, 3, 3)).astype(np.float32)))]
    opt = SGD(params, lr=0.1, momentum=0.9)
    saved = opt.state_dict()
    buffers = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    saved.update({f"state.{i}.momentum_buffer": np.asfortranarray(b) for i, b in enumerate(buffers)})
    opt.load_state_dict(saved)
    for i, p in enumerate(params):
        np.testing.assert_array_equal(opt.state[i]["momentum_buffer"], buffers[i])
        assert opt.state[i]["momentum_buffer"].strides == p.data.strides, i


def test_load_state_dict_errors():
    p, q = Parameter(np.ones(3), "p"), Parameter(np.ones(2), "q")
    opt = SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(3)
    opt.step()
    d = opt.state_dict()
    with pytest.raises(ValueError, match="saved by optimizer 'SGD'"):
        Adam([p]).load_state_dict(d)
    torch_like = {"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]}  # a PyTorch optimizer's
    with pytest.raises(ValueError, match="not a gpuconv optimizer's state dict.*PyTorch optimizer's"):
        SGD([p], lr=0.1).load_state_dict(torch_like)
    with pytest.raises(ValueError, match="not a gpuconv schedule's state dict"):
        StepLR(opt, 2).load_state_dict({})
    with pytest.raises(ValueError, match="holds 1 parameters"):
        SGD([p, q], lr=0.1, momentum=0.9).load_state_dict(d)
    with pytest.raises(ValueError, match="shape"):
        SGD([q], lr=0.1, momentum=0.9).load_state_dict(d)
    sched_state = StepLR(SGD([p], lr=0.1), step_size=2).state_dict()
    with pytest.raises(ValueError, match="saved by schedule 'StepLR'"):
        CosineLR(SGD([p], lr=0.1), total_steps=5).load_state_dict(sched_state)


# ----------------------------------------------------------------------------- schedules
def _lrs(sched, n):
    out = [sched.optimizer.lr]
    for _ in range(n):
        sched.step()
        out.append(sched.optimizer.lr)
    return out


def _opt(lr=1.0):
    return SGD([Parameter(np.zeros(1), "p")], lr=lr)


def test_step_lr_values():
    lrs = _lrs(StepLR(_opt(0.1), step_size=3, gamma=0.5), 9)
    expect = [0.1 * 0.5 ** (s // 3) for s in range(10)]
    np.testing.assert_allclose(lrs, expect, rtol=1e-15)
    assert lrs[2] == 0.1 and lrs[3] == 0.05 and lrs[9] == 0.0125


def test_schedules_repr_their_arguments_step_and_lr():
    opt = _opt(0.1)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=10)
    sched.step()
    assert repr(sched) == ("OneCycleLR(max_lr=0.1, total_steps=10, pct_start=0.3, div_factor=25.0, "
                           f"final_div_factor=10000.0, anneal_strategy='cos', last_step=1, lr={opt.lr:g})")
    assert repr(StepLR(_opt(0.1), 3)) == "StepLR(step_size=3, gamma=0.1, last_step=0, lr=0.1)"
    assert repr(CosineLR(_opt(1.0), 10, warmup_steps=2)).startswith("CosineLR(total_steps=10, min_lr=0.0, warmup_steps=2")
    assert repr(gpuconv.optim.TriangularLR(_opt(1.0), 10)).endswith("last_step=0, lr=0.2)")


def test_get_last_lr_lists_every_groups_lr_as_pytorch():
    a, b = Parameter(np.zeros(2), "a"), Parameter(np.zeros(3), "b")
    opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    sched = StepLR(opt, step_size=1, gamma=0.1)
    assert sched.get_last_lr() == [0.1, 0.5]
    sched.step()
    np.testing.assert_allclose(sched.get_last_lr(), [0.01, 0.05], rtol=1e-15)
    assert sched.get_last_lr()[1] == opt.param_groups[1]["lr"]


def test_cosine_lr_values_with_warmup():
    sched = CosineLR(_opt(1.0), total_steps=10, min_lr=0.1, warmup_steps=2)
    lrs = _lrs(sched, 13)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)  # warm-up (step + 1) / warmup
    assert lrs[2] == pytest.approx(1.0)  # cosine starts at base_lr
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5)  # t = 4/8 -> halfway
    assert lrs[4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lrs[10] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.1)  # held at min_lr
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineLR(_opt(), total_steps=5, warmup_steps=5)
    opt = _opt(0.1)
    with pytest.raises(ValueError, match=r"min_lr=5.0 is above the optimizer's lr 0.1"):  # it would climb
        CosineLR(opt, total_steps=5, min_lr=5.0)
    assert opt.lr == 0.1


def test_pytorchs_multistep_cosine_annealing_and_lambda_schedules():
    """PyTorch's MultiStepLR, CosineAnnealingLR and LambdaLR under their names and arguments: the
    lrs torch 2.14 steps through (a repeated milestone counting twice; the cosine rising again
    after T_max), a state dict that continues through np.savez, and bad arguments named."""
    from gpuconv.optim import CosineAnnealingLR, LambdaLR, MultiStepLR
    sched = MultiStepLR(_opt(0.1), [8, 5, 3, 5], gamma=0.5)
    np.testing.assert_allclose(_lrs(sched, 10), [0.1, 0.1, 0.1, 0.05, 0.05, 0.0125, 0.0125, 0.0125, 0.00625,
                                                 0.00625, 0.00625], rtol=1e-15)
    assert repr(sched) == "MultiStepLR(milestones=[3, 5, 5, 8], gamma=0.5, last_step=10, lr=0.00625)"
    again = MultiStepLR(_opt(0.1), [1], gamma=0.1)
    again.load_state_dict(_roundtrip_npz(MultiStepLR(_opt(0.1), [3, 5, 5, 8], gamma=0.5).state_dict()))
    assert again.milestones == (3, 5, 5, 8) and _lrs(again, 5)[-1] == pytest.approx(0.0125, rel=1e-15)
    cos = _lrs(CosineAnnealingLR(_opt(0.1), T_max=5, eta_min=0.01), 14)
    torch_values = [0.1, 0.09140576474687263, 0.06890576474687263, 0.04109423525312736, 0.018594235253127367, 0.01,
                    0.018594235253127367, 0.04109423525312739, 0.06890576474687267, 0.09140576474687269,
                    0.10000000000000006, 0.09140576474687272, 0.06890576474687268, 0.0410942352531274,
                    0.01859423525312738]
    np.testing.assert_allclose(cos, torch_values, rtol=1e-14)
    warm = LambdaLR(_opt(0.1), lambda s: min(1.0, (s + 1) / 4))
    np.testing.assert_allclose(_lrs(warm, 6), [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1], rtol=1e-15)
    resumed = LambdaLR(_opt(0.1), lambda s: min(1.0, (s + 1) / 4))
    resumed.load_state_dict(_roundtrip_npz(LambdaLR(_opt(0.1), lambda s: min(1.0, (s + 1) / 4)).state_dict()))
    assert resumed.last_step == 0 and resumed.optimizer.lr == pytest.approx(0.025)
    with pytest.raises(ValueError, match=r"milestones must be steps, ints >= 0, got -1"):
        MultiStepLR(_opt(), [-1, 3])
    with pytest.raises(TypeError, match=r"milestones must be a list of steps"):
        MultiStepLR(_opt(), 30)
    with pytest.raises(ValueError, match=r"T_max must be an integer >= 1, got 0"):
        CosineAnnealingLR(_opt(), 0)
    with pytest.raises(ValueError, match=r"LambdaLR: lr_lambda\(0\) gave nan; it must give a finite number >= 0"):
        LambdaLR(_opt(), lambda s: float("nan"))
    with pytest.raises(TypeError, match=r"one function per parameter group is not supported; .*own_schedule"):
        LambdaLR(_opt(), [lambda s: 1.0])
    with pytest.raises(ValueError, match=r"MultiStepLR\(last_epoch=4\) is not supported"):
        MultiStepLR(_opt(), [3], last_epoch=4)


def test_lr_scheduler_namespace_holds_pytorchs_schedule_names():
    """``from gpuconv.optim import lr_scheduler`` (and ``from gpuconv.optim.lr_scheduler import ...``)
    reach the schedules PyTorch's torch.optim.lr_scheduler names as gpuconv does, stepping through
    torch 2.14's lrs; gpuconv's own (CosineLR, TriangularLR) are not in it. With torch at hand: the
    namespace holds every gpuconv.optim name torch's has, and only those."""
    import gpuconv.optim as optim
    from gpuconv.optim import lr_scheduler
    from gpuconv.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, MultiStepLR
    assert (lr_scheduler.StepLR, lr_scheduler.OneCycleLR, CosineAnnealingLR, LambdaLR, MultiStepLR) == (
        StepLR, OneCycleLR, optim.CosineAnnealingLR, optim.LambdaLR, optim.MultiStepLR)
    assert sorted(lr_scheduler.__all__) == ["CosineAnnealingLR", "LambdaLR", "MultiStepLR", "OneCycleLR", "StepLR"]
    assert not hasattr(lr_scheduler, "CosineLR") and "lr_scheduler" in optim.__all__
    np.testing.assert_allclose(_lrs(lr_scheduler.StepLR(_opt(0.1), 3, 0.5), 7),
                               [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025], rtol=1e-15)
    torch_one_cycle = [0.0040000000000000036, 0.052000000000000005, 0.1, 0.09504846320134738, 0.0811745653949763,
                       0.06112620219362893, 0.03887419780637107, 0.0188258346050237, 0.004951936798652629, 4e-07]
    np.testing.assert_allclose(_lrs(lr_scheduler.OneCycleLR(_opt(0.1), max_lr=0.1, total_steps=10), 9),
                               torch_one_cycle, rtol=1e-13)
    torch = pytest.importorskip("torch")
    assert set(lr_scheduler.__all__) == set(optim.__all__) & set(torch.optim.lr_scheduler.__all__)


def test_cosine_lr_without_warmup_matches_closed_form():
    lrs = _lrs(CosineLR(_opt(0.4), total_steps=20), 20)
    expect = [0.4 * 0.5 * (1 + math.cos(math.pi * s / 20)) for s in range(21)]
    np.testing.assert_allclose(lrs, expect, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_one_cycle_values_match_pytorch_closed_form(strategy):
    total, max_lr, pct, div, final_div = 100, 1.0, 0.25, 25.0, 1e4
    sched = OneCycleLR(_opt(123.0), max_lr=max_lr, total_steps=total, pct_start=pct, div_factor=div,
                       final_div_factor=final_div, anneal_strategy=strategy)
    lrs = _lrs(sched, total)
    initial, final, peak = max_lr / div, max_lr / div / final_div, pct * total - 1

    def anneal(a, b, t):
        return b + (a - b) / 2 * (math.cos(math.pi * t) + 1) if strategy == "cos" else a + (b - a) * t

    expect = [anneal(initial, max_lr, s / peak) if s <= peak else
              anneal(max_lr, final, min(1.0, (s - peak) / (total - 1 - peak))) for s in range(total + 1)]
    np.testing.assert_allclose(lrs, expect, rtol=1e-12)
    assert lrs[0] == pytest.approx(0.04)  # the optimizer's own lr is replaced
    assert lrs[24] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert lrs[99] == pytest.approx(4e-6)
    assert lrs[12] == pytest.approx(0.52)  # halfway up: equal for both strategies
    if strategy == "cos":
        assert lrs[6] == pytest.approx(1.0 - 0.48 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="past total_steps=100"):
        sched.step()
    import inspect
    assert inspect.signature(OneCycleLR).parameters["pct_start"].default == 0.3  # PyTorch's default


def test_one_cycle_takes_pytorchs_arguments():
    """PyTorch's OneCycleLR call forms: epochs * steps_per_epoch for the length, the momentum
    options at the values gpuconv computes; the others refused by name."""
    import inspect
    a = OneCycleLR(_opt(), max_lr=0.3, epochs=5, steps_per_epoch=10, cycle_momentum=False, three_phase=False)
    b = OneCycleLR(_opt(), max_lr=0.3, total_steps=50)
    assert a.total_steps == 50 and _lrs(a, 50) == _lrs(b, 50)
    torch_order = ["optimizer", "max_lr", "total_steps", "epochs", "steps_per_epoch", "pct_start", "anneal_strategy",
                   "cycle_momentum", "base_momentum", "max_momentum", "div_factor", "final_div_factor", "three_phase",
                   "last_epoch"]
    assert list(inspect.signature(OneCycleLR).parameters) == torch_order
    with pytest.raises(ValueError, match=r"OneCycleLR\(cycle_momentum=True\) is not supported"):
        OneCycleLR(_opt(), max_lr=0.3, total_steps=50, cycle_momentum=True)
    with pytest.raises(ValueError, match=r"OneCycleLR\(three_phase=True\) is not supported"):
        OneCycleLR(_opt(), max_lr=0.3, total_steps=50, three_phase=True)
    with pytest.raises(ValueError, match="total_steps, or as epochs and steps_per_epoch"):
        OneCycleLR(_opt(), max_lr=0.3, epochs=5)
    with pytest.raises(ValueError, match="pass one of the two forms"):
        OneCycleLR(_opt(), max_lr=0.3, total_steps=50, epochs=5, steps_per_epoch=10)


def test_optimizers_take_pytorchs_switches():
    """PyTorch's keyword switches: foreach, fused and capturable (scheduling only) taken as given;
    maximize and differentiable at their defaults only, refused by name; Adam's
    decoupled_weight_decay pointing to AdamW; SGD's lr defaulting to PyTorch's 1e-3."""
    ps = lambda: gpuconv.layers.Conv2d(1, 1, 1).parameters()  # noqa: E731
    assert SGD(ps()).lr == 1e-3
    SGD(ps(), 0.1, foreach=True, fused=False, maximize=False, differentiable=False)
    Adam(ps(), foreach=False, fused=True, capturable=True, decoupled_weight_decay=False)
    AdamW(ps(), fused=True, decoupled_weight_decay=True)
    for make, name in ((SGD, "SGD"), (Adam, "Adam"), (AdamW, "AdamW")):
        with pytest.raises(ValueError, match=rf"{name}\(maximize=True\) is not supported"):
            make(ps(), maximize=True)
        with pytest.raises(ValueError, match=rf"{name}\(differentiable=True\) is not supported"):
            make(ps(), differentiable=True)
    with pytest.raises(ValueError, match=r"use AdamW, whose weight decay is decoupled"):
        Adam(ps(), decoupled_weight_decay=True)
    with pytest.raises(ValueError, match=r"use Adam, whose weight decay is added to the gradient"):
        AdamW(ps(), decoupled_weight_decay=False)
    StepLR(SGD(ps()), 10, last_epoch=-1)
    with pytest.raises(ValueError, match=r"StepLR\(last_epoch=4\) is not supported"):
        StepLR(SGD(ps()), 10, last_epoch=4)


def test_schedule_state_dict_roundtrip():
    a = OneCycleLR(_opt(), max_lr=0.3, total_steps=50)
    _lrs(a, 17)
    d = _roundtrip_npz(a.state_dict())
    b = OneCycleLR(_opt(), max_lr=0.3, total_steps=50)
    b.load_state_dict(d)
    assert b.last_step == 17 and b.optimizer.lr == a.optimizer.lr
    assert _lrs(a, 10) == _lrs(b, 10)


def test_a_refused_schedule_state_leaves_the_schedule_as_it_was():
    """A saved state whose step lies past its total_steps is refused by lr_at; the schedule keeps
    its own settings, step and lr (it took the saved total_steps and step before the refusal)."""
    a = OneCycleLR(_opt(), max_lr=0.3, total_steps=50)
    _lrs(a, 7)
    before, lr = a.state_dict(), a.optimizer.lr
    bad = dict(before, total_steps=5, last_step=8)
    with pytest.raises(ValueError, match="past total_steps=5"):
        a.load_state_dict(bad)
    assert a.state_dict() == before and a.optimizer.lr == lr


def test_a_step_runs_with_the_parameters_gpu_current(monkeypatch):
    """CuPy makes an optimizer's state, its learning rates' array and the update's temporaries on
    the current device and refuses another's arrays in a kernel: a step of parameters on cuda:1
    while cuda:0 was current failed, or left state on GPU 0. The step runs with the parameters'
    GPU current. CuPy is faked: the parameters 'on cuda:1' are a NumPy subclass."""
    from conftest import fake_cupy_second_gpu
    from gpuconv.layers import Linear
    seen = []

    net = Linear(3, 2)
    opt = gpuconv.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    cupy, current = fake_cupy_second_gpu(monkeypatch)
    for p in net.parameters():
        p.data = p.data.view(cupy.ndarray)
    monkeypatch.setattr(opt, "write_lrs", lambda: seen.append(("lrs", current[0])))
    monkeypatch.setattr(opt, "_step", lambda skip: seen.append(("step", current[0])))
    opt.step()
    assert seen == [("lrs", 1), ("step", 1)] and current == [0]


@pytest.mark.parametrize("where", ["SGD", "Muon", "Muon normalize", "group", "attribute", "zero_grad"])
def test_optimizer_switches_take_true_or_false_only(where):
    """``nesterov='no'``, ``normalize='False'`` or ``zero_grad(set_to_none='no')`` (a word from a
    config file) would be true by its truth and switch Nesterov momentum, the normalization or the
    gradients' release on; PyTorch refuses them, and so does gpuconv, naming the switch."""
    from gpuconv.layers import Parameter
    p = Parameter(np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="must be True or False, got 'no'"):
        if where == "SGD":
            SGD([p], lr=0.1, momentum=0.9, nesterov="no")
        elif where == "Muon":
            Muon([p], nesterov="no")
        elif where == "Muon normalize":
            Muon([p], normalize="no")
        elif where == "group":
            SGD([p], lr=0.1, momentum=0.9).param_groups[0]["nesterov"] = "no"
        elif where == "attribute":
            SGD([p], lr=0.1, momentum=0.9).nesterov = "no"
        else:
            SGD([p], lr=0.1).zero_grad(set_to_none="no")
    assert SGD([p], lr=0.1, momentum=0.9, nesterov=np.bool_(True)).nesterov is True
