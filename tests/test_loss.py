"""softmax_cross_entropy: values, stability, smoothing, gradients, a 0-d device result, errors."""
from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels
from gpuconv.gradcheck import numerical_gradient_array, relative_error
from gpuconv.ops import check_labels, softmax_cross_entropy
from gpuconv.ops.loss import _softmax_cross_entropy_reference
from gpuconv.precision import smallest_subnormal, unit_roundoff


def reference(logits, labels, eps):
    """Loss with an explicit target distribution, in float64."""
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    n, c = z.shape
    q = np.full((n, c), eps / c)
    q[np.arange(n), labels] += 1 - eps
    return -(q * logp).sum() / n, (np.exp(logp) - q) / n


def test_uniform_logits(backend):
    labels = np.array([0, 3])
    loss, d = softmax_cross_entropy(backend.asarray(np.zeros((2, 4), np.float32)), backend.asarray(labels))
    assert float(backend.asnumpy(loss)) == pytest.approx(np.log(4), rel=1e-6)
    expected = np.full((2, 4), 0.25 / 2, np.float32)
    expected[[0, 1], labels] -= 0.5
    np.testing.assert_allclose(backend.asnumpy(d), expected, rtol=1e-6)


def test_loss_is_0d_array_on_device_without_readback(backend):
    logits = backend.asarray(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    labels = backend.asarray(np.array([0, 1, 2, 1, 0]))
    B.transfers.reset()
    loss, d = softmax_cross_entropy(logits, labels)
    assert B.transfers.device_to_host == 0
    assert isinstance(loss, backend.xp.ndarray) and loss.shape == () and loss.dtype == np.float32
    assert d.dtype == np.float32 and d.shape == (5, 3)


def test_numerically_stable_for_huge_logits(backend):
    logits = np.array([[1000.0, 0.0], [-1000.0, 0.0], [3e4, 3e4]], np.float32)
    loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(np.array([0, 0, 1])))
    assert float(backend.asnumpy(loss)) == pytest.approx((0.0 + 1000.0 + np.log(2)) / 3, rel=1e-5)
    assert np.isfinite(backend.asnumpy(d)).all()


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
def test_float32_against_float64_reference(backend, eps):
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((16, 10)) * 5).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), label_smoothing=eps)
    ref_loss, ref_d = reference(logits, labels, eps)
    assert float(backend.asnumpy(loss)) == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(backend.asnumpy(d), ref_d, rtol=1e-4, atol=1e-7)
    assert abs(float(backend.asnumpy(d).sum())) < 1e-6  # each row of softmax - target sums to 0


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_gradient_float64(backend, eps):
    rng = np.random.default_rng(2)
    logits = backend.asarray(rng.standard_normal((4, 5)))
    labels = backend.asarray(rng.integers(0, 5, 4))
    _, d = softmax_cross_entropy(logits, labels, eps)
    num = numerical_gradient_array(lambda a: softmax_cross_entropy(a, labels, eps)[0], logits)
    assert relative_error(d, num) < 1e-6


@pytest.mark.parametrize("logits, labels, kw, exc, match", [
    (np.zeros((2, 3), np.int32), np.array([0, 1]), {}, TypeError, r"logits has dtype int32.*astype"),
    (np.zeros(3, np.float32), np.array([0]), {}, ValueError, r"logits must have 2 dimensions"),
    (np.zeros((2, 3), np.float32), np.array([0.0, 1.0]), {}, TypeError,
     r"labels has dtype float64.*integers in 0\.\.2.*astype\(np.int64\)"),
    (np.zeros((2, 3), np.float32), np.array([0, 1, 2]), {}, ValueError, r"labels must have shape \(2,\)"),
    (np.zeros((2, 3), np.float32), np.array([0, 1]), dict(label_smoothing=1.5), ValueError,
     r"label_smoothing must be a number in \[0, 1\], got 1\.5"),
    (np.zeros((0, 3), np.float32), np.zeros(0, np.int64), {}, ValueError, r"N = 0"),
    (np.zeros((2, 0), np.float32), np.zeros(2, np.int64), {}, ValueError, r"no columns \(C = 0.*at least one class"),
    (np.zeros((0, 0), np.float32), np.zeros(0, np.int64), dict(reduction="sum"), ValueError, r"C = 0"),
    (np.zeros((2, 3), np.float32), np.array([0, 1]), dict(count_correct="no"), TypeError,  # was true
     r"count_correct must be True or False, got 'no'"),
])
def test_errors(backend, logits, labels, kw, exc, match):
    with pytest.raises(exc, match=match):
        softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), **kw)


