"""Data selection by a proxy network (gpuconv.selection, the airbench96_faster recipe): the choice of
the hardest images and its ties, the proxy's steps against the PyTorch reference in float64, the
main network's lr on the selected images, the selection kept in the checkpoint (an exact resume),
and the recipe end to end on the real subset."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sys

import numpy as np
import pytest

import gpuconv
from gpuconv import checkpoint as ckpt
from gpuconv import cli
from gpuconv.cli import _models
from gpuconv.data import DeviceLoader
from gpuconv.recipes import airbench_param_groups, get_recipe
from gpuconv.selection import SelectedLoader, select_hardest, selected_count, take_rows
from gpuconv.syncguard import no_sync
from gpuconv.trainer import Trainer, TrainingInterrupted

from conftest import REPO, SUBSET


def _airbench_torch():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("_bench_airbench_torch", REPO / "benchmarks" / "airbench_torch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def _recipe(proxy_widths=(4, 8, 8), **kw):
    s = dict(get_recipe("airbench96_faster"), **kw)
    s["select"] = dict(s["select"], widths=list(proxy_widths))
    return s


def test_recipe_entry():
    s = cli._settings(cli.build_parser().parse_args(["train", "--recipe", "airbench96_faster"]))
    assert (s["model"], s["epochs"], s["batch_size"], s["lr"], s["weight_decay"]) == ("airbench96", 45, 1024, 9.0,
                                                                                     0.012)
    assert s["select"] == {"keep": 0.5, "train_every": 4, "widths": [32, 64, 64], "batchnorm_momentum": 0.9,
                           "scaling_factor": pytest.approx(1 / 9)}
    assert selected_count(1024, 0.5) == 512 and _models.selection_count(s, 50_000) == 512
    assert _models.proxy_widths(s) == [32, 64, 64] and _models.proxy_widths(s, 8) == [2, 4, 4]
    assert get_recipe("airbench96")["select"] is None
    # the main network's lr: for its loss summed over the selected 512 at airbench's lr per 1024 examples
    from gpuconv import models
    net = models.airbench96(widths=(4, 12, 16))
    images, _ = _data(8)
    opt, _, _ = _models._recipe_setup(dict(s, batch_size=8), net, images, 1)
    assert opt.lr == pytest.approx(0.2 * 9.0 / (1024 * (1 + 1 / 0.15)) * 4)  # (the triangle starts at 0.2)
    with pytest.raises(ValueError, match=r"select keep=0 must be the share of each batch"):
        selected_count(1024, 0)


def test_select_hardest_ties_and_nan(backend):
    """The k largest losses, positions ascending; equal losses go to the lower position and a NaN
    counts as the largest: the same choice on every backend (a stable sort)."""
    losses = np.array([0.5, 2.0, 1.0, 2.0, np.nan, 1.0, 0.5, 2.0, 1.0], np.float32)
    # NaN, the three 2.0s, then the first of the 1.0s
    np.testing.assert_array_equal(backend.asnumpy(select_hardest(backend.asarray(losses), 5)), [1, 2, 3, 4, 7])
    ties = backend.asarray(np.ones(8, np.float64))
    np.testing.assert_array_equal(backend.asnumpy(select_hardest(ties, 3)), [0, 1, 2])
    with pytest.raises(ValueError, match=r"k=9 must be in 1..8"):
        select_hardest(ties, 9)


def test_proxy_step_on_every_backend(backend):
    """A proxy step that trains and one that does not, on the backend's kernels: the same rows as
    the NumPy reference's, the losses and the trained weights close to them; on 'sim' neither
    reads anything back (gpuconv.syncguard)."""
    images, labels = _data(8)
    s = _recipe(proxy_widths=(2, 4, 4), batch_size=8, epochs=1)
    results = {}
    for name in ("numpy", backend.name):
        with gpuconv.default_device({"numpy": "cpu", "sim": "sim", "cupy": "cuda"}[name]):
            loader = DeviceLoader(images, labels, 8, augment=True, padding=4, padding_mode="reflect",
                                  flip="alternate", drop_last=True)
            proxy = _models.selection_loader(s, loader, images).proxy
            out = []
            for step in (0, 1):
                x, y = next(iter(loader))
                # nothing read back or uploaded inside a step (counted on 'sim'; the GPU's first steps
                # compile kernels, too long for the guard's stream hold)
                with no_sync(f"proxy step {step}") if name == "sim" else contextlib.nullcontext():
                    rows, losses = proxy.step(x, y, step)
                out.append((backend.asnumpy(rows), backend.asnumpy(losses)))
            results[name] = (out, backend.asnumpy(proxy.model["fc"].weight.data))
    (want, w_want), (got, w_got) = results["numpy"], results[backend.name]
    for (r0, l0), (r1, l1) in zip(want, got):
        np.testing.assert_array_equal(r1, r0)
        np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_allclose(w_got, w_want, rtol=1e-4, atol=1e-6)
    if backend.name != "numpy":
        backend.assert_kernels_ran("softmax_cross_entropy", "conv2d_forward", "conv2d_backward")


def test_select_hardest_is_the_references_choice():
    torch = pytest.importorskip("torch")
    ab = _airbench_torch()
    rng = np.random.default_rng(3)
    losses = rng.integers(0, 4, 64).astype(np.float64)  # many ties
    for k in (1, 7, 32, 64):
        want = ab.select_hardest(torch, torch.as_tensor(losses), k).numpy()
        np.testing.assert_array_equal(select_hardest(losses, k), want)


def test_take_rows_keeps_the_layout():
    from gpuconv import layout
    x = np.arange(4 * 3 * 2 * 2, dtype=np.float32).reshape(4, 3, 2, 2)
    nhwc = layout.to_channels_last(x)
    rows = np.array([1, 3])
    out = take_rows(nhwc, rows)
    assert layout.is_channels_last(out)
    np.testing.assert_array_equal(out, x[rows])
    np.testing.assert_array_equal(take_rows(x, rows), x[rows])
    low = nhwc.astype(gpuconv.precision.bfloat16)
    out = take_rows(low, rows)
    assert out.dtype == low.dtype and layout.is_channels_last(out)
    np.testing.assert_array_equal(out.astype(np.float32), x[rows])


def _copy_to_torch(torch, model, tmodel):
    state = tmodel.state_dict()
    for name, arr in [(n, p.data) for n, p in model.named_parameters()] + list(model.named_buffers()):
        state[name].copy_(torch.as_tensor(np.ascontiguousarray(arr), dtype=state[name].dtype))


def test_proxy_steps_match_the_pytorch_reference_in_float64():
    """Six proxy steps (the first and the fifth train it) on the loader's augmented batches, in
    float64 from the same weights: every image's loss, the selected positions, and then the proxy's
    parameters and batch-norm statistics agree with airbench_torch.proxy_step (its summed loss at
    airbench's lr per 1024 examples; gpuconv's mean over the selected at that lr times their count)."""
    torch = pytest.importorskip("torch")
    ab = _airbench_torch()
    images, labels = _data()
    s = _recipe(batch_size=16, epochs=2)
    loader = DeviceLoader(images, labels, 16, augment=True, padding=4, padding_mode="reflect", flip="alternate",
                          cutout=12, drop_last=True, device="cpu")
    net = _models.build_proxy(s, seed=1)
    net.astype(np.float64)
    selected = _models.selection_loader(s, loader, images, proxy=net, precision=None)
    proxy = selected.proxy
    assert not net["whiten"].bias.requires_grad and not net["whiten"].weight.requires_grad
    h = dict(ab.AIRBENCH96_FASTER, proxy_widths=(4, 8, 8))
    tmodel = ab.build_proxy(torch, h=h).double()
    _copy_to_torch(torch, net, tmodel)
    topts = ab.optimizer(torch, tmodel, 16, ab.proxy_recipe(h))
    total = 2 * len(loader)
    k = selected.keep
    assert k == 8 and total == 6
    tmodel.train()
    step = 0
    for epoch in range(2):
        loader.set_epoch(epoch)
        for x, y in loader:
            x64 = x.astype(np.float64)
            rows, losses = proxy.step(x64, y, step)
            trows, tlosses = ab.proxy_step(torch, tmodel, topts, torch.as_tensor(x64), torch.as_tensor(y), step,
                                           total, ab.proxy_recipe(h), k)
            np.testing.assert_allclose(losses, tlosses.numpy(), rtol=1e-10, err_msg=f"step {step}")
            np.testing.assert_array_equal(rows, trows.numpy(), err_msg=f"step {step}")
            step += 1
    state = tmodel.state_dict()
    for name, arr in [(n, p.data) for n, p in net.named_parameters()] + list(net.named_buffers()):
        np.testing.assert_allclose(arr, state[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    w0 = _models.build_proxy(s, seed=1)["block1"]["conv1"].weight.data
    assert not np.allclose(net["block1"]["conv1"].weight.data, w0)  # it trained


def test_main_lr_is_for_the_summed_selected_loss():
    """airbench's lr per 1024 examples on a loss SUMMED over the selected images: with gpuconv's
    mean over them, the step lr is lr / kilostep times their count; the weight decay stays per
    batch."""
    from gpuconv import models
    net = models.airbench96(widths=(4, 12, 16))
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    groups, lr = airbench_param_groups(net, 9.0, 0.012, 0.85, 1024, 64.0, mean_over=512)
    assert lr == pytest.approx(9.0 / kilostep * 512) and groups[1]["lr"] == lr
    assert [g["lr"] * g["weight_decay"] for g in groups] == [pytest.approx(0.012 * 1024 / kilostep)] * 2
    _, whole = airbench_param_groups(net, 9.0, 0.012, 0.85, 1024, 64.0)
    assert whole == pytest.approx(2 * lr)


def test_main_steps_on_the_selection_match_the_pytorch_reference_in_float64():
    """Three steps of the main network (airbench96's, width 4) on the selected rows of the loader's
    batches, in float64 from the same weights, with the optimizer and schedule `gpuconv train` builds
    for the recipe: the parameters agree with PyTorch's airbench SGD on the loss SUMMED over those
    rows at the lr per 1024 examples (airbench_torch.optimizer over the whole batch's size)."""
    torch = pytest.importorskip("torch")
    from gpuconv.layers import call_backward
    from gpuconv.ops import softmax_cross_entropy
    ab = _airbench_torch()
    images, labels = _data(32)
    s = _recipe(batch_size=16, epochs=2)
    net, _ = cli.build_model(s["model"], width=4, model_kwargs=s["model_kwargs"])
    loader = DeviceLoader(images, labels, 16, augment=True, padding=4, padding_mode="reflect", flip="alternate",
                          cutout=12, drop_last=True, device="cpu")
    selected = _models.selection_loader(s, loader, images, width=4)
    opt, sched, _ = _models._recipe_setup(s, net, images, len(selected))
    net.astype(np.float64)
    for p in opt.params:  # (the optimizer's state follows the parameters' dtype)
        assert p.data.dtype == np.float64
    h = ab.RECIPES["airbench96"]
    tmodel = ab.build(torch, (4, 12, 16), h=h).double()
    _copy_to_torch(torch, net, tmodel)
    topts = ab.optimizer(torch, tmodel, 16, h)
    total = 2 * len(selected)
    selected.set_epoch(0)
    net.train()
    for step, (x, y) in zip(range(3), selected):
        assert len(y) == 8
        x64 = x.astype(np.float64)
        opt.zero_grad()
        _, dlogits = softmax_cross_entropy(net(x64), y, label_smoothing=0.2)
        call_backward(net, dlogits, need_dx=False)
        opt.step()
        sched.step()
        ab.set_lrs(topts, step, total, 3 * len(selected), h)
        loss = ab.loss_of(torch, tmodel, torch.as_tensor(x64), torch.as_tensor(y), "fp32")
        tmodel.zero_grad(set_to_none=True)
        loss.backward()
        for o in topts:
            o.step()
    state = tmodel.state_dict()
    # (float64 on both sides: a loss averaged over the wrong count would be off by a factor of 2)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.data, state[name].detach().numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_recipe_over_epochs_matches_the_pytorch_baseline():
    """gpuconv's Trainer on the SelectedLoader (2 epochs of 3 steps: the lookahead at step 5 and the
    last pull, the whitening bias frozen after the first epoch, the proxy trained at steps 0 and 4)
    against airbench_torch.train on the same augmented batches from the same weights (both networks
    copied across before the fit): the main network's parameters agree to float32's rounding."""
    torch = pytest.importorskip("torch")
    ab = _airbench_torch()
    images, labels = _data()
    s = _recipe(proxy_widths=(32, 64, 64), batch_size=16, epochs=2, whiten_bias_epochs=1)  # (the recipe's, at width 4)
    net, sel, trainer = _build(s, images, labels, None)
    h = dict(ab.AIRBENCH96_FASTER, proxy_widths=(1, 2, 2), whiten_bias_epochs=1)
    assert _models.proxy_widths(s, 4) == [1, 2, 2]
    tmodel = ab.build(torch, (4, 12, 16), h=h)
    tproxy = ab.build_proxy(torch, h=h)
    _copy_to_torch(torch, net, tmodel)
    _copy_to_torch(torch, sel.proxy.model, tproxy)
    plain = DeviceLoader(images, labels, 16, augment=True, padding=4, padding_mode="reflect", flip="alternate",
                         cutout=12, drop_last=True, device="cpu")
    batches = []
    for epoch in range(2):
        plain.set_epoch(epoch)
        batches.append([(torch.as_tensor(x), torch.as_tensor(y)) for x, y in plain])
    trainer.fit(sel, 2)
    tmodel, _, _ = ab.train(torch, images, labels, "cpu", "fp32", epochs=2, batch_size=16, model=tmodel,
                            batches=batches, h=h, proxy=tproxy)
    state = tmodel.state_dict()
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.data, state[name].detach().numpy(), rtol=2e-3, atol=2e-5, err_msg=name)
    assert not np.allclose(net["block1"]["conv1"].weight.data, _build(s, images, labels, None)[0]["block1"]["conv1"]
                           .weight.data)


def _build(s, images, labels, out, **trainer_kw):
    net, _ = cli.build_model(s["model"], width=4, model_kwargs=s["model_kwargs"])
    loader = DeviceLoader(images, labels, s["batch_size"], augment=True, padding=4, padding_mode="reflect",
                          flip="alternate", cutout=12, drop_last=True, device="cpu")
    selected = _models.selection_loader(s, loader, images, width=4)
    opt, sched, extras = _models._recipe_setup(s, net, images, len(selected))
    return net, selected, Trainer(net, opt, sched, out_dir=out, label_smoothing=0.2, progress=False, **extras,
                                  **trainer_kw)


def test_selection_is_checkpointed_and_a_resume_is_bit_identical(tmp_path):
    """3 epochs in one go == 2 epochs and a resume, and == a run stopped mid-epoch and resumed: the
    selection comes back from the checkpoint (the resumed run's proxy never runs), every batch the
    main network trains on is the selected half of the loader's batch."""
    images, labels = _data(32)
    s = _recipe(batch_size=16, epochs=3)
    net1, sel1, t1 = _build(s, images, labels, tmp_path / "a")
    t1.fit(sel1, 3)
    assert sel1.rows.shape == (6, 8)
    bits = ckpt.unflatten_tree("loader", ckpt.load_checkpoint(tmp_path / "a"))["selected"]
    assert bits.dtype == np.uint8 and bits.shape == (6, 2)  # one bit per image: 16 a step
    mask = np.unpackbits(bits, axis=1, bitorder="little").astype(bool)
    np.testing.assert_array_equal(np.nonzero(mask)[1].reshape(6, 8), sel1.rows)
    assert (np.diff(sel1.rows, axis=1) > 0).all()  # positions ascending: the batch's order kept

    # epochs 1-2, then a fresh process resumes for the third
    _, sel2, t2 = _build(s, images, labels, tmp_path / "b")
    with pytest.warns(UserWarning, match="lookahead: total_steps=6"):
        t2.fit(sel2, 2)
    net3, sel3, t3 = _build(s, images, labels, tmp_path / "b")
    sel3.proxy.step = None  # the selection must come from the checkpoint: calling the proxy fails
    t3.fit(sel3, 3, resume=True)
    np.testing.assert_array_equal(sel3.rows, sel1.rows)
    for (k, a), b in zip(net1.state_dict().items(), net3.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)

    # stopped after step 4 (epoch 2, batch 2), its last checkpoint at step 3 (epoch 2, batch 1), resumed
    _, sel4, t4 = _build(s, images, labels, tmp_path / "c", checkpoint_every=3)
    step = t4.train_step

    def failing_step(x, y):
        if t4.step == 4:
            raise RuntimeError("stop")
        step(x, y)
    t4.train_step = failing_step
    with pytest.raises(RuntimeError, match="stop"):
        t4.fit(sel4, 3)
    net5, sel5, t5 = _build(s, images, labels, tmp_path / "c")
    sel5.proxy.step = None
    t5.fit(sel5, 3, resume=True)
    assert t5.step == 6
    for (k, a), b in zip(net1.state_dict().items(), net5.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)

    # the batches trained on are the loader's, cut to the selected rows
    plain = DeviceLoader(images, labels, 16, augment=True, padding=4, padding_mode="reflect", flip="alternate",
                         cutout=12, drop_last=True, device="cpu")
    for epoch in range(3):
        sel1.set_epoch(epoch)
        plain.set_epoch(epoch)
        for b, ((x, y), (xf, yf)) in enumerate(zip(sel1, plain)):
            rows = sel1.rows[2 * epoch + b]
            np.testing.assert_array_equal(x, xf[rows])
            np.testing.assert_array_equal(y, yf[rows])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_in_the_proxy_phase_ends_it_at_once_and_the_resume_is_exact(tmp_path, capsys, sig):
    """Ctrl-C or SIGTERM while the proxy runs over the run's batches (minutes on a CPU) stops it
    after the proxy's current step, not at the phase's end: nothing is selected, the checkpoint is
    written as at a stop between steps, and the resume runs the phase again and trains as a run
    never stopped."""
    images, labels = _data(32)
    s = _recipe(batch_size=16, epochs=3)
    net1, sel1, t1 = _build(s, images, labels, tmp_path / "a")
    t1.fit(sel1, 3)

    _, sel2, t2 = _build(s, images, labels, tmp_path / "b")
    proxy_step, calls = sel2.proxy.step, []

    def signalled_step(x, y, step):
        calls.append(step)
        if step == 1:
            os.kill(os.getpid(), sig)
        return proxy_step(x, y, step)
    sel2.proxy.step = signalled_step
    old = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted) as info:
        t2.fit(sel2, 3)
    assert calls == [0, 1] and sel2.rows is None and t2.step == 0  # of the phase's 6 steps, 2 ran
    assert signal.getsignal(sig) is old and info.value.signal == sig
    assert info.value.checkpoint == tmp_path / "b" / "checkpoint.npz" and "resume" in str(info.value)
    assert "finishing the loader's preparation (a data-selection proxy's pass) at its current step" in \
        capsys.readouterr().err
    saved = ckpt.load_checkpoint(info.value.checkpoint)
    assert int(saved["meta/step"]) == 0 and not any(k.startswith("loader/") for k in saved)  # nothing selected

    net3, sel3, t3 = _build(s, images, labels, tmp_path / "b")
    t3.fit(sel3, 3, resume=True)
    np.testing.assert_array_equal(sel3.rows, sel1.rows)
    for (k, a), b in zip(net1.state_dict().items(), net3.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_the_proxy_phase_has_a_progress_bar_of_its_steps(monkeypatch, capsys):
    """The proxy's pass (minutes on a CPU) shows a progress bar of its own, over the run's proxy
    steps, before the first epoch's; ``prepare`` reports each step, and nothing once selected."""
    import gpuconv.trainer as trainer_module
    images, labels = _data(32)
    s = _recipe(batch_size=16, epochs=3)
    _, sel, trainer = _build(s, images, labels, None)
    done = []
    sel.prepare(progress=lambda: done.append(1))
    assert len(done) == sel.steps == 6 and sel.rows is not None
    sel.prepare(progress=lambda: done.append(1))
    assert len(done) == 6

    _, sel, trainer = _build(s, images, labels, None)
    trainer.progress = True
    monkeypatch.setattr(trainer_module, "_is_terminal", lambda stream: True)
    trainer.fit(sel, 2)
    err = capsys.readouterr().err
    assert "data selection (proxy): 100%" in err and "6/6" in err and "epoch 1/2" in err, err[-2000:]
    assert err.index("data selection (proxy)") < err.index("epoch 1/2")
    assert err.count("data selection (proxy):   0%") == 1  # not again at the second epoch: nothing to do


def test_a_selection_of_another_run_is_refused():
    images, labels = _data()
    s = _recipe(batch_size=16, epochs=2)
    _, sel, _ = _build(s, images, labels, None)
    state = sel.inner.state_dict()
    bits = np.packbits(np.arange(16) < 8, bitorder="little")
    for wrong in (dict(selected=np.tile(bits, (9, 1))), dict(selected=np.tile(bits, (6, 1)), batch=32),
                  dict(selected=np.zeros((6, 2), np.uint8))):
        with pytest.raises(ValueError, match=r"this run selects 8 of 16 at each of 6 steps"):
            sel.load_state_dict({"loader": state, "batch": 16, "keep": 8, **wrong})
    sel.load_state_dict({"loader": state, "batch": 16, "keep": 8, "selected": np.tile(bits, (6, 1))})
    np.testing.assert_array_equal(sel.rows, np.tile(np.arange(8), (6, 1)))
    with pytest.raises(KeyError, match="not 'loader' and 'selected'"):
        sel.load_state_dict(state)
    loader = DeviceLoader(images[:40], labels[:40], 16, device="cpu")
    with pytest.raises(ValueError, match="last batch holds 8 of 16 images"):
        SelectedLoader(loader, sel.proxy, 2)


class _FakeGpuLoader:
    """A DeviceLoader's interface over fixed batches of the fake second GPU's arrays."""

    def __init__(self, batches):
        self.batches, self.epoch, self.start_batch = batches, 0, 0
        self.num_samples, self.batch_size, self.drop_last = sum(len(b[1]) for b in batches), len(batches[0][1]), True

    def set_epoch(self, epoch, start_batch=0):
        self.epoch, self.start_batch = epoch, start_batch

    def state_dict(self):
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state):
        self.epoch, self.start_batch = state["epoch"], state["start_batch"]

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches[self.start_batch:])


