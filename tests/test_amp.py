"""Mixed-precision training: float32 masters, bf16/fp16 compute, loss scaling decided on the device.

The ops' low-precision arithmetic is tested per op (test_precision*.py); here: the parameter
copies, the gradient path back into float32, the optimizer's device-side skip, the loss scaler,
and the trainer in every precision on 'cpu' and 'sim', checkpoints included."""
from __future__ import annotations

import gc
import warnings

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import amp, backend, kernels, ops
from gpuconv.data import DeviceLoader
from gpuconv.layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from gpuconv.optim import SGD, Adam
from gpuconv.trainer import Trainer, evaluate
from test_optim import KERNEL_DEVICES

BF16 = amp.compute_dtype("bf16")


def small_net(seed=0):
    return Sequential(Conv2d(3, 6, 3, padding=1, seed=seed), BatchNorm2d(6), ReLU(), MaxPool2d(2),
                      Conv2d(6, 8, 3, padding=1, seed=seed + 1), ReLU(), MaxPool2d(4), Flatten(),
                      Linear(8 * 4 * 4, 10, seed=seed + 2))


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n)


# ----------------------------------------------------------------------------- parameters and gradients
def test_autocast_makes_compute_copies_of_conv_and_linear_only_and_clears_them():
    net = small_net()
    with amp.autocast(net, "bf16") as dt:
        assert dt == BF16
        for name, p in net.named_parameters():
            if name.startswith("1."):  # batch norm: float32, as its statistics
                assert p.compute is None and p.value.dtype == np.float32
            else:
                assert p.value.dtype == BF16 and p.data.dtype == np.float32
                np.testing.assert_array_equal(p.value, p.data.astype(BF16))
    assert all(p.compute is None for p in net.parameters())
    with amp.autocast(net, "fp32") as dt:
        assert dt == np.float32 and all(p.compute is None for p in net.parameters())


def test_a_layer_subclass_whose_parameter_amp_does_not_cast_is_told_to_list_it():
    """A Layer subclass computing with a Parameter of its own that it does not name in
    _low_precision_params meets a bfloat16 batch under autocast with a float32 weight: the message
    said to run in mixed precision, which the step already does; it names the parameter and the
    class attribute to list it in."""
    from gpuconv import nn

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.ones((4, 3, 3, 3), np.float32))

        def forward(self, x):
            y, self.cache = ops.conv2d_forward(x, self.w.value, padding=1)
            return y

    net = Sequential(Mine(), Flatten(), Linear(4 * 8 * 8, 3, seed=0))
    x = np.ones((2, 3, 8, 8), np.float32)
    with pytest.raises(TypeError, match=r"Mine\.w get no low-precision copy.*_low_precision_params = \('w',\) in Mine"):
        with amp.autocast(net, "bf16") as dt:
            net(amp.cast_input(x, dt))
    Mine._low_precision_params = ("w",)
    with amp.autocast(net, "bf16") as dt:
        assert net(amp.cast_input(x, dt)).dtype == BF16