def test_labels_of_another_library_are_named(backend):
    """Labels as a torch tensor (a dtype of its own, torch.int64) are refused by name with the
    conversion, not with an AttributeError from reading that dtype's kind."""
    class TensorLike:
        dtype, shape, ndim = "torch.int64", (2,), 1

        def detach(self):
            return self

        def cpu(self):
            return self

    with pytest.raises(TypeError, match=r"labels must be a numpy or cupy array, got .*TensorLike \(torch\.int64\): "
                                        r"convert it first, e\.g\. labels = labels\.detach\(\)\.cpu\(\)\.numpy\(\)"):
        softmax_cross_entropy(backend.asarray(np.zeros((2, 3), np.float32)), TensorLike())


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_an_empty_batch_sums_to_zero_as_pytorchs(backend, reduction):
    """N = 0 (the last batch of a filtered data set): PyTorch's 'sum' is 0 and 'none' has no rows,
    dlogits is empty and nothing is correct; only the mean (of no rows) is refused, naming the way out."""
    logits, labels = backend.asarray(np.zeros((0, 3), np.float32)), backend.asarray(np.zeros(0, np.int64))
    loss, d, correct = softmax_cross_entropy(logits, labels, 0.1, count_correct=True, reduction=reduction)
    loss = backend.asnumpy(loss)
    assert loss.shape == (() if reduction == "sum" else (0,)) and loss.sum() == 0
    assert tuple(d.shape) == (0, 3) and int(backend.asnumpy(correct)) == 0
    with pytest.raises(ValueError, match=r"N = 0.*reduction='sum'"):
        softmax_cross_entropy(logits, labels)


@pytest.mark.parametrize("labels, bad", [([0, 3, 1], 3), ([-1, 0, 2], -1)])
def test_out_of_range_label(backend, labels, bad):
    """On the host a bad label is a ValueError; on a GPU (no readback per step) the loss and the
    bad row of dlogits are NaN, the other rows exactly those of a batch without the bad row."""
    logits = np.random.default_rng(4).standard_normal((3, 3)).astype(np.float32)
    labels = np.array(labels)
    if backend.name != "cupy":
        with pytest.raises(ValueError, match=rf"class indices in 0\.\.2.*found {bad}"):
            softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels))
        return
    loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels))
    loss, d = float(backend.asnumpy(loss)), backend.asnumpy(d)
    row = int(np.flatnonzero((labels < 0) | (labels >= 3))[0])
    assert np.isnan(loss) and np.isnan(d[row]).all()
    keep = np.arange(3) != row
    _, ref = softmax_cross_entropy(logits[keep], labels[keep])
    np.testing.assert_allclose(d[keep], ref * 2 / 3, rtol=1e-6)
    with pytest.raises(ValueError, match=rf"class indices in 0\.\.2.*found {bad}"):
        check_labels(backend.asarray(labels), 3)  # the explicit check, which reads back


def test_unchecked_out_of_range_label_gives_nan_not_garbage(backend):
    """The device path's rule, on every backend: a bad label's row is NaN in the loss and in
    dlogits, instead of reading another row's logit; the good rows are untouched."""
    logits = backend.asarray(np.zeros((3, 4), np.float32))
    loss, d = _softmax_cross_entropy_reference(logits, backend.asarray(np.array([0, 7, 1])), 0.0)
    d = backend.asnumpy(d)
    assert np.isnan(float(backend.asnumpy(loss))) and np.isnan(d[1]).all() and np.isfinite(d[[0, 2]]).all()
    good, _ = _softmax_cross_entropy_reference(logits, backend.asarray(np.array([0, 3, 1])), 0.0)
    assert float(backend.asnumpy(good)) == pytest.approx(np.log(4), rel=1e-6)