def test_the_proxy_phase_and_the_gathers_run_on_the_proxys_gpu(fake_second_gpu, monkeypatch):
    """CuPy allocates and launches on its current device: with the proxy and the batches on cuda:1
    and cuda:0 current (the phase run outside Trainer.fit, which makes the model's GPU current), the
    phase's statistics and selection table, and each batch's gathers, are made on cuda:1. CuPy is
    faked (conftest.FakeSecondGpu; a gather by an index array recorded as CuPy's take kernel)."""
    from types import SimpleNamespace

    from gpuconv.selection import Proxy
    gpu = fake_second_gpu
    real_getitem = np.ndarray.__getitem__

    def getitem(a, index):
        if any(isinstance(i, np.ndarray) for i in (index if isinstance(index, tuple) else (index,))):
            gpu.calls.append(("take", gpu.current[0]))
        return real_getitem(a, index)

    monkeypatch.setattr(gpu.OnGpu, "__getitem__", getitem, raising=False)
    monkeypatch.setattr(gpu.OnGpu, "get", lambda a: np.array(a), raising=False)  # (the readback, cupy's a.get())

    class LossOfTheMean(Proxy):  # a proxy step that sets the proxy's GPU as the real one does
        def step(self, x, y, step):
            with gpuconv.backend.parameters_device_context(self.model.parameters()[:1]):
                losses = x.reshape(x.shape[0], -1).mean(axis=1)
                return select_hardest(losses, selected_count(x.shape[0], self.keep)), losses

    rng = np.random.default_rng(0)
    batches = [(gpu.on(rng.standard_normal((4, 3, 2, 2)).astype(np.float32)), gpu.on(rng.integers(0, 10, 4)))
               for _ in range(3)]
    model = SimpleNamespace(parameters=lambda: [SimpleNamespace(data=gpu.on(np.zeros(1, np.float32)))])
    sel = SelectedLoader(_FakeGpuLoader(batches), LossOfTheMean(model, SimpleNamespace(), precision=None), 1)
    del gpu.calls[:]
    sel.select()
    assert gpu.current == [0] and ("stack", 1) in gpu.calls
    assert {on for _, on in gpu.calls} == {1}, gpu.calls
    del gpu.calls[:]
    got = list(sel)
    assert ("take", 1) in gpu.calls and {on for _, on in gpu.calls} == {1}, gpu.calls
    for (x, y), (xs, ys), rows in zip(batches, got, np.asarray(sel.rows)):
        want = np.sort(np.argsort(-np.asarray(x).reshape(4, -1).mean(axis=1), kind="stable")[:2])
        np.testing.assert_array_equal(rows, want)
        np.testing.assert_array_equal(np.asarray(xs), np.asarray(x)[rows])
        np.testing.assert_array_equal(np.asarray(ys), np.asarray(y)[rows])