def test_a_mixed_precision_step_walks_the_model_once_to_cast_and_clear(monkeypatch):
    """autocast casts and clears the parameters of one walk of the model (each walk is a Python
    call per layer, every step), and clears every copy it made, also after a failed forward."""
    net = small_net()
    params = net.parameters()
    walks = []
    real = Sequential.named_modules
    monkeypatch.setattr(Sequential, "named_modules", lambda self, *a: walks.append(self) or real(self, *a))
    with amp.autocast(net, "bf16"):
        assert sum(p.compute is not None for p in params) == 6  # conv and linear weights and biases
    assert walks == [net] and all(p.compute is None for p in params)
    with pytest.raises(RuntimeError, match="in the forward"):
        with amp.autocast(net, "bf16"):
            raise RuntimeError("in the forward")
    assert all(p.compute is None for p in params)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_backward_accumulates_float32_gradients(precision):
    net = small_net()
    x, y = batch()
    with amp.autocast(net, precision) as dt:
        logits = net(x.astype(dt))
        assert logits.dtype == dt
        loss, dlogits = ops.softmax_cross_entropy(logits, y)
        assert loss.dtype == np.float32 and dlogits.dtype == dt
        net.backward(dlogits, need_dx=False)
    for name, p in net.named_parameters():
        assert p.grad.dtype == np.float32 and p.data.dtype == np.float32, name
    # Against the float32 gradient of the same network: close, to the format's precision.
    ref = small_net()
    loss32, d32 = ops.softmax_cross_entropy(ref(x), y)
    ref.backward(d32, need_dx=False)
    # Against the float32 gradients: the same up to rounding, amplified by the cancellations of
    # batch norm's backward and of sums over 8192 terms (a 1e-4 relative change of the float32
    # input alone moves the first conv's weight gradient by 3%). The per-op error bounds are in
    # test_precision.py; this catches a gradient of the wrong scale (an unscaled fp16 gradient is
    # 65536x) or routed wrong.
    for (name, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        if name == "0.bias":
            continue  # a bias before batch norm: its gradient is zero up to rounding in either precision
        err = np.linalg.norm(p.grad - q.grad) / np.linalg.norm(q.grad)
        assert err < 0.5, f"{name}: {err}"


def test_a_parameter_gradient_of_another_dtype_lands_in_the_master_dtype():
    p = Conv2d(1, 1, 1).weight
    p.accumulate(np.ones(p.shape, BF16))
    p.accumulate(np.ones(p.shape, np.float16))
    assert p.grad.dtype == np.float32 and (p.grad == 2).all()


# ----------------------------------------------------------------------------- the device-side skip
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                  lambda ps: Adam(ps, lr=0.01)], ids=["sgd", "adam"])
def test_optimizer_skip_leaves_parameters_and_state_as_they_were(make):
    net = small_net()
    x, y = batch()
    opt = make(net.parameters())

    def grads():
        opt.zero_grad()
        _, d = ops.softmax_cross_entropy(net(x), y)
        net.backward(d, need_dx=False)

    grads()
    opt.step(skip=np.asarray(True))  # the first step skipped: slots it created read zero
    assert all((p.data == q).all() for p, q in zip(net.parameters(), [p.data.copy() for p in net.parameters()]))
    for state in opt.state:
        for name in opt._slots:
            assert not state[name].any()
    twin, twin_opt = small_net(), make(small_net().parameters())
    twin_opt = make(twin.parameters())
    for _ in range(2):  # the skipped step changed nothing: Adam's step count t did not advance either
        for net_, opt_ in ((net, opt), (twin, twin_opt)):
            opt_.zero_grad()
            _, d = ops.softmax_cross_entropy(net_(x), y)
            net_.backward(d, need_dx=False)
        before = [p.data.copy() for p in net.parameters()]
        opt.step(skip=np.asarray(False))
        twin_opt.step()
        assert any((p.data != b).any() for p, b in zip(net.parameters(), before))
    for p, q in zip(net.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    saved, twin_saved = opt.state_dict(), twin_opt.state_dict()
    assert saved.keys() == twin_saved.keys()
    for key in saved:  # Adam's counts read 2 in both, a Python int in the state dict
        assert np.array_equal(saved[key], twin_saved[key]) and type(saved[key]) is type(twin_saved[key]), key


# ----------------------------------------------------------------------------- the loss scaler
def test_loss_scaler_repr_shows_its_scale_and_rule():
    scaler = amp.LossScaler(init_scale=1024.0, growth_interval=3)
    assert repr(scaler) == "LossScaler(scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)"
    scaler.factor(np.zeros(1, np.float32))
    scaler.update(np.asarray(True))  # an overflow halves the scale
    assert repr(scaler).startswith("LossScaler(scale=512.0,")


def test_loss_scaler_backs_off_on_overflow_and_grows_after_clean_steps():
    s = amp.LossScaler(init_scale=8.0, growth_interval=3)
    p = Conv2d(1, 1, 1).weight
    p.grad = np.full(p.shape, 16.0, np.float32)
    found = s.unscale([p])
    assert not found and (p.grad == 2.0).all()
    scales = []
    for inf in [False, False, True, False, False, False, False]:
        s.update(np.asarray(inf))
        scales.append(s.current_scale)
    assert scales == [8.0, 8.0, 4.0, 4.0, 4.0, 8.0, 8.0]  # grown after the 3rd clean step in a row
    p.grad = np.array([[[[np.inf]]]], np.float32)
    assert bool(s.unscale([p]))
    state = s.state_dict()
    t = amp.LossScaler()
    t.load_state_dict(state)
    assert t.current_scale == 8.0 and t.state_dict() == state
    with pytest.raises(ValueError, match="growth_factor > 1"):
        amp.LossScaler(growth_factor=1.0)
    d = np.ones(3, np.float16)
    assert s.scale(d).dtype == np.float16 and (s.scale(d) == 8).all()


@pytest.mark.parametrize("device", ["cpu"] + KERNEL_DEVICES)
def test_a_scaler_state_loaded_after_its_first_use_is_written_into_its_arrays(device):
    """LossScaler.load_state_dict once the scale is on the device writes the saved scale and count
    into the arrays the scaler has, as PyTorch's GradScaler fills its own: it put new host arrays
    in their place, so a step captured as a CUDA graph went on with the arrays of its capture (the
    loaded scale never used, current_scale reporting it all the same), and a capture after the load
    would have copied the new ones to the GPU inside the capture, which CUDA refuses."""
    with gpuconv.default_device(device):
        grad = backend.to_device(np.ones(3, np.float32))
        saved = amp.LossScaler(init_scale=1024.0, growth_interval=3)
        saved.factor(grad)
        saved.update(backend.to_device(np.asarray(False)))  # one clean step counted
        s = amp.LossScaler(init_scale=8.0, growth_interval=3)
        scale, tracker = s.factor(grad), s.tracker
        s.load_state_dict(saved.state_dict())
        assert s.scale_ is scale and s.tracker is tracker  # (what a captured step reads and writes)
        assert float(backend.asnumpy(scale)) == 1024.0 and int(backend.asnumpy(tracker)) == 1
        assert s.state_dict() == saved.state_dict()
        s.update(backend.to_device(np.asarray(False)))
        s.update(backend.to_device(np.asarray(False)))
        assert s.current_scale == 2048.0  # grown after the 3rd clean step, the loaded one counted
    fresh = amp.LossScaler()
    fresh.load_state_dict(saved.state_dict())  # (before any use: moved to the device at the first)
    assert fresh.current_scale == 1024.0 and int(fresh.tracker) == 1


def test_loss_scale_never_grows_past_float32():
    """Clean steps at the top of float32's range (all-zero gradients do that): the scale stays
    finite, and an overflow then backs it off (an infinite scale would stay infinite)."""
    s = amp.LossScaler(init_scale=2.0 ** 126, growth_interval=1)
    s._ensure(np.zeros(1, np.float32))
    for _ in range(3):
        s.update(np.asarray(False))
    assert s.current_scale == 2.0 ** 127
    s.update(np.asarray(True))
    assert s.current_scale == 2.0 ** 126


@pytest.mark.parametrize("init_scale", [float("inf"), 1e39, 1e-39, 0.0, float("nan")])
def test_a_loss_scale_float32_cannot_hold_is_refused(init_scale):
    """Held in float32, 1e39 would be inf (and backing off keeps it inf), 1e-39 a scale whose
    reciprocal is inf: every step skipped, the weights never trained, no error anywhere."""
    with pytest.raises(ValueError, match=r"1\.2e-38 <= init_scale <= 3\.4e38"):
        amp.LossScaler(init_scale=init_scale)
    for ok in (2.0 ** -126, 2.0 ** 127):  # the normal float32 range's ends: both scale and unscale finitely
        s = amp.LossScaler(init_scale=ok)
        p = Conv2d(1, 1, 1).weight
        p.grad = np.ones(p.shape, np.float32)
        assert not bool(s.unscale([p])) and 0 < s.current_scale < np.inf



@pytest.mark.parametrize("device", ["cpu"] + KERNEL_DEVICES)
def test_fp16_step_scales_the_loss_gradient_before_rounding_it(device):
    """fp16's training step scales dlogits while it is float32, then rounds it once: at a batch
    of 4096 most unscaled dlogits are float16 subnormals, so scaling after the rounding would
    keep a few bits of each (and flush the smallest to zero)."""
    from gpuconv.ops.loss import _softmax_cross_entropy_reference

    class Recording(Sequential):
        def forward(self, x):
            self.logits = super().forward(x)
            return self.logits

        def backward(self, dy, need_dx=True):
            self.dy = dy
            return super().backward(dy, need_dx=need_dx)

    rng = np.random.default_rng(0)
    n, k = 4096, 16
    x, y = rng.standard_normal((n, k)).astype(np.float32), rng.integers(0, 10, n)
    with gpuconv.default_device(device):
        net, scaler = Recording(Linear(k, 10, seed=1)), amp.LossScaler()
        amp.training_step(net, SGD(net.parameters(), lr=0.0), backend.to_device(x, device),
                          backend.to_device(y, device), "fp16", scaler)
    logits, dy = backend.asnumpy(net.logits), backend.asnumpy(net.dy)
    assert logits.dtype == dy.dtype == np.float16
    g32 = _softmax_cross_entropy_reference(logits.astype(np.float32), y, 0.0)[1]
    want = (g32 * np.float32(scaler.init_scale)).astype(np.float16)  # S = 2^16: exact in float32
    assert (np.abs(g32) < 2.0 ** -14).mean() > 0.5  # mostly below float16's normal range, unscaled
    ulp = np.spacing(np.abs(want)).astype(np.float64)  # the kernel's exp/log: an ulp of float16 at most
    assert np.all(np.abs(dy.astype(np.float64) - want) <= (0 if device == "cpu" else 1) * ulp)

def test_a_loss_scale_fallen_out_of_float32s_range_stops_training():
    """After about 140 overflows in a row the loss scale falls below float32's normal range, from
    where no step trains again (the scaled gradients vanish in float16; a few halvings on, 1/S
    overflows and every step is skipped), while the loss stays finite (it is computed before the
    backward). The trainer stops with TrainingDiverged at the next readback instead of going on
    training nothing."""
    from gpuconv.trainer import TrainingDiverged
    x, y = batch()
    net = small_net()
    scaler = amp.LossScaler(init_scale=2.0 ** -125)  # two halvings from the end of the normal range
    trainer = Trainer(net, SGD(net.parameters(), lr=0.05), log_every=1, progress=False, precision="fp16",
                      loss_scaler=scaler)
    before = [p.data.copy() for p in net.parameters()]
    trainer.train_step(x, y)
    trainer._flush()  # the scale is still a normal float32 (2**-125, or 2**-126 after an overflow): goes on
    scaler.scale_ = np.asarray(2.0 ** -127, np.float32)  # (what the next halving gives: subnormal)
    trainer.train_step(x, y)
    with pytest.raises(TrainingDiverged, match=r"loss scale fell to .* below float32's normal range.* trains nothing"):
        trainer._flush()
    assert all(np.array_equal(a, p.data) for a, p in zip(before, net.parameters()))


def test_the_loss_scale_check_reads_nothing_back_of_its_own():
    """fp16's loss scale, checked at each readback of the interval's losses, comes back in that one
    transfer, and the interval's metrics record takes it from there: read on its own, it was a
    second readback (and sync) per interval."""
    with gpuconv.default_device("sim"):
        net = Sequential(Conv2d(3, 4, 3, padding=1), ReLU(), MaxPool2d(4), Flatten(), Linear(4 * 2 * 2, 10))
        x, y = (backend.to_device(a, "sim") for a in batch(n=2))
        trainer = Trainer(net, SGD(net.parameters(), lr=0.01), log_every=2, progress=False, precision="fp16")
        trainer.train_step(x[:, :, :8, :8], y)
        backend.transfers.reset()
        stats = trainer._flush()
        assert backend.transfers.device_to_host == 1 and stats["steps"] == 1
        fields = trainer._telemetry()  # the interval's metrics record: the scale that came back, no readback
        assert backend.transfers.device_to_host == 1 and fields["loss_scale"] == trainer.scaler.current_scale


# ----------------------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def images(request):
    from conftest import SUBSET
    from gpuconv.data import load_cifar10
    cifar = load_cifar10(SUBSET.parent)
    return cifar.train.images[:128], cifar.train.labels[:128]


def fit(device, precision, images, epochs=2, out=None, resume=False, scaler=None, stop_after=None):
    with gpuconv.default_device(device):
        net = small_net()
        loader = DeviceLoader(images[0], images[1], 32, shuffle=True, augment=True, seed=1)
        opt = SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        trainer = Trainer(net, opt, out_dir=out, log_every=1, progress=False, precision=precision,
                          loss_scaler=scaler, checkpoint_every=stop_after)
        losses = []
        real = trainer.train_step

        def step(x, y):
            real(x, y)
            if stop_after is not None and trainer.step == stop_after and not resume:
                raise KeyboardInterrupt
        trainer.train_step = step
        try:
            trainer.fit(loader, epochs, resume=resume)
        except KeyboardInterrupt:
            pass
        losses = [r["train_loss"] for r in trainer.history]
        return trainer, losses


@pytest.mark.parametrize("precision", ["tf32", "bf16", "fp16"])
def test_trainer_in_each_precision_learns_and_keeps_float32_masters(images, precision):
    trainer, losses = fit("cpu", precision, images, epochs=3)
    assert len(losses) == 3 and np.isfinite(losses).all() and losses[-1] < losses[0]
    assert all(p.data.dtype == np.float32 and p.compute is None for p in trainer.model.parameters())
    _, ref = fit("cpu", "fp32", images, epochs=3)
    assert abs(losses[0] - ref[0]) < 0.05  # the first epoch differs by rounding, not by recipe
    if precision == "fp16":
        assert trainer.scaler.current_scale <= 2.0 ** 16


def test_fp16_overflow_skips_the_step_on_the_device_and_backs_off(images):
    """A scale of 2^40 overflows fp16 at once: the steps are skipped (weights unchanged) and the
    scale halves per step until the gradients fit, with no readback in the step."""
    with gpuconv.default_device("cpu"):
        net = small_net()
        start = [p.data.copy() for p in net.parameters()]
        opt = SGD(net.parameters(), lr=0.05, momentum=0.9)
        trainer = Trainer(net, opt, log_every=1, progress=False, precision="fp16",
                          loss_scaler=amp.LossScaler(init_scale=2.0 ** 40))
        xb, yb = next(iter(DeviceLoader(images[0][:32], images[1][:32], 32, shuffle=False, augment=False)))
        before = np.geterr()
        with warnings.catch_warnings():  # the overflow is the scaler's to handle: NumPy says nothing of it
            warnings.simplefilter("error", RuntimeWarning)
            trainer.train_step(xb, yb)
        assert np.geterr() == before  # silenced in the step alone
        trainer._flush()
        assert all((p.data == s).all() for p, s in zip(net.parameters(), start))
        assert trainer.scaler.current_scale == 2.0 ** 39
        assert trainer._telemetry()["loss_scale"] == 2.0 ** 39  # in every metrics record: skipped steps show
        for _ in range(40):
            trainer.train_step(xb, yb)
            trainer._flush()
        assert trainer.scaler.current_scale < 2.0 ** 39
        assert any((p.data != s).any() for p, s in zip(net.parameters(), start))


# One simulator run covers the low-precision kernels; fp16 runs on the CPU.
@pytest.mark.parametrize("device,precision", [("cpu", "bf16"), ("cpu", "fp16"), ("sim", "bf16")])
@pytest.mark.slow
def test_resume_in_low_precision_is_exact(images, tmp_path, device, precision):
    # the simulator's run (its kernels are the cost) on 2 batches an epoch, stopped and resumed
    # inside the second epoch as the CPU's 4-batch epochs are: 8 steps in all instead of 16
    n, stop = (64, 3) if device == "sim" else (128, 5)
    images = images[0][:n], images[1][:n]
    whole, whole_losses = fit(device, precision, images, epochs=2)
    fit(device, precision, images, epochs=2, out=tmp_path, stop_after=stop)
    resumed, losses = fit(device, precision, images, epochs=2, out=tmp_path, resume=True, stop_after=stop)
    for (name, p), (_, q) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        np.testing.assert_array_equal(backend.asnumpy(p.data), backend.asnumpy(q.data), err_msg=name)
    if precision == "fp16":
        assert resumed.scaler.state_dict() == whole.scaler.state_dict()


def test_a_checkpoint_trained_in_bf16_evaluates_in_any_precision(images, tmp_path):
    trainer, _ = fit("cpu", "bf16", images, epochs=1, out=tmp_path)
    loader = DeviceLoader(images[0], images[1], 64, shuffle=False, augment=False)
    results = {p: evaluate(trainer.model, loader, precision=p) for p in ("fp32", "bf16", "fp16")}
    accs = [r["accuracy"] for r in results.values()]
    assert max(accs) - min(accs) <= 0.05 and all(r["n"] == 128 for r in results.values())
    assert results["bf16"]["loss"] != results["fp32"]["loss"]  # it really computed in bf16


@pytest.mark.parametrize("target", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_cast_parameters_kernel_gives_astypes_bits(dtype, target):
    """On a kernel target (the simulator, a GPU) the float32 masters are cast by kernels/amp.cu, up
    to 8 per launch: the bits of astype (round to nearest even; subnormals, overflow to inf, NaN
    and signed zeros included), for 11 parameters of mixed sizes: 2 launches."""
    rng = np.random.default_rng(12)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3e38, 65520.0, 1 + 2 ** -8, 1 + 2 ** -11,
                        -5.96e-8], np.float32)
    sizes = [1, 7, 300, 5, 64, 9, 1000, 2, 11, 17, 3]
    arrays = [special] + [(rng.standard_normal(n) * 10 ** rng.uniform(-8, 6, n)).astype(np.float32) for n in sizes[1:]]
    layers = [gpuconv.layers.Linear(1, a.size, bias=False) for a in arrays]
    with gpuconv.default_device(target), kernels.launch_log() as log:
        model = gpuconv.layers.Sequential(*layers)
        for layer, a in zip(layers, arrays):
            layer.weight.data = backend.to_device(a.reshape(a.size, 1).copy(), target)
        amp.cast_parameters(model, dtype)
    assert log.names == ["cast_parameters"] * 2
    for layer, a in zip(layers, arrays):
        got = backend.asnumpy(layer.weight.compute)
        assert got.dtype == np.dtype(dtype) and got.tobytes() == a.reshape(a.size, 1).astype(dtype).tobytes()


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16])
def test_cast_filters_are_channels_last_and_need_no_repack(dtype):
    """4-D filters are cast into channels_last copies (OHWI memory) with astype's values, which the
    tensor-core forward reads as they are: its K-contiguous repack is a view, not a copy."""
    from gpuconv.ops import _launch_conv2d_tc as TC
    rng = np.random.default_rng(13)
    convs = [Conv2d(c, k, f, bias=True) for c, k, f in ((3, 5, 3), (16, 8, 1), (8, 24, 2), (1, 2, 3))]
    with gpuconv.default_device("sim"), kernels.launch_log() as log:
        model = Sequential(*convs)
        for conv in convs:
            conv.weight.data = rng.standard_normal(conv.weight.shape).astype(np.float32)
        amp.cast_parameters(model, dtype)
    # 4 filters, their 4 data-gradient copies and 4 biases: 12 slots, two launches
    assert log.names == ["cast_parameters"] * 2
    for conv in convs:
        w, want = conv.weight.compute, conv.weight.data.astype(dtype)
        assert w.dtype == np.dtype(dtype) and np.array_equal(w.view(np.uint16), want.view(np.uint16))
        assert gpuconv.layout.nhwc_memory(w) and conv.bias.compute.tobytes() == conv.bias.data.astype(dtype).tobytes()
        k, c, fh, fw = w.shape
        if c % 8 == 0:
            assert np.shares_memory(TC._repacked(w, (0, 2, 3, 1), c, c), w)
        # the data gradient's copy: the repack it saves, zero padding included, bit for bit
        kp = -(-k // 8) * 8
        packed = TC._packed(w, (c, fh, fw, kp), np.dtype(dtype))
        assert packed is not None and packed.tobytes() == TC._repacked(w, (1, 2, 3, 0), k, kp).tobytes()
    copies = [conv.weight.compute for conv in convs]
    amp.cast_parameters(model, None)
    assert all(TC._packed(w, (w.shape[1], w.shape[2], w.shape[3], -(-w.shape[0] // 8) * 8), w.dtype) is None
               for w in copies)  # forgotten with the compute copies
    keys = [id(w) for w in copies]
    del copies, w
    gc.collect()
    assert not any(k in TC._PACKED for k in keys)


def test_a_packed_copy_lives_as_long_as_its_compute_copy_and_evaluation_casts_none(dtype=ml_dtypes.bfloat16):
    """A model dropped with its copies cast (no clearing call) leaves no packed copy behind; an
    evaluation's cast (autocast backward=False) writes none."""
    from gpuconv.ops import _launch_conv2d_tc as TC
    with gpuconv.default_device("sim"):
        model = Sequential(Conv2d(8, 5, 3, seed=1))
        amp.cast_parameters(model, dtype)
        key = id(model[0].weight.compute)
        assert key in TC._PACKED
        del model
        gc.collect()  # a model's layers may hold cycles: the copies go with the collection
        assert key not in TC._PACKED
        model = Sequential(Conv2d(8, 5, 3, seed=1))
        with kernels.launch_log() as log, amp.autocast(model, "bf16", backward=False):
            assert id(model[0].weight.compute) not in TC._PACKED
    assert log.names == ["cast_parameters"]


def test_a_gpu_without_tensor_cores_gets_no_packed_filters(monkeypatch):
    """On a V100 (and a T4 in bf16) the bf16/fp16 convolutions run on CUDA cores, which never read the data
    gradient's packed filters: the cast writes none (one copy per filter fewer each step), and the
    step's gradients are those of a cast that writes them."""
    from gpuconv.ops import _launch_conv2d_tc as TC
    monkeypatch.setattr(kernels, "tensor_cores_for", lambda target, device, dtype=None, tf32=False: False)  # a V100
    x, y = batch()
    grads, asks_the_device = [], amp._tensor_cores
    for pack in (True, False):  # before: packed all the same; now: the device's answer
        monkeypatch.setattr(amp, "_tensor_cores", (lambda data, dtype: True) if pack else asks_the_device)
        with gpuconv.default_device("sim"), kernels.launch_log() as log:
            model = small_net()
            amp.cast_parameters(model, BF16)
            assert [id(p.compute) in TC._PACKED for p in (model[0].weight, model[4].weight)] == [pack] * 2
            amp.cast_parameters(model, None)
            amp.training_step(model, SGD(model.parameters(), lr=0.0), x, y, "bf16")
        assert not any("_tc" in name for name in log.names)  # the CUDA-core convolutions ran
        grads.append([p.grad.copy() for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_the_data_gradient_reads_the_cast_copy_with_the_repacks_bits(monkeypatch):
    """In a bf16 step the tensor-core data gradient takes the filters as the cast wrote them (no
    repacking copy) and computes the same bits as from its own repack."""
    from gpuconv.ops import _launch_conv2d_tc as TC
    rng = np.random.default_rng(5)
    x = gpuconv.to_channels_last(rng.standard_normal((2, 8, 6, 6)).astype(np.float32))
    y = rng.integers(0, 10, 2)
    repacks = []
    real = TC._repacked
    monkeypatch.setattr(TC, "_repacked", lambda w, axes, *a: repacks.append(axes) or real(w, axes, *a))

    def grads(pack):
        if not pack:
            monkeypatch.setattr(TC, "pack_for_data_gradient", lambda w, wt: None)
        model = Sequential(Conv2d(8, 12, 3, padding=1, seed=1), Conv2d(12, 5, 3, padding=1, seed=2),  # K = 5: padded
                           Conv2d(5, 16, 3, padding=1, seed=4), Flatten(), Linear(16 * 36, 10, seed=3))
        with gpuconv.default_device("sim"):
            amp.training_step(model, SGD(model.parameters(), lr=0.0), x, y, "bf16")
        return [p.grad.copy() for p in model.parameters()]

    packed = grads(True)
    assert (1, 2, 3, 0) not in repacks  # the data gradients: no repack
    plain = grads(False)
    assert (1, 2, 3, 0) in repacks
    assert all(a.tobytes() == b.tobytes() for a, b in zip(packed, plain))


def test_trainer_precision_auto_follows_the_models_device(monkeypatch):
    """'auto' is decided where the parameters live: fp32 for NumPy arrays (the CPU and the
    simulator compute bfloat16 in software), bf16 for a GPU of compute capability 8.0 or newer,
    fp16 for a T4 (7.5), which turns the loss scaler on."""
    net = small_net()
    assert Trainer(net, SGD(net.parameters(), lr=0.1), progress=False, precision="auto").precision == "fp32"
    asked = []
    monkeypatch.setattr(backend, "device_of", lambda a: backend.Device("cuda:1"))
    monkeypatch.setattr(amp, "resolve_precision", lambda p, d: asked.append((p, d)) or "bf16")
    assert Trainer(net, SGD(net.parameters(), lr=0.1), progress=False, precision="auto").precision == "bf16"
    assert asked == [("auto", backend.Device("cuda:1"))]
    monkeypatch.setattr(amp, "resolve_precision", lambda p, d: "fp16")  # a T4
    t = Trainer(net, SGD(net.parameters(), lr=0.1), progress=False, precision="auto")
    assert t.precision == "fp16" and isinstance(t.scaler, amp.LossScaler)
    t = Trainer(net, SGD(net.parameters(), lr=0.1), progress=False, precision="auto", cuda_graph=True)
    assert t.precision == "fp16" and t._graph is not None  # (its scale and skips on the device)
    with pytest.raises(ValueError, match="precision='half': use one of"):
        Trainer(net, SGD(net.parameters(), lr=0.1), progress=False, precision="half")


def test_a_precision_set_on_the_trainer_brings_or_drops_the_loss_scaler():
    """The precision may change before the fit or in epoch_start: set to fp16 it trained without a
    loss scaler, set from fp16 to another it kept fp16's; under cuda_graph, set to fp16 in
    epoch_start, the graphed fit scales the loss."""
    x, y = batch()
    net = small_net()
    t = Trainer(net, SGD(net.parameters(), lr=0.1), progress=False)
    t.precision = "fp16"
    assert isinstance(t.scaler, amp.LossScaler)
    t.precision = "bf16"
    assert t.scaler is None
    net = small_net()
    t = Trainer(net, SGD(net.parameters(), lr=0.1), progress=False, cuda_graph=True,
                epoch_start=lambda epoch: setattr(t, "precision", "fp16"))
    t.fit([(x, y)] * 3, 1)
    assert t.step == 3 and isinstance(t.scaler, amp.LossScaler) and t.scaler.scale_ is not None
    with pytest.raises(ValueError, match="precision='half': use one of"):
        t.precision = "half"


def test_threads_predicting_and_evaluating_with_one_model_take_turns():
    """bf16 inference writes compute copies onto the shared parameters, and evaluation switches the
    model's mode: four threads predicting and evaluating with one model each get the
    single-threaded answers (they got dtype errors, NaN probabilities, and a model left in eval
    mode), and the model is left as it was."""
    import threading
    from gpuconv.inference import TrainedModel
    from gpuconv.trainer import evaluate
    with gpuconv.default_device("cpu"):
        net = small_net()
        images = np.random.default_rng(3).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
        model = TrainedModel(net, [str(i) for i in range(10)], precision="bf16")
        want = model.predict(images, batch_size=4)
        net.train()
        x, y = batch(8)
        loader = [(x, y), (x[:4], y[:4])]
        want_eval = evaluate(net, loader, precision="bf16")
        results, errors = [], []

        def work(i):
            try:
                for _ in range(3):
                    if i % 2:
                        results.append(("eval", evaluate(net, loader, precision="bf16")))
                    else:
                        results.append(("predict", model.predict(images, batch_size=4)))
            except Exception as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and len(results) == 12
    for kind, got in results:
        if kind == "predict":
            np.testing.assert_array_equal(got, want)
        else:
            assert got.keys() == want_eval.keys()
            for key in got:
                np.testing.assert_array_equal(got[key], want_eval[key], err_msg=key)
    assert net.training and all(p.compute is None for p in net.parameters())


def test_a_failed_cast_leaves_no_low_precision_copy_behind(monkeypatch):
    """An error (a GPU out of memory) while autocast makes the copies: the ones made are cleared,
    so the next float32 forward does not meet a bfloat16 weight."""
    net = small_net()
    calls = []
    real = amp._castable

    def fail_second(a, dt):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory while casting")
        return real(a, dt)
    monkeypatch.setattr(amp, "_castable", fail_second)
    with pytest.raises(MemoryError):
        with amp.autocast(net, "bf16"):
            pass
    assert all(p.compute is None for p in net.parameters())
    net(batch(2)[0])  # float32 again


def test_a_model_that_cannot_be_a_dictionary_key_still_evaluates():
    """A model of the user's own that is unhashable (a dataclass) or has __slots__ without weak
    references shares one lock instead of failing."""
    from gpuconv.trainer import evaluate

    class Unhashable(Sequential):
        __hash__ = None

    net = Unhashable(*small_net())
    x, y = batch(4)
    assert amp.model_lock(net) is amp._SHARED_LOCK
    assert evaluate(net, [(x, y)], precision="bf16")["n"] == 4


# ----------------------------------------------------------------------------- the host's memos
def _forget_host_memos():
    """Every memo of the launch path emptied: the next launch computes its layouts, grid, variant,
    output sizes, int32 arguments and convolution launch plan anew."""
    from gpuconv import layout
    from gpuconv.ops import _checks, _launch_conv2d, _launch_conv2d_tc
    layout._orders_by_strides.cache_clear()
    kernels._grid_1d.cache_clear()
    kernels.auto_variant.cache_clear()
    kernels.int32_args.cache_clear()
    kernels._variant_memo.clear()
    _checks._conv_output_size.cache_clear()
    _launch_conv2d._CHOSEN.clear()
    _launch_conv2d_tc._PLANS.clear()


def test_training_steps_with_the_host_memos_equal_steps_that_compute_everything_anew(monkeypatch):
    """The launch path's memos change no launch and no bit: steps of airbench94 and fast_net on the
    simulator, bf16 and fp32 interleaved (so that the memos hold several geometries and dtypes at
    once), launch the same kernels with the same grids and blocks and give the same losses and
    weights, bit for bit, as the same steps with every memo emptied before each launch."""
    from gpuconv import cli, models
    factories = {"airbench94": lambda: cli.build_model("airbench94", width=2)[0],
                 "fast_net": lambda: models.fast_net(width=2)}
    x, y = batch(6, seed=3)

    def run():
        losses, launches = [], []
        with gpuconv.default_device("sim"):
            nets = {(name, p): make() for name, make in factories.items() for p in ("bf16", "fp32")}
            opts = {k: SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
                    for k, net in nets.items()}
            for _ in range(2):
                for (name, precision), net in nets.items():
                    xd = gpuconv.to_channels_last(x) if amp.channels_last_for(precision) else x
                    with kernels.launch_log() as log:
                        losses.append(amp.training_step(net, opts[(name, precision)], xd, y, precision)[0].copy())
                    launches.append([(r.name, r.grid, r.block) for r in log])
            weights = {k: [p.data.copy() for p in net.parameters()] for k, net in nets.items()}
        return losses, launches, weights

    warm = run()
    launch = kernels.launch

    def cold_launch(*args, **kw):
        _forget_host_memos()
        return launch(*args, **kw)

    monkeypatch.setattr(kernels, "launch", cold_launch)
    cold = run()
    assert warm[1] == cold[1] and len(warm[1]) == 8 and all(warm[1])
    for a, b in zip(warm[0], cold[0]):
        np.testing.assert_array_equal(a, b)
    for k in warm[2]:
        for a, b in zip(warm[2][k], cold[2][k]):
            np.testing.assert_array_equal(a, b, err_msg=str(k))


def test_the_scaler_and_a_training_step_run_with_the_parameters_gpu_current(fake_second_gpu, monkeypatch):
    """CuPy allocates on its current device and refuses another's arrays in a kernel: unscale's
    flags, update's new scale and training_step's loss and temporaries for a model on cuda:1 were
    made on GPU 0 while it was current (outside a Trainer, which makes the model's GPU current). They
    run with the parameters' GPU current now. CuPy is faked (conftest.FakeSecondGpu)."""
    from gpuconv.layers import Layer, Parameter
    gpu = fake_second_gpu
    scaler = amp.LossScaler(init_scale=4.0)
    scaler.scale_, scaler.tracker = gpu.on(np.float32(4.0)), gpu.on(np.int32(0))
    p = Parameter(gpu.on(np.ones(3, np.float32)), "w")
    p.grad = gpu.on(np.full(3, 8.0, np.float32))
    found_inf = scaler.unscale([p])
    scaler.update(found_inf)
    scaler.scale(gpu.on(np.ones(2, np.float32)))
    assert {name for name, _ in gpu.calls} >= {"empty", "isfinite", "where", "copyto"}
    assert {on for _, on in gpu.calls} == {1} and gpu.current == [0]
    assert np.asarray(p.grad).tolist() == [2.0, 2.0, 2.0] and not found_inf

    seen = []

    class Net(Layer):  # a model on cuda:1 whose every step records the current GPU
        def __init__(self):
            super().__init__()
            self.w = p

        def forward(self, x):
            seen.append(("forward", gpu.current[0]))
            return x

        def backward(self, dy, need_dx=True):
            seen.append(("backward", gpu.current[0]))

    class Optimizer:
        params = [p]

        def zero_grad(self):
            seen.append(("zero_grad", gpu.current[0]))

        def step(self, skip=None):
            seen.append(("step", gpu.current[0]))

    def loss(logits, y, **kwargs):
        seen.append(("loss", gpu.current[0]))
        return gpu.on(np.float32(0)), logits

    monkeypatch.setattr(ops, "softmax_cross_entropy", loss)
    amp.training_step(Net(), Optimizer(), gpu.on(np.ones((2, 3), np.float32)), np.zeros(2, np.int64))
    assert seen == [("zero_grad", 1), ("forward", 1), ("loss", 1), ("backward", 1), ("step", 1)]
    assert gpu.current == [0]


def test_a_scaler_used_for_a_model_on_another_gpu_moves_its_scale_there(monkeypatch):
    """A LossScaler used for a model on cuda:0, then (the same object, as a notebook reuses one)
    for a model on cuda:1 kept its scale and count on GPU 0, where CuPy would refuse them in
    cuda:1's kernels; it moves them, keeping their values, to the GPU of the arrays it is given.
    CuPy is faked: each array remembers the GPU current when it was made."""
    from conftest import fake_cupy_second_gpu

    class OnGpu(np.ndarray):
        def __array_finalize__(self, obj):  # (made, copied or viewed: on the current GPU)
            self.gpu = current[0]

        def get(self):
            return np.array(self)

    cupy, current = fake_cupy_second_gpu(monkeypatch, OnGpu)
    monkeypatch.setattr(backend, "device_id", lambda a: a.gpu)
    monkeypatch.setattr(cupy, "asarray", lambda a: np.array(a).view(OnGpu), raising=False)
    monkeypatch.setattr(backend, "require_cupy", lambda: cupy)

    def on(gpu, a):
        with cupy.cuda.Device(gpu):
            return np.array(a).view(OnGpu)

    scaler = amp.LossScaler(init_scale=8.0, growth_interval=3)
    assert scaler.factor(on(0, np.ones(2, np.float32))).gpu == 0
    scaler.tracker[...] = 2  # two clean steps counted on GPU 0
    scaler.scale_[...] = 32.0
    s = scaler.factor(on(1, np.ones(2, np.float32)))
    assert s.gpu == 1 and scaler.tracker.gpu == 1
    assert float(s) == 32.0 and int(scaler.tracker) == 2 and current == [0]
    # and back to the host (a scaler reused for a NumPy model after a GPU one)
    assert type(scaler.factor(np.ones(2, np.float32))) is np.ndarray and scaler.current_scale == 32.0


def test_grouped_and_dilated_convolutions_get_no_packed_filters(monkeypatch):
    """Only conv2d.cu's tensor-core data gradient reads the cast's packed copy of a filter; a grouped
    or dilated Conv2d runs kernels/conv2d_grouped.cu, which reads its filters as they are: its cast
    writes no packed copy (a write per filter fewer each step), and its step is unchanged."""
    from gpuconv.ops import _launch_conv2d_tc as TC
    monkeypatch.setattr(amp, "_tensor_cores", lambda data, dtype: True)  # a GPU with tensor cores
    x, y = batch(2)
    with gpuconv.default_device("sim"):
        model = Sequential(Conv2d(3, 6, 3, padding=1, seed=1), Conv2d(6, 6, 3, padding=1, groups=6, seed=2),
                           Conv2d(6, 4, 3, padding=2, dilation=2, seed=3), ReLU(), MaxPool2d(8), Flatten(),
                           Linear(4 * 4 * 4, 10, seed=4))
        amp.cast_parameters(model, BF16)
        assert [id(model[i].weight.compute) in TC._PACKED for i in range(3)] == [True, False, False]
        amp.cast_parameters(model, None)
        amp.training_step(model, SGD(model.parameters(), lr=0.0), x, y, "bf16")
    assert all(np.isfinite(p.grad).all() for p in model.parameters())


def test_grouped_and_dilated_filters_are_cast_in_the_order_their_kernels_read(monkeypatch):
    """kernels/conv2d_grouped.cu reads its filters OIHW: a grouped or dilated Conv2d's compute copy
    is cast C-contiguous (astype's bits), so neither its forward nor its backward repacks it each
    step, as they did an OHWI copy; the other filters' copies stay channels_last."""
    monkeypatch.setattr(amp, "_tensor_cores", lambda data, dtype: True)
    rng = np.random.default_rng(5)
    convs = [Conv2d(8, 8, 3, padding=1, groups=2), Conv2d(8, 4, 3, padding=2, dilation=2), Conv2d(4, 6, 3),
             Conv2d(6, 6, 3, groups=6)]
    with gpuconv.default_device("sim"):
        model = Sequential(*convs)
        for conv in convs:
            conv.weight.data = rng.standard_normal(conv.weight.shape).astype(np.float32)
        filters, repacks, real = {c.weight.shape for c in convs}, [], np.ascontiguousarray
        monkeypatch.setattr(np, "ascontiguousarray", lambda a, *args, **kw: (  # a filter copied into OIHW
            repacks.append(a.shape) if getattr(a, "shape", None) in filters and not a.flags.c_contiguous else None,
            real(a, *args, **kw))[1])
        amp.cast_parameters(model, BF16)
        for conv, nchw in zip(convs, (True, True, False, True)):
            w = conv.weight.compute
            assert w.flags.c_contiguous == nchw and gpuconv.layout.nhwc_memory(w) == (not nchw or w.shape[1] == 1)
            assert np.array_equal(w.view(np.uint16), conv.weight.data.astype(BF16).view(np.uint16))
        x = gpuconv.to_channels_last(rng.standard_normal((2, 8, 6, 6)).astype(BF16))
        y, caches = x, []
        for conv in convs[:2]:
            y, cache = ops.conv2d_forward(y, conv.weight.compute, None, padding=conv.padding,
                                          dilation=conv.dilation, groups=conv.groups)
            caches.append(cache)
        ops.conv2d_backward(gpuconv.to_channels_last(np.ones(y.shape, BF16)), caches[1])
    assert repacks == []