# ----------------------------------------------------------------------------- the kernel (kernels/loss.cu)
def _kernel_case(backend, n, c, dtype, eps, seed=5):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * 4).astype(dtype)
    labels = rng.integers(0, c, n)
    with kernels.launch_log() as log:
        loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), label_smoothing=eps)
    return logits, labels, backend.asnumpy(loss), backend.asnumpy(d), log.names


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
@pytest.mark.parametrize("n, c", [(1000, 10), (7, 100), (3, 1), (33, 37)])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_kernel_against_reference(backend, n, c, dtype, eps):
    """One launch gives the loss and dlogits of the reference (the same rounding rule) within the
    reduction lengths: C classes per row's sums, N rows in the loss. 1000 rows: 125 blocks, so
    the last-block sum runs over other blocks' rows."""
    if backend.name == "numpy":
        pytest.skip("the kernel runs on 'sim' and 'cupy'")
    logits, labels, loss, d, names = _kernel_case(backend, n, c, dtype, eps)
    assert names == ["softmax_cross_entropy"]
    want_loss, want_d = _softmax_cross_entropy_reference(logits, labels, eps)
    acc = np.float64 if dtype == np.float64 else np.float32
    u = unit_roundoff(acc)
    assert loss.dtype == acc and loss.shape == () and d.dtype == dtype and d.shape == (n, c)
    assert abs(float(loss) - float(want_loss)) <= u * (n + c + 16) * max(1.0, abs(float(want_loss)))
    want_d = want_d.astype(np.float64)
    scale = (np.abs(want_d) * n + abs(eps / c) + (1 - eps)) / n
    # The final rounding to dtype: one unit in its last place, absolute among float16's subnormals.
    tol = u * (c + 16) * scale + unit_roundoff(dtype) * np.abs(want_d) + smallest_subnormal(dtype)
    assert np.all(np.abs(d.astype(np.float64) - want_d) <= tol), np.max(np.abs(d.astype(np.float64) - want_d) / tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
def test_kernel_sum_is_deterministic_and_leaves_its_ticket_at_zero(backend, dtype):
    """The same bits from every launch, in either thread order, in every build, and the last
    block's ticket reset (a ticket left over would make the next launch's sum come from a block
    that is not last)."""
    if backend.name == "numpy":
        pytest.skip("the kernel runs on 'sim' and 'cupy'")
    runs = [_kernel_case(backend, 3000, 10, dtype, 0.2)[2:4] for _ in range(2)]
    if backend.name == "sim":
        with kernels.sim_schedule("reverse"):
            runs.append(_kernel_case(backend, 3000, 10, dtype, 0.2)[2:4])
    for loss, d in runs[1:]:
        assert loss.tobytes() == runs[0][0].tobytes() and d.tobytes() == runs[0][1].tobytes()
    assert all(not backend.asnumpy(t).any() for t in kernels._tickets.values())


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_kernel_marks_bad_rows_nan(backend, eps):
    """Unchecked labels outside 0..C-1 and NaN logits: that row's dlogits and the loss are NaN,
    every other row is the row of a batch without it."""
    if backend.name == "numpy":
        pytest.skip("the kernel runs on 'sim' and 'cupy'")
    from gpuconv.ops import _launch_loss
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((40, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 40)
    labels[3], labels[17] = 10, -1
    logits[25, 4] = np.nan
    target = "cuda" if backend.name == "cupy" else "sim"
    labels[25] = 4  # the NaN row's argmax: counted as right, as NumPy's argmax says
    loss, d, correct = _launch_loss.softmax_cross_entropy_kernel(backend.asarray(logits), backend.asarray(labels), eps,
                                                                 True, target=target)
    loss, d = float(backend.asnumpy(loss)), backend.asnumpy(d)
    assert int(backend.asnumpy(correct)) == int((np.argmax(logits, axis=1) == labels).sum())  # bad labels: never
    bad = np.zeros(40, bool)
    bad[[3, 17, 25]] = True
    assert np.isnan(loss) and np.isnan(d[bad]).all() and np.isfinite(d[~bad]).all()
    _, good = _softmax_cross_entropy_reference(logits[~bad], labels[~bad], eps)
    np.testing.assert_allclose(d[~bad], good * (37 / 40), rtol=1e-5, atol=1e-8)


def _argmax_cases():
    """Logits whose argmax needs NumPy's rules: ties (the first index wins), NaNs (the first NaN
    wins, before any value), -inf rows, -0.0 against 0.0, more classes than a warp's lanes (the
    winner in another lane's stride), and the label on either side of the winner."""
    rng = np.random.default_rng(11)
    n, c = 300, 70
    z = rng.integers(-3, 4, (n, c)).astype(np.float32)   # small integers: ties everywhere
    z[5] = -np.inf
    z[6, [40, 9]] = np.nan
    z[7, [3, 50]] = np.nan
    z[8] = 0.0
    z[8, 2] = -0.0
    z[9, 33] = 99.0  # the winner in lane 1's second pass
    z[10, 69] = 99.0
    labels = np.argmax(z, axis=1)
    labels[::3] = rng.integers(0, c, len(labels[::3]))  # every third label at random: some wrong
    return z, labels


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16, np.float16])
def test_count_correct_is_numpys_argmax(backend, dtype):
    """count_correct: the number of rows whose NumPy argmax is the label, on every backend; one
    launch on the kernel targets, which also gives the loss and dlogits of the plain call."""
    z, labels = _argmax_cases()
    z = z.astype(dtype)
    want = int((np.argmax(z.astype(np.float64), axis=1) == labels).sum())
    assert 0 < want < len(labels)
    with kernels.launch_log() as log, np.errstate(invalid="ignore"):  # the -inf row: inf - inf in the reference
        loss, d, correct = softmax_cross_entropy(backend.asarray(z), backend.asarray(labels), 0.1, count_correct=True)
    assert correct.shape == () and correct.dtype == np.int32 and int(backend.asnumpy(correct)) == want
    if backend.name != "numpy":
        assert log.names == ["softmax_cross_entropy"]
    with np.errstate(invalid="ignore"):
        plain_loss, plain_d = softmax_cross_entropy(backend.asarray(z), backend.asarray(labels), 0.1)
    assert backend.asnumpy(loss).tobytes() == backend.asnumpy(plain_loss).tobytes()
    assert backend.asnumpy(d).tobytes() == backend.asnumpy(plain_d).tobytes()