def test_airbench96_faster_on_real_images(tmp_path, capsys):
    """The recipe end to end on the real subset, scaled down (width 8: 8/24/32 channels and a proxy
    of 2/4/4; 200 images, 2 epochs of 5 batches of 40): the proxy phase runs first and is reported
    (a 'proxy' record per epoch in metrics.jsonl, a line in the log), each step trains on 20
    images, the checkpoint holds the selection; `gpuconv summary` shows the recipe's network."""
    argv = ["train", "--recipe", "airbench96_faster", "--width", "8", "--epochs", "2", "--limit", "200",
            "--batch-size", "40", "--device", "cpu", "--data", SUBSET, "--val-split", "none", "--no-progress",
            "--out", tmp_path]
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "each step trains on the 20 of its 40 images" in err and "the proxy ran 10 steps (3 of them trained it)" \
        in err, err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    proxy = [r for r in records if r["kind"] == "proxy"]
    assert [(r["epoch"], r["proxy_steps"], r["proxy_trained_steps"], r["selected"]) for r in proxy] == \
        [(1, 5, 2, 20), (2, 5, 1, 20)]
    assert all(np.isfinite(r["proxy_loss"]) and r["proxy_selected_loss"] >= r["proxy_loss"] for r in proxy)
    arrays = ckpt.load_checkpoint(tmp_path)
    config = ckpt.read_config(arrays)
    assert config["train_args"]["select"]["widths"] == [32, 64, 64] and config["kwargs"]["widths"] == [8, 24, 32]
    assert ckpt.unflatten_tree("loader", arrays)["selected"].shape == (10, 5)  # 40 bits a step
    assert all(r["proxy_elapsed_s"] > 0 for r in proxy)
    assert "train accuracy" in out
    # --resume of the finished run: the selection comes back with the checkpoint, the proxy does not run
    rc = cli.main([str(a) for a in argv + ["--resume"]])
    out, err = capsys.readouterr()
    assert rc == 0 and "nothing to do" in err and "the proxy ran" not in err, err
    assert cli.main(["summary", "--recipe", "airbench96_faster", "--width", "8"]) == 0
    summary = capsys.readouterr().out
    assert "block3" in summary and "proxy" in summary