def test_count_correct_is_the_same_in_either_schedule():
    """The simulator's two thread orders (a race in the count would differ between them)."""
    z, labels = _argmax_cases()
    counts = []
    for order in ("forward", "reverse"):
        with gpuconv.default_device("sim"), kernels.sim_schedule(order), kernels.launch_log() as log:
            counts.append(int(softmax_cross_entropy(z, labels, count_correct=True)[2]))
        assert log.names == ["softmax_cross_entropy"]
    assert counts[0] == counts[1] == int((np.argmax(z, axis=1) == labels).sum())


# ----------------------------------------------------------------------------- grad_scale (fp16's loss scale)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, ml_dtypes.bfloat16, np.float64])
def test_grad_scale_scales_before_the_rounding(backend, dtype):
    """dlogits with ``grad_scale=S`` is the float32 gradient times S, rounded once to the logits'
    dtype: at N=4096 most of float16's unscaled gradients are subnormal or zero, so scaling the
    rounded float16 gradient (what a scale applied afterwards does) keeps far fewer bits. The
    loss is unchanged; the scale is read on the device (a 0-d array there) or given as a number."""
    rng = np.random.default_rng(3)
    n, c = 4096, 10
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    s = 2.0 ** 16
    acc = np.float64 if dtype == np.float64 else np.float32
    x, y = backend.asarray(logits), backend.asarray(labels)
    loss1, d1 = softmax_cross_entropy(x, y, 0.1)
    loss_s, d_s = softmax_cross_entropy(x, y, 0.1, grad_scale=backend.asarray(np.asarray(s, np.float32)))
    loss_n, d_n = softmax_cross_entropy(x, y, 0.1, grad_scale=s)
    assert backend.asnumpy(loss_s).tobytes() == backend.asnumpy(loss1).tobytes()
    assert backend.asnumpy(d_s).tobytes() == backend.asnumpy(d_n).tobytes() and d_s.dtype == dtype
    want = _softmax_cross_entropy_reference(logits, labels, 0.1)[1]  # (rounded: the comparison's scale)
    exact = (reference(logits, labels, 0.1)[1] * s).astype(np.float64)
    got = backend.asnumpy(d_s).astype(np.float64)
    # float32 gradient within C-length sums, then one rounding to dtype (S a power of two: exact)
    tol = unit_roundoff(acc) * (c + 16) * (np.abs(exact) + s / n) + unit_roundoff(dtype) * np.abs(exact)
    assert np.all(np.abs(got - exact) <= tol)
    if dtype == np.float16:  # the unscaled float16 gradient, scaled afterwards, lost most of its bits
        late = backend.asnumpy(d1).astype(np.float64) * s
        rel = lambda d: (np.abs(d - exact) / np.abs(exact)).max()  # noqa: E731
        assert rel(got) < 2 * unit_roundoff(np.float16) < 0.1 < rel(late)
        assert (np.asarray(want) == 0).any() and not (got == 0).any()


@pytest.mark.parametrize("bad, exc, match", [
    (np.ones(2, np.float32), TypeError, "0-d float array"),
    (np.asarray(3, np.int32), TypeError, "0-d float array"),
    ("2", TypeError, "grad_scale"),
])
def test_grad_scale_errors(backend, bad, exc, match):
    x = backend.asarray(np.zeros((2, 3), np.float32))
    y = backend.asarray(np.array([0, 1]))
    with pytest.raises(exc, match=match):
        softmax_cross_entropy(x, y, grad_scale=bad if isinstance(bad, str) else backend.asarray(bad))


@pytest.mark.parametrize("reduction", ["sum", "none"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_reductions_kernel_against_reference(backend, reduction, dtype):
    """'sum': the rows' losses added, dlogits = softmax - target (no 1/N); 'none': the (N,) row
    losses; the kernel's agree with the reference within the sums' rounding."""
    rng = np.random.default_rng(8)
    n, c = 300, 10
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), 0.1, reduction=reduction)
    want_loss, want_d = _softmax_cross_entropy_reference(logits, labels, 0.1, reduction=reduction)
    mean_d = _softmax_cross_entropy_reference(logits.astype(np.float32), labels, 0.1)[1]
    loss = backend.asnumpy(loss)
    assert loss.shape == ((n,) if reduction == "none" else ()) and loss.dtype == np.float32
    u = unit_roundoff(np.float32)
    scale = np.abs(want_loss).sum() if reduction == "sum" else np.abs(want_loss)
    assert np.all(np.abs(loss - want_loss) <= u * (n + c + 16) * scale)
    got_d = backend.asnumpy(d).astype(np.float64)
    np.testing.assert_allclose(got_d, want_d.astype(np.float64), rtol=4 * unit_roundoff(dtype), atol=1e-6)
    np.testing.assert_allclose(want_d.astype(np.float64), mean_d * n, rtol=4 * unit_roundoff(dtype), atol=1e-6)
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\)"):
        softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), reduction="max")


def weighted_definition(logits, labels, eps, weight, ignore_index, reduction):
    """PyTorch's cross_entropy with class weights and ignore_index, written from its definition in
    float64: a kept row's loss is -sum_j q_ij w_j log p_ij with q the smoothed target, the label's
    term weighted by w_label, the smoothing's by each class's own weight; the mean divides by the
    kept rows' w_label summed."""
    z = logits.astype(np.float64)
    n, c = z.shape
    w = np.ones(c) if weight is None else weight.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    kept = labels != ignore_index if ignore_index is not None else np.ones(n, bool)
    rows = np.zeros(n)
    for i in np.flatnonzero(kept):
        rows[i] = -(1 - eps) * w[labels[i]] * logp[i, labels[i]] - (eps / c) * (w * logp[i]).sum()
    if reduction == "none":
        return rows
    return rows.sum() / (w[labels[kept]].sum() if reduction == "mean" else 1.0)


CLASS_WEIGHT_CASES = [  # (weights?, ignore_index, smoothing)
    (True, None, 0.0), (True, None, 0.2), (False, -100, 0.0), (False, 2, 0.2), (True, -100, 0.2), (True, 0, 0.0)]


@pytest.mark.parametrize("weighted, ignore_index, eps", CLASS_WEIGHT_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_weights_and_ignore_index_float64(backend, weighted, ignore_index, eps, reduction):
    """PyTorch's weight= and ignore_index= in float64: the loss is the definition's; dlogits is its
    gradient by central differences (ignored rows: exactly 0); the right-prediction count leaves
    ignored rows out."""
    rng = np.random.default_rng(11)
    n, c = 9, 5
    logits = rng.standard_normal((n, c)) * 2
    labels = rng.integers(0, c, n)
    if ignore_index == -100:
        labels[[1, 4]] = -100
    elif ignore_index is not None:  # an ignored row whose prediction is its label: not counted
        labels[0] = ignore_index
        logits[0, ignore_index] += 10
    weight = rng.random(c) + 0.3 if weighted else None
    dev_w = None if weight is None else backend.asarray(weight)
    loss, d, correct = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), eps, True,
                                             reduction=reduction, weight=dev_w, ignore_index=ignore_index)
    want = weighted_definition(logits, labels, eps, weight, ignore_index, reduction)
    np.testing.assert_allclose(backend.asnumpy(loss), want, rtol=1e-12, atol=1e-14)
    kept = labels != ignore_index if ignore_index is not None else np.ones(n, bool)
    assert int(backend.asnumpy(correct)) == int(((logits.argmax(1) == labels) & kept).sum())
    got_d = backend.asnumpy(d)
    assert np.all(got_d[~kept] == 0)
    f = (lambda z: weighted_definition(z, labels, eps, weight, ignore_index, reduction).sum())
    num = numerical_gradient_array(lambda z: np.asarray(f(z)), logits.copy())
    assert relative_error(got_d, num) < 1e-6


def test_every_row_ignored_gives_a_nan_mean_and_zero_gradients(backend):
    """PyTorch's NaN mean and zero gradient, without a NumPy warning from inside the op (the
    divisor 0 is what the mean over no rows is, not the caller's mistake)."""
    logits = backend.asarray(np.ones((3, 4), np.float32))
    labels = backend.asarray(np.array([-100, -100, -100]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, d = softmax_cross_entropy(logits, labels, ignore_index=-100)
    assert np.isnan(float(backend.asnumpy(loss))) and np.all(backend.asnumpy(d) == 0)
    loss, _ = softmax_cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    assert float(backend.asnumpy(loss)) == 0.0


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16, np.float64])
@pytest.mark.parametrize("weighted, ignore_index, eps", CLASS_WEIGHT_CASES)
def test_class_weights_kernel_against_reference(backend, dtype, weighted, ignore_index, eps):
    """The kernel's weighted and ignoring loss and dlogits against the reference (the same
    rounding rule, the same divisor bits) within the reduction lengths; 600 rows: 75 blocks."""
    if backend.name == "numpy":
        pytest.skip("the kernel runs on 'sim' and 'cupy'")
    rng = np.random.default_rng(12)
    n, c = 600, 10
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    if ignore_index == -100:
        labels[rng.random(n) < 0.2] = -100
    acc = np.float64 if dtype == np.float64 else np.float32
    weight = (rng.random(c) + 0.3).astype(acc) if weighted else None
    with kernels.launch_log() as log:
        loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), eps,
                                        weight=None if weight is None else backend.asarray(weight),
                                        ignore_index=ignore_index)
    assert "softmax_cross_entropy" in log.names
    want_loss, want_d = _softmax_cross_entropy_reference(logits, labels, eps, weight=weight, ignore_index=ignore_index)
    u = unit_roundoff(acc)
    assert abs(float(backend.asnumpy(loss)) - float(want_loss)) <= u * (n + c + 16) * max(1.0, abs(float(want_loss)))
    got_d, want_d = backend.asnumpy(d).astype(np.float64), want_d.astype(np.float64)
    tol = u * (c + 16) * (np.abs(want_d) + 2.0 / n) + unit_roundoff(dtype) * np.abs(want_d) + smallest_subnormal(dtype)
    assert np.all(np.abs(got_d - want_d) <= tol), np.max(np.abs(got_d - want_d) / tol)
    if ignore_index is not None:
        assert np.all(got_d[labels == ignore_index] == 0)


def test_class_weights_and_ignore_index_against_pytorch(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    n, c = 50, 7
    logits = rng.standard_normal((n, c)) * 2
    labels = rng.integers(0, c, n)
    labels[::5] = -100
    weight = rng.random(c) + 0.2
    for reduction in ("mean", "sum", "none"):
        z = torch.tensor(logits, requires_grad=True)
        want = torch.nn.functional.cross_entropy(z, torch.tensor(labels), weight=torch.tensor(weight),
                                                 ignore_index=-100, label_smoothing=0.1, reduction=reduction)
        (want_d,) = torch.autograd.grad(want.sum(), z)
        loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels), 0.1, reduction=reduction,
                                        weight=backend.asarray(weight), ignore_index=-100)
        np.testing.assert_allclose(backend.asnumpy(loss), want.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(backend.asnumpy(d), want_d.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("kw, exc, match", [
    ({"weight": np.ones(3)}, ValueError, r"weight must be a float array of one weight per class, shape \(4,\)"),
    ({"weight": np.ones(4, np.int64)}, ValueError, "weight must be a float array.*dtype int64"),
    ({"weight": [1.0, 1, 1, 1]}, TypeError, "weight"),
    ({"ignore_index": 1.5}, TypeError, r"ignore_index must be an int .*or None, got 1.5"),
    ({"ignore_index": True}, TypeError, "ignore_index must be an int"),
    ({"ignore_index": 2**63}, ValueError, r"ignore_index=9223372036854775808 is not an int64 label"),  # sim: OverflowError
])
def test_class_weight_and_ignore_index_errors(backend, kw, exc, match):
    kw = {k: backend.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    with pytest.raises(exc, match=match):
        softmax_cross_entropy(backend.asarray(np.zeros((2, 4), np.float32)), backend.asarray(np.array([0, 1])), **kw)


def test_class_weights_in_bfloat16_are_taken_as_every_float_dtype_is(backend):
    """A bfloat16 weight was refused as 'not a float array' (its NumPy kind is 'V'), by the op and by
    CrossEntropyLoss, while float16 passed: it weighs as its float32 values do."""
    from gpuconv.layers import CrossEntropyLoss
    from gpuconv.precision import bfloat16
    logits = backend.asarray(np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32))
    labels = backend.asarray(np.array([0, 1, 2, 1]))
    w = np.array([0.5, 2.0, 1.25], np.float32)
    want = backend.asnumpy(softmax_cross_entropy(logits, labels, weight=backend.asarray(w))[0])
    got = backend.asnumpy(softmax_cross_entropy(logits, labels, weight=backend.asarray(w.astype(bfloat16)))[0])
    assert got == want
    assert backend.asnumpy(CrossEntropyLoss(weight=backend.asarray(w.astype(bfloat16)))(logits, labels)) == want


def test_an_ignored_label_passes_the_label_check_and_others_still_fail():
    check_labels(np.array([0, -100, 3]), 4, ignore_index=-100)
    with pytest.raises(ValueError, match=r"0..3 or the ignored label -100 .*found 7"):
        check_labels(np.array([0, -100, 7]), 4, ignore_index=-100)
    with pytest.raises(ValueError, match=r"found -100"):
        softmax_cross_entropy(np.zeros((2, 4)), np.array([0, -100]))


def test_a_minus_inf_logit_off_the_label_gives_a_finite_loss_without_smoothing(backend):
    """Without smoothing the loss reads only the label's log-probability: a -inf logit in another
    column (a masked class) has probability 0 and leaves the loss and dlogits finite, as in
    PyTorch (with smoothing, its log-probability -inf enters the loss, which is then inf)."""
    logits = np.array([[0.0, -np.inf, 1.0], [2.0, 0.5, -np.inf]], np.float32)
    labels = np.array([0, 1])
    loss, d = softmax_cross_entropy(backend.asarray(logits), backend.asarray(labels))
    want_loss, want_d = reference(np.where(np.isinf(logits), -1e30, logits), labels, 0.0)
    np.testing.assert_allclose(float(backend.asnumpy(loss)), want_loss, rtol=1e-6)
    np.testing.assert_allclose(backend.asnumpy(d), want_d, rtol=1e-6, atol=1e-7)


def test_checks_passed_are_memoized_by_signature_and_errors_never(monkeypatch):
    """The checks that read no label's value run once per signature and argument values (types
    included: 0 and 0.0, True and 1 are told apart); the labels' range is checked at every call, and
    every bad call is refused again with its own message."""
    from gpuconv.ops import loss as loss_mod
    rng = np.random.default_rng(6)
    logits, labels = rng.standard_normal((4, 3)), np.array([0, 2, 1, 2])
    loss_mod._CHECKED.clear()
    runs = []
    real = loss_mod._check_args
    monkeypatch.setattr(loss_mod, "_check_args", lambda *a: runs.append(a) or real(*a))
    first = softmax_cross_entropy(logits, labels)
    second = softmax_cross_entropy(logits, labels)
    assert len(runs) == 1 and all(a.tobytes() == b.tobytes() for a, b in zip(first, second))
    for _ in range(2):
        with pytest.raises(ValueError, match="labels must be class indices in 0..2"):
            softmax_cross_entropy(logits, np.array([0, 3, 1, 2]))
        with pytest.raises(ValueError, match="reduction must be one of"):
            softmax_cross_entropy(logits, labels, reduction="avg")
        with pytest.raises(ValueError, match="label_smoothing must be a number in"):
            softmax_cross_entropy(logits, labels, label_smoothing=True)
        with pytest.raises(TypeError, match="count_correct must be True or False"):
            softmax_cross_entropy(logits, labels, count_correct=1)
        with pytest.raises(TypeError, match="labels has dtype float64"):
            softmax_cross_entropy(logits, labels.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.1}, {"reduction": "sum"}, {"reduction": "none"},
                                    {"count_correct": True}, {"grad_scale": 8.0}])
def test_host_path_of_the_reference_is_the_general_codes_bit_for_bit(monkeypatch, dtype, kwargs):
    """NumPy logits without class weights or an ignored label, every label a class, take the
    reference's host path (the general code without the masks that then select every row): the
    same loss, dlogits and count as the general code, bit for bit."""
    from gpuconv.ops import loss as loss_mod
    rng = np.random.default_rng(7)
    logits, labels = (3 * rng.standard_normal((5, 4))).astype(dtype), rng.integers(0, 4, 5)
    fast = softmax_cross_entropy(logits, labels, **kwargs)
    monkeypatch.setattr(loss_mod, "_all_classes", lambda *a: False)  # the masks' path
    general = softmax_cross_entropy(logits, labels, **kwargs)
    assert len(fast) == len(general)
    for a, b in zip(fast, general):
        assert a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
