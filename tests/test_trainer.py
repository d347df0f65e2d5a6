"""The trainer on real CIFAR-10 images: learning, no readbacks per step, NaN/OOM handling,
bit-identical resume (at an epoch boundary and after Ctrl-C mid-epoch), metrics history."""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import warnings

import numpy as np
import pytest

import gpuconv
from gpuconv import backend
from gpuconv import checkpoint as ckpt
from gpuconv.data import DeviceLoader, load_cifar10, train_val_split
from gpuconv.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential
from gpuconv.models import three_layer_convnet
from gpuconv.optim import SGD, CosineLR, OneCycleLR, StepLR
from gpuconv.syncguard import no_sync
from gpuconv.trainer import (GPUOutOfMemory, Trainer, TrainingDiverged, TrainingInterrupted, evaluate,
                             oom_message)


@pytest.fixture(scope="module")
def cifar(request):
    from conftest import SUBSET
    if not (SUBSET / "data_batch_1").exists():
        pytest.fail(f"the CIFAR-10 subset is missing at {SUBSET}; set GPUCONV_TEST_DATA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the subset has no test_batch, which load_cifar10 warns about
        data = load_cifar10(SUBSET, download=False)
    return train_val_split(data.train, val_batch=5)  # batches 1-4 train, data_batch_5 held out


def small_net(seed=0):
    """Conv-BN-ReLU-pool-dropout-linear: parameters, buffers and a dropout RNG, all to be resumed."""
    return Sequential(Conv2d(3, 8, 3, padding=1, seed=seed), BatchNorm2d(8), ReLU(), MaxPool2d(4),
                      Dropout(0.25, seed=seed + 1), Flatten(), Linear(8 * 8 * 8, 10, seed=seed + 2))


def build(images, labels, out_dir, epochs, log_every=3, checkpoint_every="epoch"):
    """A fresh model/optimizer/schedule/loader/trainer, as a new process would build them."""
    model = small_net()
    loader = DeviceLoader(images, labels, 32, shuffle=True, augment=True, seed=7)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = OneCycleLR(opt, max_lr=0.05, total_steps=epochs * len(loader))
    trainer = Trainer(model, opt, sched, out_dir=out_dir, log_every=log_every, progress=False,
                      checkpoint_every=checkpoint_every)
    return trainer, loader


def assert_same_state(a: Trainer, b: Trainer):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), f"{k} differs"
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa.keys() == ob.keys()
    for k in oa:
        assert np.array_equal(np.asarray(oa[k]), np.asarray(ob[k])), f"optimizer {k} differs"
    assert a.optimizer.lr == b.optimizer.lr and a.step == b.step and a.epoch == b.epoch


# ----------------------------------------------------------------------------- learning
def test_three_layer_convnet_learns_on_real_images(cifar, tmp_path, capsys, monkeypatch):
    import gpuconv.trainer as trainer_module
    monkeypatch.setattr(trainer_module, "_is_terminal", lambda stream: True)  # as in a terminal: the bar
    train, val = cifar
    n = 2000  # calibrated: ~12 s on 2 shared cores, ~39% held-out accuracy after 2 epochs
    model = three_layer_convnet(seed=0)
    loader = DeviceLoader(train.images[:n], train.labels[:n], 64, shuffle=True, seed=0)
    val_loader = DeviceLoader(val.images, val.labels, 500, shuffle=False)
    opt = SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = OneCycleLR(opt, max_lr=0.02, total_steps=2 * len(loader))
    trainer = Trainer(model, opt, sched, out_dir=tmp_path, log_every=8, progress=True)
    history = trainer.fit(loader, 2, val=val_loader)

    assert [r["epoch"] for r in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"] < math.log(10)
    result = trainer.evaluate(val_loader)
    assert result["accuracy"] > 0.30, result["accuracy"]  # chance is 0.10
    assert result["accuracy"] == pytest.approx(history[-1]["val_acc"])
    last = trainer.last_validation  # the last epoch's validation, what the CLI prints at tta 0: the same, exactly
    assert (last["loss"], last["accuracy"], last["n"]) == (result["loss"], result["accuracy"], result["n"])
    assert np.array_equal(last["confusion"], result["confusion"]) and last["per_class"] == result["per_class"]

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    intervals = [r for r in lines if r["kind"] == "interval"]
    assert len(intervals) == 2 * math.ceil(len(loader) / 8)
    assert intervals[-1]["train_loss"] < intervals[0]["train_loss"] - 0.2
    for key in ("epoch", "step", "train_loss", "train_acc", "lr", "images_per_s", "elapsed_s"):
        assert key in intervals[0]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["val_acc"] for r in epochs] == [r["val_acc"] for r in history]
    assert epochs[-1]["step"] == 2 * len(loader) and epochs[-1]["elapsed_s"] > 0
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "img/s" in err and "val loss" in err  # progress bar and epoch lines

    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.npz")
    assert int(saved["meta/epoch"]) == 2 and int(saved["meta/step"]) == 2 * len(loader)


@pytest.mark.parametrize("seed", [-1, 2**64, 2**70])
def test_every_seed_taker_refuses_a_seed_outside_0_to_2_64_alike(seed):
    """One rule for a seed wherever it goes (the CLI's --seed says the same): none is reduced or
    wrapped silently, so two different seeds never give the same run."""
    from gpuconv.data import random_flip
    from gpuconv.models import seed_net
    model = small_net()
    opt = SGD(model.parameters(), lr=0.1)
    x = np.zeros((4, 3, 8, 8), np.uint8)
    takers = [lambda: Trainer(model, opt, seed=seed, progress=False), lambda: seed_net(seed=seed),
              lambda: Conv2d(3, 4, 3, seed=seed), lambda: Linear(3, 4, seed=seed), lambda: Dropout(0.5, seed=seed),
              lambda: DeviceLoader(x, np.arange(4), 2, seed=seed), lambda: random_flip(x, rng=seed),
              lambda: train_val_split(gpuconv.data.Split(x, np.arange(4)), val_fraction=0.5, seed=seed)]
    for make in takers:
        with pytest.raises(ValueError, match=r"is out of range: a seed is an integer in \[0, 2\*\*64\)"):
            make()
    assert Trainer(model, opt, seed=2**64 - 1, progress=False).rng.integers(2**62) \
        != Trainer(model, opt, seed=2**63 - 1, progress=False).rng.integers(2**62)


def test_trainer_repr_names_the_model_optimizer_schedule_and_progress():
    from gpuconv.lookahead import Lookahead
    net = Sequential(Flatten(), Linear(12, 3))
    opt = SGD(net.parameters(), lr=0.1)
    trainer = Trainer(net, opt, scheduler=CosineLR(opt, 10), lookahead=Lookahead(net), total_steps=10, progress=False)
    assert repr(trainer) == (
        "Trainer(model=Sequential (39 parameters), optimizer=SGD(2 params, lr=0.1, momentum=0.0, nesterov=False, "
        "weight_decay=0.0), scheduler=CosineLR(total_steps=10, min_lr=0.0, warmup_steps=0, last_step=0, lr=0.1), "
        "lookahead=Lookahead(Sequential, 2 arrays, every=5), precision='fp32', epoch=0, step=0, out_dir=None)")


def test_evaluate_matches_a_numpy_recount(cifar):
    train, val = cifar
    model = small_net()
    loader = DeviceLoader(val.images[:300], val.labels[:300], 128, shuffle=False)
    result = evaluate(model, loader)
    model.eval()
    x = np.concatenate([xb for xb, _ in loader])
    pred = model(x).argmax(axis=1)
    y = val.labels[:300]
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (y, pred), 1)
    np.testing.assert_array_equal(result["confusion"], expected)
    assert result["accuracy"] == pytest.approx((pred == y).mean())
    assert result["n"] == 300 and len(result["per_class"]) == 10
    for c in range(10):
        if expected[c].sum():
            assert result["per_class"][c] == pytest.approx(expected[c, c] / expected[c].sum())
    assert model.training is False  # evaluate restored the mode it found
    model.train()
    evaluate(model, loader, tta=True)
    assert model.training is True


def test_evaluate_summary_and_predict_keep_a_pending_forwards_caches():
    """A forward waiting for its backward keeps its caches through an evaluation, a summary or a
    prediction (they switched the network to eval mode and back, which dropped them: the backward
    raised 'without a cached forward pass'), and the network is in training mode again. A float64
    model, a gradient check's, gets its summary (a float32 probe image was refused)."""
    from gpuconv.inference import TrainedModel

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)).astype(np.float32), np.array([1, 2, 3, 0])
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for look in ("evaluate", "summary", "predict"):
        model = Sequential(Conv2d(3, 4, 3, padding=1, seed=0), BatchNorm2d(4), ReLU(), Flatten(),
                           Linear(256, 10, seed=1))
        trained = TrainedModel(model, [str(i) for i in range(10)], input_size=(8, 8))  # (it puts model in eval mode)
        logits = model.train()(x)
        {"evaluate": lambda: evaluate(model, [(x, y)]), "summary": lambda: model.summary((3, 8, 8)),
         "predict": lambda: trained.predict(images)}[look]()
        assert all(m.training for m in model.modules())
        assert model.backward(np.ones_like(logits)).shape == x.shape
    model = Sequential(Conv2d(3, 4, 3, padding=1, seed=0), Flatten(), Linear(256, 10, seed=1)).astype(np.float64)
    assert "Linear" in model.summary((3, 8, 8))


def test_evaluate_summary_and_predict_put_a_network_back_through_its_own_train():
    """A network whose class overrides train(mode) (to switch something of its own, as PyTorch
    modules do) is put back in training mode through that override after an evaluation, a summary
    or a prediction, as before they kept the caches; they set each layer's flag only, and the
    network's own switch stayed off."""
    from gpuconv.inference import TrainedModel

    class Net(Sequential):
        def train(self, mode=True):
            self.jitter = bool(mode)  # (e.g. input noise used in training only)
            return super().train(mode)

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 8, 8)).astype(np.float32), np.array([1, 2, 3, 0])
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for look in ("evaluate", "summary", "predict"):
        model = Net(Conv2d(3, 4, 3, padding=1, seed=0), ReLU(), Flatten(), Linear(256, 10, seed=1))
        trained = TrainedModel(model, [str(i) for i in range(10)], input_size=(8, 8))
        logits = model.train()(x)
        {"evaluate": lambda: evaluate(model, [(x, y)]), "summary": lambda: model.summary((3, 8, 8)),
         "predict": lambda: trained.predict(images)}[look]()
        assert model.jitter is True and all(m.training for m in model.modules()), look
        assert model.backward(np.ones_like(logits)).shape == x.shape


def test_evaluate_skips_empty_batches():
    """A batch of 0 images (the last of a filtered data set) counts nothing: the result is that of
    the other batches; a loader of empty batches only is refused as one of no batches is."""
    rng = np.random.default_rng(0)
    model = small_net()
    x, y = rng.standard_normal((3, 3, 32, 32)).astype(np.float32), np.array([1, 2, 3])
    empty = (np.zeros((0, 3, 32, 32), np.float32), np.zeros(0, np.int64))
    want = evaluate(model, [(x, y)])
    for batches in ([(x, y), empty], [empty, (x, y)]):
        got = evaluate(model, batches)
        assert got["n"] == 3 and got["loss"] == want["loss"]
        np.testing.assert_array_equal(got["confusion"], want["confusion"])
    with pytest.raises(ValueError, match="yielded no images"):
        evaluate(model, [empty])



class _LabelsWithoutLibraryGemm(np.ndarray):
    """Device labels where a matrix product of them would be CuPy's: a cuBLAS call, which the
    cuda12/cuda13 installs (CuPy and NVRTC alone) cannot make."""

    def __matmul__(self, other):
        raise ImportError("libcublas.so.13: cannot open shared object file (a library GEMM on device arrays)")

    __rmatmul__ = __matmul__


def test_evaluate_counts_the_confusion_matrix_without_a_library_gemm():
    """The confusion counts of an evaluation on a kernel device go through gpuconv's own GEMM: on a
    GPU, CuPy's matmul is cuBLAS, which a driver-only machine with the project's CUDA extras lacks.
    The same counts as the CPU's."""
    rng = np.random.default_rng(0)
    model = Sequential(Conv2d(3, 4, 3, padding=1, seed=0), ReLU(), MaxPool2d(2), Flatten(), Linear(64, 10, seed=1))
    x, y = rng.standard_normal((6, 3, 8, 8)).astype(np.float32), np.array([1, 2, 3, 3, 9, 0])
    want = evaluate(model, [(x, y)])
    with gpuconv.default_device("sim"):
        got = evaluate(model, [(x, y.view(_LabelsWithoutLibraryGemm))])
    np.testing.assert_array_equal(got["confusion"], want["confusion"])
    assert got["confusion"].sum() == 6 and got["accuracy"] == want["accuracy"]

# ----------------------------------------------------------------------------- device residency
def _tiny_sim_setup(log_every):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, 40)
    model = Sequential(Conv2d(3, 4, 3, padding=1, seed=0), ReLU(), MaxPool2d(2), Flatten(), Linear(64, 10, seed=1))
    loader = DeviceLoader(imgs, labels, 5, seed=0)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.05, total_steps=100)
    return Trainer(model, opt, sched, log_every=log_every, progress=False), loader


def test_a_training_step_reads_nothing_back_on_sim(monkeypatch):
    from gpuconv.ops import _dispatch
    kernels_run = []
    real_call = _dispatch.call

    def spy(op_name, target, reference, *args):
        if _dispatch.get_launcher(op_name, target) is not None:
            kernels_run.append(op_name)
        return real_call(op_name, target, reference, *args)

    monkeypatch.setattr(_dispatch, "call", spy)
    with gpuconv.default_device("sim"):
        trainer, loader = _tiny_sim_setup(log_every=100)
        batches = list(loader)
        backend.transfers.reset()
        for x, y in batches:  # 8 steps, fewer than log_every: no readback is due
            trainer.train_step(x, y)
        assert backend.transfers.device_to_host == 0
        assert {"conv2d_forward", "conv2d_backward"} <= set(kernels_run)  # the CUDA kernels ran, simulated
        stats = trainer._flush()
        assert backend.transfers.device_to_host == 1  # the whole interval comes back at once
        assert stats["steps"] == 8 and stats["n"] == 40 and 0 <= stats["correct"] <= 40
        assert np.isfinite(stats["loss"])


def test_fit_reads_back_once_per_log_interval_on_sim():
    with gpuconv.default_device("sim"):
        trainer, loader = _tiny_sim_setup(log_every=3)
        backend.transfers.reset()
        trainer.fit(loader, 2)  # 8 steps per epoch: readbacks after steps 3, 6 and at the epoch end
        assert backend.transfers.device_to_host == 2 * 3
        assert trainer.step == 16


# ----------------------------------------------------------------------------- NaN, OOM
class ListLoader:
    """Fixed batches; in epoch ``bad_epoch`` batch ``bad_batch`` carries a NaN pixel."""

    def __init__(self, batches, bad_epoch, bad_batch):
        self.batches, self.bad_epoch, self.bad_batch, self.epoch = batches, bad_epoch, bad_batch, 0
        self.batch_size = len(batches[0][1])

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, (x, y) in enumerate(self.batches):
            if (self.epoch, i) == (self.bad_epoch, self.bad_batch):
                x = x.copy()
                x[0, 0, 0, 0] = np.nan
            yield x, y


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(cifar, tmp_path):
    train, _ = cifar
    loader = DeviceLoader(train.images[:320], train.labels[:320], 32, shuffle=False)
    # 10 batches per epoch, readbacks after 4, 8 and 10 steps of each epoch: the NaN at batch 6
    # of epoch 2 (global step 16) is seen at the readback covering steps 15-18.
    bad = ListLoader(list(loader), bad_epoch=1, bad_batch=5)
    model = small_net()
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = Trainer(model, opt, out_dir=tmp_path, log_every=4, progress=False)
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(bad, 3)
    msg = str(info.value)
    assert info.value.step == 16
    assert "step 16" in msg and "epoch 2, batch 6" in msg and "steps 15-18" in msg and "--lr" in msg
    assert "last checkpoint that passed" in msg
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.npz")
    assert int(saved["meta/epoch"]) == 1 and int(saved["meta/step"]) == 10  # epoch 1's, untouched
    assert all(np.isfinite(v).all() for k, v in saved.items() if k.startswith("model/"))


def _one_epoch_run(cifar, out_dir):
    """(model, trainer, loader, val_loader) after one epoch of 2 batches with validation into ``out_dir``."""
    train, val = cifar
    loader = DeviceLoader(train.images[:128], train.labels[:128], 64, shuffle=False)
    val_loader = DeviceLoader(val.images[:64], val.labels[:64], 64, shuffle=False)
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=out_dir, progress=False)
    trainer.fit(loader, 1, val=val_loader)
    return model, trainer, loader, val_loader


def test_diverged_weights_are_never_checkpointed(cifar, tmp_path):
    """A finite training loss does not make the weights after its update good: an epoch's end
    with a NaN validation loss, or weights gone NaN, raise and keep the checkpoint on disk."""
    model, trainer, loader, val_loader = _one_epoch_run(cifar, tmp_path)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    model[6].weight.data[0, 0] = np.inf  # the head gone: every logit non-finite, the next steps' losses too
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf)|NaN or Inf") as info:
        trainer.fit(loader, 2, val=val_loader)
    assert "last checkpoint that passed is kept" in str(info.value)
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    with pytest.raises(TrainingDiverged, match=r"the model's weights became NaN or Inf \(.*weight.*\) by step 4"):
        trainer.save_checkpoint()
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    model = small_net()  # good weights, but a validation loss of NaN: the epoch is not saved
    trainer2 = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path / "b", progress=False)
    nan_val = [(xb.copy(), yb) for xb, yb in val_loader]
    nan_val[0][0][0, 0, 0, 0] = np.nan
    with pytest.raises(TrainingDiverged, match="the validation loss became nan after epoch 1"):
        trainer2.fit(loader, 1, val=nan_val)
    assert not (tmp_path / "b" / "checkpoint.npz").exists()



def test_best_npz_is_never_written_of_non_finite_weights(cifar, tmp_path):
    """Without epoch checkpoints best.npz is saved on its own: it is held to the same check. A
    batch variance past float32's range leaves a running_var inf while every loss stays finite
    (the channel normalized by 1/sqrt(inf) = 0)."""
    train, val = cifar
    loader = DeviceLoader(train.images[:64], train.labels[:64], 64, shuffle=False)
    val_loader = DeviceLoader(val.images[:64], val.labels[:64], 64, shuffle=False)
    model = small_net()

    def blow_up(epoch):
        model[1].running_var[0] = np.inf

    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False,
                      checkpoint_every=None, epoch_start=blow_up)
    with pytest.raises(TrainingDiverged, match=r"the model's weights became NaN or Inf \(1\.running_var\)"):
        trainer.fit(loader, 1, val=val_loader)
    assert not (tmp_path / "best.npz").exists()
    # a good epoch first: the error names the best epoch's checkpoint, the only one on disk
    model = small_net()

    def later(epoch):
        if epoch == 1:
            model[0].weight.data[0] = np.nan  # the loss is NaN at the next readback

    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path / "b", progress=False,
                      checkpoint_every=None, epoch_start=later)
    with pytest.raises(TrainingDiverged, match=r"no checkpoint was written .* best epoch's is kept at .*best\.npz"):
        trainer.fit(loader, 2, val=val_loader)
    assert (tmp_path / "b" / "best.npz").exists()


class FakeOOM(MemoryError):
    pass


FakeOOM.__name__ = "OutOfMemoryError"  # what cupy.cuda.memory.OutOfMemoryError is called


class FakePool:
    def total_bytes(self):
        return 6 * 2**30

    def used_bytes(self):
        return 5 * 2**30


def test_oom_message_names_batch_pool_and_fix(tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"x")
    msg = oom_message(FakeOOM("Out of memory allocating 1,073,741,824 bytes"), batch_size=512, pool=FakePool(),
                      checkpoint=tmp_path / "checkpoint.npz")
    assert "out of GPU memory" in msg and "batch size 512" in msg and "1,073,741,824" in msg
    assert "6.00 GiB" in msg and "5.00 GiB" in msg
    assert "--batch-size 256" in msg and "--resume" in msg and str(tmp_path) in msg
    host = oom_message(MemoryError("Unable to allocate 8 GiB"), batch_size=1)
    assert "out of host memory" in host and "smaller batch" in host


def test_cublas_and_driver_allocation_failures_count_as_out_of_memory():
    from gpuconv.trainer import _is_oom

    def cupy_error(name, module, text):
        return type(name, (RuntimeError,), {"__module__": module})(text)

    assert _is_oom(cupy_error("CUBLASError", "cupy_backends.cuda.libs.cublas", "CUBLAS_STATUS_ALLOC_FAILED"))
    assert _is_oom(cupy_error("CUDADriverError", "cupy_backends.cuda.api.driver",
                              "CUDA_ERROR_OUT_OF_MEMORY: out of memory"))
    assert _is_oom(MemoryError("Unable to allocate 8 GiB"))
    assert not _is_oom(cupy_error("CUDADriverError", "cupy_backends.cuda.api.driver", "CUDA_ERROR_ILLEGAL_ADDRESS"))
    assert not _is_oom(RuntimeError("my own code ran out of memory budget"))  # not CuPy's: not ours to rename


def test_out_of_memory_in_fit_keeps_the_checkpoint(cifar, tmp_path):
    train, _ = cifar
    model = small_net()
    loader = DeviceLoader(train.images[:64], train.labels[:64], 32, shuffle=False)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
    trainer.fit(loader, 1)
    real_forward = model.forward
    model.forward = lambda x: (_ for _ in ()).throw(FakeOOM("out of memory"))
    with pytest.raises(GPUOutOfMemory, match="batch size 32") as info:
        trainer.fit(loader, 2, resume=True)
    assert "--batch-size 16" in str(info.value) and "last checkpoint stands" in str(info.value)
    model.forward = real_forward
    assert int(ckpt.load_checkpoint(tmp_path)["meta/epoch"]) == 1


# ----------------------------------------------------------------------------- resume
def test_resume_after_an_epoch_is_bit_identical(cifar, tmp_path):
    train, _ = cifar
    images, labels = train.images[:192], train.labels[:192]
    full, loader = build(images, labels, tmp_path / "full", epochs=3)
    full.fit(loader, 3)

    first, loader1 = build(images, labels, tmp_path / "split", epochs=3)
    first.fit(loader1, 1)  # "interrupted" after epoch 1: the process ends here
    saved = np.load(tmp_path / "split" / "checkpoint.npz", allow_pickle=False)
    assert int(saved["meta/epoch"]) == 1 and int(saved["meta/epoch_step"]) == 0
    assert any(k.startswith("rng/model.") and "_rngs" in k for k in saved.files)  # the dropout stream
    assert "loader/__tree__" in saved.files and "sched/__tree__" in saved.files

    second, loader2 = build(images, labels, tmp_path / "split", epochs=3)  # a new process
    second.fit(loader2, 3, resume=True)
    assert_same_state(full, second)
    # The checkpoint files hold the same arrays, every one (the time spent aside), the config too: a
    # run given none keeps none (an empty one, read back from the checkpoint, took the loader's
    # normalization, and the resumed run's files differed from the uninterrupted run's).
    a, b = (ckpt.load_checkpoint(tmp_path / d / "checkpoint.npz") for d in ("full", "split"))
    assert sorted(a) == sorted(b) and ckpt.read_config(b) == {}
    assert [k for k in a if k != "meta/elapsed" and (a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes())] \
        == []
    # The history reads as one run.
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1, 2, 3]
    assert [r["epoch"] for r in second.history] == [1, 2, 3]


def test_a_checkpoint_that_does_not_fit_changes_nothing(cifar, tmp_path):
    """load_checkpoint is all or nothing: a mismatch found late (the optimizer, the schedule) leaves the
    weights, optimizer, schedule, RNGs and loader as they were."""
    from gpuconv.optim import Adam
    train, _ = cifar
    images, labels = train.images[:96], train.labels[:96]
    saved, loader = build(images, labels, tmp_path / "a", epochs=2)
    saved.fit(loader, 1)  # writes a checkpoint one epoch in

    def fresh(kind):
        trainer, loader = build(images, labels, tmp_path / "b", epochs=2)
        if kind == "adam":
            trainer.optimizer = Adam(trainer.model.parameters(), lr=1e-3)
            trainer.scheduler = None
        else:  # another schedule: found after the weights and the optimizer state are in
            trainer.scheduler = CosineLR(trainer.optimizer, total_steps=2 * len(loader))
        trainer.fit(loader, 1)  # state of its own, unlike the checkpoint's
        return trainer, loader

    for kind, error in (("adam", "saved by optimizer 'SGD'"), ("schedule", "OneCycleLR")):
        trainer, loader = fresh(kind)
        before = trainer._restorable(loader)
        with pytest.raises(ValueError, match=error):
            trainer.load_checkpoint(tmp_path / "a" / "checkpoint.npz", loader=loader)
        after = trainer._restorable(loader)
        assert before.keys() == after.keys()
        changed = [k for k in before if not np.array_equal(before[k], after[k])]
        assert not changed, f"{kind}: {changed} changed by a load that failed"
        assert trainer.step == len(loader) and trainer.epoch == 1


def _with_tuned_variant(cifar, path, variant):
    """Write ``path``: the checkpoint of one epoch on 64 images whose autotuning table names
    ``variant`` for a convolution; the images and labels."""
    train, _ = cifar
    images, labels = train.images[:64], train.labels[:64]
    saved, loader = build(images, labels, path.parent / "a", epochs=2)
    saved.fit(loader, 1)
    arrays = ckpt.load_checkpoint(path.parent / "a" / "checkpoint.npz")
    arrays["meta/autotune"] = ckpt.pack_json({"conv2d_forward[float32] sim N32 C3 H32 W32 K8 F3x3 S1x1 P1x1": variant})
    ckpt.save_checkpoint(path, arrays)
    return images, labels


def test_a_checkpoint_naming_an_unknown_autotuned_variant_changes_nothing(cifar, tmp_path):
    """A checkpoint's autotuning table naming a variant this version does not have (one deleted since
    the run was written) is refused before anything is restored, naming the checkpoint: it used to
    raise after the weights, optimizer and counters were in."""
    from gpuconv import kernels
    images, labels = _with_tuned_variant(cifar, tmp_path / "old.npz", "v0")
    trainer, loader = build(images, labels, tmp_path / "b", epochs=2)
    before = trainer._restorable(loader)
    with pytest.raises(ValueError, match=r"old\.npz records an autotuned kernel variant.*not 'v0'.*another gpuconv"):
        trainer.load_checkpoint(tmp_path / "old.npz", loader=loader)
    after = trainer._restorable(loader)
    assert not [k for k in before if not np.array_equal(before[k], after[k])] and trainer.step == 0
    assert "v0" not in kernels.tuned_variants().values()


def test_raw_pixels_and_an_empty_loader_are_refused(cifar):
    """uint8 images cast to float would train on 0-255 values (loss in the hundreds, no error); an
    empty loader would pass epochs untrained."""
    train, _ = cifar
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False)
    with pytest.raises(TypeError, match="dtype uint8: a network takes normalized float images.*normalize"):
        trainer.train_step(train.images[:4], train.labels[:4])
    with pytest.raises(TypeError, match="dtype uint8"):
        evaluate(model, [(train.images[:4], train.labels[:4])])
    with pytest.raises(ValueError, match="yielded no batches in epoch 1"):
        trainer.fit([], 1)
    assert trainer.step == 0 and trainer.history == []



def test_a_batch_of_lists_is_refused_by_name():
    """Images as nested lists (or a tensor of another library) are named with the conversion, in
    training and in evaluation, not an AttributeError on .dtype or .shape."""
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False)
    x, y = np.zeros((2, 3, 32, 32), np.float32).tolist(), np.array([0, 1])
    with pytest.raises(TypeError, match=r"x must be a numpy or cupy array, got list: wrap it first.*np\.asarray"):
        trainer.fit([(x, y)], 1)
    with pytest.raises(TypeError, match=r"x must be a numpy or cupy array, got list: wrap it first.*np\.asarray"):
        evaluate(model, [(x, y)])
    assert trainer.step == 0


def test_a_float64_model_in_float32_precision_is_named():
    """A float64 model (converted for a gradient check) in a float32 trainer: the batch is cast to
    float32, so the layers' hint 'pass x.astype(np.float64)' would tell the user to do what they
    did. The precision and the model's dtype are named instead, with the conversion, in the error
    the layers raise for it (gpuconv.DtypeMismatchError, a TypeError)."""
    model = small_net().astype(np.float64)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False)
    x, y = np.zeros((2, 3, 32, 32)), np.array([0, 1])
    match = r"precision 'fp32' computes in float32, but the model's parameter '0\.weight' is float64: .*model\.astype"
    with pytest.raises(gpuconv.DtypeMismatchError, match=match):
        trainer.fit([(x, y)], 1)
    with pytest.raises(gpuconv.DtypeMismatchError, match=match):
        evaluate(model, [(x, y)])
    assert trainer.step == 0
    # a network whose first layer is a batch norm (its parameters checked by their compute dtype)
    model = Sequential(BatchNorm2d(3), Flatten(), Linear(3 * 32 * 32, 10)).astype(np.float64)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False)
    with pytest.raises(gpuconv.DtypeMismatchError, match=match):
        trainer.fit([(x, y)], 1)


def test_fit_trains_a_model_left_in_eval_mode(cifar, tmp_path):
    """model.eval() to look at predictions (or a cell stopped before its model.train()), then fit
    again: the model trains as it would have from training mode, and is in training mode after."""
    train, _ = cifar
    images, labels = train.images[:64], train.labels[:64]
    reference, loader = build(images, labels, tmp_path / "ref", epochs=1)
    reference.fit(loader, 1)
    trainer, loader = build(images, labels, tmp_path / "eval", epochs=1)
    trainer.model.eval()
    trainer.fit(loader, 1)
    assert_same_state(reference, trainer)
    assert trainer.model.training and all(m.training for m in trainer.model.modules())

def test_fit_started_during_another_threads_evaluation_leaves_it_in_eval_mode(monkeypatch):
    """Trainer.fit put the model in training mode without the evaluation's lock: started in one
    thread while another evaluated the same model, the evaluation's later batches ran in training
    mode (batch statistics, dropout, running statistics updated) and gave another loss."""
    import threading
    import time
    model = small_net()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 8)
    want = evaluate(model, [(x, y)] * 3)
    modes, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda a: (modes.append(model.training), forward(a))[1])
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False)
    fit = threading.Thread(target=trainer.fit, args=([(x, y)], 1))

    def loader():
        yield x, y
        fit.start()
        time.sleep(0.3)  # fit begins while the evaluation is between two batches
        yield x, y
        yield x, y

    got = evaluate(model, loader())
    fit.join()
    assert modes[:3] == [False] * 3 and trainer.step == 1 and model.training
    assert got["loss"] == want["loss"]


def test_a_fit_past_the_end_of_its_schedule_is_refused_before_a_step(cifar, tmp_path):
    """fit(loader, 3) after a 2-epoch one-cycle run (a notebook's "train some more") stopped at its first
    step with the schedule's error, that step's update applied and not counted; it trains nothing now."""
    train, _ = cifar
    trainer, loader = build(train.images[:64], train.labels[:64], tmp_path, epochs=2)
    trainer.fit(loader, 2)
    before = {k: np.array(v) for k, v in trainer.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^fit\(epochs=3\) would run 2 more steps, to step 6, past the end of its "
                                         r"OneCycleLR \(total_steps=4, at step 4 now\); nothing was trained"):
        trainer.fit(loader, 3)
    assert trainer.step == 4 and trainer.scheduler.last_step == 4
    assert all(np.array_equal(before[k], v) for k, v in trainer.model.state_dict().items())

def test_a_pair_of_arrays_for_a_loader_is_named(cifar):
    """fit((images, labels)) would iterate over the images and fail on unpacking one of them."""
    train, _ = cifar
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False)
    pair = (train.images[:4], train.labels[:4])
    loader = DeviceLoader(*pair, 2)
    for call, name in ((lambda: trainer.fit(pair, 1), "train_loader"), (lambda: trainer.fit(loader, 1, val=pair), "val"),
                       (lambda: trainer.evaluate(list(pair)), "loader")):
        with pytest.raises(TypeError, match=rf"^{name} is a pair of arrays \(\(4, 3, 32, 32\) and \(4,\)\), not an "
                                            r"iterable of \(x, y\) batches: wrap them in a loader, e.g. gpuconv.data.DeviceLoader"):
            call()
    assert trainer.step == 0


def test_a_notebook_gets_the_progress_bar_a_pipe_does_not(monkeypatch):
    """Jupyter's stderr is no terminal, but its output area redraws tqdm's bar: the plain line per
    interval is for pipes and log files only."""
    import sys
    import types

    import gpuconv.trainer as trainer_module
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.1), progress=True)
    monkeypatch.setattr(trainer_module, "_is_terminal", lambda stream: False)
    fake = types.ModuleType("IPython")
    for shell, plain in (("ZMQInteractiveShell", False), ("TerminalInteractiveShell", True)):
        fake.get_ipython = lambda shell=shell: type(shell, (), {})()
        monkeypatch.setitem(sys.modules, "IPython", fake)
        assert trainer._plain_intervals() is plain, shell
    monkeypatch.delitem(sys.modules, "IPython")
    assert trainer._plain_intervals()


def test_a_lookahead_planned_for_another_length_is_warned_about(cifar):
    from gpuconv.lookahead import Lookahead
    train, _ = cifar
    loader = DeviceLoader(train.images[:128], train.labels[:128], 64, shuffle=False)
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False, lookahead=Lookahead(model, every=2),
                      total_steps=3)
    with pytest.warns(UserWarning, match=r"total_steps=3, but this fit runs 2 x 2 = 4 steps"):
        trainer.fit(loader, 2)


def test_a_checkpoint_without_a_lookahead_is_refused_by_a_trainer_with_one_by_name(tmp_path):
    """A Trainer with a lookahead loading a run's checkpoint written without one said "'ema....' is
    missing; the state dict is of another model" (the model was the same); it now names the
    lookahead, and the trainer is left as it was."""
    from gpuconv.lookahead import Lookahead
    model = small_net()
    Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False).save_checkpoint()
    model2 = small_net(seed=3)
    before = {k: v.copy() for k, v in model2.state_dict().items()}
    trainer = Trainer(model2, SGD(model2.parameters(), lr=0.01), out_dir=tmp_path, progress=False,
                      lookahead=Lookahead(model2, every=2), total_steps=4)
    with pytest.raises(ValueError, match="has no lookahead average but this Trainer has a lookahead"):
        trainer.load_checkpoint()
    assert all(np.array_equal(v, model2.state_dict()[k]) for k, v in before.items())


def test_a_lookahead_whose_first_update_comes_after_the_last_step_is_warned_about():
    """A run shorter than the lookahead's interval (airbench94's every=5 on a few hundred images in
    batches of 1024: a step per epoch) never updates the average, and its last update put the model
    back on its initial weights: it ended untrained, without a word."""
    from gpuconv.lookahead import Lookahead
    model = small_net()
    with pytest.warns(RuntimeWarning, match=r"first update comes at step every=5, after the run's last step "
                                            r"\(total_steps=3\).*trains nothing"):
        Trainer(model, SGD(model.parameters(), lr=0.01), progress=False, lookahead=Lookahead(model, every=5),
                total_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(model, SGD(model.parameters(), lr=0.01), progress=False, lookahead=Lookahead(model, every=5),
                total_steps=5)


def test_a_resume_drops_the_epoch_line_its_checkpoint_did_not_see(tmp_path):
    """A step checkpoint at an epoch's last step, then the epoch's line, then a kill before the
    epoch's own save: the line has the checkpoint's step but an epoch it has not done, and the
    resumed run writes it again (it was there twice)."""
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
    lines = [{"kind": "interval", "epoch": 1, "step": 8}, {"kind": "epoch", "epoch": 1, "step": 8},
             {"kind": "interval", "epoch": 2, "step": 16}, {"kind": "epoch", "epoch": 2, "step": 16},
             {"kind": "interval", "epoch": 3, "step": 20}]
    trainer.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    trainer.step, trainer.epoch = 16, 1  # the checkpoint: epoch 2's last step, epoch 2 not yet done
    trainer._trim_metrics()
    kept = [json.loads(x) for x in trainer.metrics_path.read_text().splitlines()]
    assert kept == lines[:3] and [r["epoch"] for r in trainer.history] == [1]


def test_metrics_lines_end_in_one_newline_on_windows(tmp_path, monkeypatch):
    """Windows' os.open gives a text-mode descriptor unless O_BINARY is asked for, whose writes put a
    second carriage return before each line feed of the text wrapper's CRLF (a blank line between
    records for read_text().splitlines()): the metrics file is opened in binary mode, one LF a line."""
    O_BINARY = 0x8000  # Windows' value; on Linux x86-64 O_LARGEFILE, which changes nothing here
    monkeypatch.setattr(os, "O_BINARY", O_BINARY, raising=False)
    import gpuconv.trainer
    monkeypatch.setattr(gpuconv.trainer, "BINARY", O_BINARY, raising=False)
    flags, real_open = [], os.open

    def recording_open(path, f, *args, **kwargs):
        if str(path).endswith("metrics.jsonl"):
            flags.append(f)
        return real_open(path, f, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
    trainer._write_metrics({"kind": "interval", "epoch": 1, "step": 1})
    trainer._write_metrics({"kind": "epoch", "epoch": 1, "step": 1})
    trainer.step, trainer.epoch = 1, 1
    trainer._trim_metrics()
    assert flags and all(f & O_BINARY for f in flags)
    assert trainer.metrics_path.read_bytes().count(b"\n") == 2 and b"\r" not in trainer.metrics_path.read_bytes()
    assert [r["epoch"] for r in trainer.history] == [1]


def test_a_resume_repairs_best_npz_a_kill_left_behind(cifar, tmp_path):
    """A kill between an epoch's checkpoint and its copy to best.npz: the resume makes best.npz
    that epoch's when it is the best so far."""
    model, trainer, loader, val_loader = _one_epoch_run(cifar, tmp_path)
    (tmp_path / "best.npz").unlink()  # as if the kill came before the copy
    model = small_net()
    resumed = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
    resumed.fit(loader, 1, val=val_loader, resume=True)  # nothing left to train
    assert (tmp_path / "best.npz").read_bytes() == (tmp_path / "checkpoint.npz").read_bytes()


def test_a_fit_removes_the_partial_files_a_kill_mid_write_left(cifar, tmp_path):
    """A kill -9 while a checkpoint was written (the OOM killer, a scheduler past its grace time, a
    power cut) keeps the previous checkpoint and leaves the write's temporary file beside it: a
    checkpoint's size, hidden, kept run after run until the disk fills. The next fit into the
    directory, holding its lock, removes those, and nothing else."""
    import tempfile
    model, trainer, loader, val_loader = _one_epoch_run(cifar, tmp_path)
    partial = []
    for name in ("checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png"):  # as write_atomic names them
        fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=tmp_path)
        os.write(fd, b"PK\x03\x04" + b"\0" * 100)
        os.close(fd)
        partial.append(path)
    kept = [tmp_path / n for n in (".checkpoint.npz.tmp", "notes.tmp", ".best.npz.abcdefgh.tmp.old", ".x.abcdefgh.tmp")]
    for path in kept:
        path.write_bytes(b"mine")
    (tmp_path / ".checkpoint.npz.dir12345.tmp").mkdir()
    model = small_net()
    resumed = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
    resumed.fit(loader, 1, val=val_loader, resume=True)  # nothing left to train
    assert not any(os.path.exists(p) for p in partial)
    assert all(p.read_bytes() == b"mine" for p in kept) and (tmp_path / ".checkpoint.npz.dir12345.tmp").is_dir()


def test_stop_signal_messages_say_what_is_finished_and_what_is_kept(cifar, tmp_path, capsys):
    model, trainer, _, _ = _one_epoch_run(cifar, tmp_path)
    trainer._validating = True
    trainer._on_stop_signal(signal.SIGINT, None)
    assert "Ctrl-C: finishing the validation pass, then saving a checkpoint" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt, match=f"stopped at once; the last checkpoint on disk is {tmp_path}"):
        trainer._on_stop_signal(signal.SIGINT, None)


def test_stop_signal_messages_in_a_notebook_name_the_kernel_interrupt(tmp_path, capsys, monkeypatch):
    """In a Jupyter kernel SIGINT comes from the kernel's interrupt (its stop button): the way to stop at
    once is to interrupt it again, not Ctrl-C (which copies text in a browser)."""
    import sys
    import types
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    for signum, expected in ((signal.SIGINT, "kernel interrupted: finishing the current step, then saving a checkpoint "
                                             "(interrupt the kernel again to stop at once without saving)"),
                             (signal.SIGTERM, "SIGTERM: finishing the current step, then saving a checkpoint (a second "
                                              "SIGTERM or a kernel interrupt to stop at once without saving)")):
        model = small_net()
        trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
        trainer._on_stop_signal(signum, None)
        err = capsys.readouterr().err
        assert expected in err and "Ctrl-C" not in err, err


class SigintAt(DeviceLoader):
    """A DeviceLoader that sends this process SIGINT (as Ctrl-C does), or ``sig``, when it yields
    a given batch."""

    kill_at = None  # (epoch, batch)
    sig = signal.SIGINT

    def _batches(self, epoch, start):
        for i, batch in enumerate(super()._batches(epoch, start), start=start):
            if (epoch, i) == self.kill_at:
                os.kill(os.getpid(), self.sig)
            yield batch


def test_a_fit_that_fails_to_start_its_monitor_puts_the_signal_handlers_back(cifar, tmp_path, monkeypatch):
    train, _ = cifar
    trainer, loader = build(train.images[:64], train.labels[:64], tmp_path, epochs=1)
    old = {sig: signal.getsignal(sig) for sig in trainer.STOP_SIGNALS}

    def broken():
        raise RuntimeError("NVML went away")
    monkeypatch.setattr(trainer, "_start_monitor", broken)
    with pytest.raises(RuntimeError, match="NVML went away"):
        trainer.fit(loader, 1)
    assert {sig: signal.getsignal(sig) for sig in trainer.STOP_SIGNALS} == old


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_mid_epoch_saves_and_resumes_bit_identically(cifar, tmp_path, sig):
    train, _ = cifar
    images, labels = train.images[:192], train.labels[:192]  # 6 batches of 32 per epoch
    full, loader = build(images, labels, tmp_path / "full", epochs=2)
    full.fit(loader, 2)

    first, _ = build(images, labels, tmp_path / "cut", epochs=2)
    killer = SigintAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    killer.kill_at, killer.sig = (1, 2), sig
    old = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted) as info:
        first.fit(killer, 2)
    assert signal.getsignal(sig) is old and info.value.signal == sig  # the handler is put back
    assert "resume" in str(info.value) and info.value.checkpoint == tmp_path / "cut" / "checkpoint.npz"
    saved = ckpt.load_checkpoint(info.value.checkpoint)
    # The step in flight when Ctrl-C came (epoch 2, batch 3) finished, then the checkpoint was written.
    assert int(saved["meta/epoch"]) == 1 and int(saved["meta/epoch_step"]) == 3 and int(saved["meta/step"]) == 9

    second, loader2 = build(images, labels, tmp_path / "cut", epochs=2)
    second.fit(loader2, 2, resume=True)
    assert_same_state(full, second)
    # The resumed epoch's record covers the whole epoch (the 3 batches before the stop too).
    for key in ("train_loss", "train_acc"):
        assert second.history[-1][key] == pytest.approx(full.history[-1][key], rel=1e-12), key


def test_ctrl_c_without_an_out_dir_says_that_fit_again_continues(cifar):
    """Without an out_dir nothing is saved; the message says how to go on (a notebook's cell
    below: fit again on the same Trainer), and that continues the run where it stopped."""
    train, _ = cifar
    images, labels = train.images[:64], train.labels[:64]  # 2 batches of 32 per epoch
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), progress=False)
    killer = SigintAt(images, labels, 32, shuffle=False)
    killer.kill_at = (0, 0)
    with pytest.raises(TrainingInterrupted, match=r"at epoch 1, batch 1 \(step 1\); no out_dir was given, so nothing "
                       r"was saved to disk; fit\(\.\.\.\) again on this Trainer continues the run in this process"):
        trainer.fit(killer, 1)
    trainer.fit(DeviceLoader(images, labels, 32, shuffle=False), 1)
    assert trainer.step == 2 and trainer.epoch == 1 and len(trainer.history) == 1


def test_a_signal_the_process_ignores_stays_ignored(cifar, tmp_path):
    """A job started in the background of a script ignores SIGINT (the shell's Ctrl-C is the
    foreground's), as Python leaves it: fit keeps it ignored and trains on (SIGTERM, not ignored,
    still stops it: the test above)."""
    train, _ = cifar
    images, labels = train.images[:96], train.labels[:96]
    trainer, _ = build(images, labels, tmp_path, epochs=1)
    killer = SigintAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    killer.kill_at = (0, 1)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer.fit(killer, 1)  # the SIGINT at batch 1 changes nothing
        assert trainer.step == 3 and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_stop_whose_checkpoint_cannot_be_written_says_so(cifar, tmp_path, monkeypatch):
    """SIGTERM, then a full disk as the checkpoint is written: fit raises TrainingInterrupted (the
    stop happened) with no checkpoint, the OSError as ``save_error``, and a message that says the
    progress was not saved and which checkpoint is intact, never that one was saved."""
    import errno
    train, _ = cifar
    images, labels = train.images[:192], train.labels[:192]  # 6 batches of 32 per epoch
    trainer, _ = build(images, labels, tmp_path / "cut", epochs=2)
    killer = SigintAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    killer.kill_at, killer.sig = (1, 2), signal.SIGTERM
    real_save = ckpt.save_checkpoint

    def full_disk_in_epoch_2(path, arrays):
        if trainer.epoch_step:  # the stop's save, mid-epoch (epoch 1's end was saved)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(path, arrays)

    monkeypatch.setattr(ckpt, "save_checkpoint", full_disk_in_epoch_2)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(killer, 2)
    exc = info.value
    assert exc.checkpoint is None and exc.signal == signal.SIGTERM and exc.save_error.errno == errno.ENOSPC
    assert exc.__cause__ is exc.save_error and "saved to" not in str(exc)
    assert str(exc).startswith("training stopped by SIGTERM at epoch 2, batch 3 (step 9); its progress was NOT "
                               f"saved: could not write {trainer.checkpoint_path} at step 9 (")
    assert f"the checkpoint of epoch 1's end (step 6) is intact at {trainer.checkpoint_path}" in str(exc)
    assert int(ckpt.load_checkpoint(trainer.checkpoint_path)["meta/step"]) == 6


def test_fit_again_after_a_stop_reports_the_whole_epoch(cifar, tmp_path):
    """Ctrl-C, then fit() again on the same Trainer (a notebook's interrupt and rerun, no resume=True):
    training continues where it stopped, and the interrupted epoch's record counts its batches
    before the stop too, as the uninterrupted run's does."""
    train, _ = cifar
    images, labels = train.images[:192], train.labels[:192]
    full, loader = build(images, labels, tmp_path / "full", epochs=1)
    full.fit(loader, 1)
    trainer, _ = build(images, labels, tmp_path / "cut", epochs=1)
    killer = SigintAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    killer.kill_at = (0, 2)
    with pytest.raises(TrainingInterrupted):
        trainer.fit(killer, 1)
    trainer.fit(killer, 1)
    assert_same_state(full, trainer)
    assert [(r["train_loss"], r["train_acc"]) for r in trainer.history] == \
        [(r["train_loss"], r["train_acc"]) for r in full.history]



class FailsAt(DeviceLoader):
    """A DeviceLoader that raises once when it is about to yield a given batch (a loader's error)."""

    fail_at = None  # (epoch, batch)

    def _batches(self, epoch, start):
        for i, batch in enumerate(super()._batches(epoch, start), start=start):
            if (epoch, i) == self.fail_at:
                self.fail_at = None
                raise OSError("the batch could not be read")
            yield batch


@pytest.mark.parametrize("where", ["train", "val"])
def test_fit_again_after_an_error_reports_the_whole_epoch(cifar, tmp_path, where):
    """An error mid-epoch (the training loader's) or in the validation pass, then fit() again on the
    same Trainer: training went on from the step reached, but the epoch's record counted only the
    batches after the last readback before the error (train_loss None after a validation error)."""
    train, val = cifar
    images, labels = train.images[:192], train.labels[:192]
    full, loader = build(images, labels, None, epochs=1)
    full.fit(loader, 1, val=DeviceLoader(val.images[:50], val.labels[:50], 50, shuffle=False))
    trainer, _ = build(images, labels, None, epochs=1)
    failing = FailsAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    val_loader = FailsAt(val.images[:50], val.labels[:50], 50, shuffle=False)
    (failing if where == "train" else val_loader).fail_at = (0, 4) if where == "train" else (0, 0)
    with pytest.raises(OSError):
        trainer.fit(failing, 1, val=val_loader)
    trainer.fit(failing, 1, val=val_loader)
    assert_same_state(full, trainer)
    assert [(r["train_loss"], r["train_acc"]) for r in trainer.history] == \
        [(r["train_loss"], r["train_acc"]) for r in full.history]


def test_last_validation_is_of_the_weights_the_fit_returned_with(cifar):
    """Trainer.last_validation (what gpuconv train prints at test-time augmentation level 0 instead of
    evaluating again) is the last epoch's validation after a fit, and None after an error past an
    epoch's validation: that result was of weights trained on since."""
    train, val = cifar
    images, labels = train.images[:96], train.labels[:96]
    trainer, _ = build(images, labels, None, epochs=2)
    failing = FailsAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    failing.fail_at = (1, 1)  # the second epoch's second batch
    val_loader = DeviceLoader(val.images[:50], val.labels[:50], 50, shuffle=False)
    with pytest.raises(OSError):
        trainer.fit(failing, 2, val=val_loader)
    assert trainer.epoch == 1 and trainer.step == 4 and trainer.last_validation is None
    trainer.fit(failing, 2, val=val_loader)
    fresh = trainer.evaluate(val_loader)
    assert (trainer.last_validation["loss"], trainer.last_validation["accuracy"]) == (fresh["loss"], fresh["accuracy"])
    assert trainer.history[-1]["val_loss"] == fresh["loss"]
    trainer.fit(failing, 2, val=val_loader)  # nothing left to train: nothing validated
    assert trainer.last_validation is None


def test_ctrl_c_in_the_last_validation_pass_says_the_run_is_complete(cifar, tmp_path):
    """A stop that comes while the last epoch is validated finds nothing left to train: the message
    says the run is complete (not "at epoch 3" of a 2-epoch run, nor to resume it)."""
    train, val = cifar
    trainer, loader = build(train.images[:64], train.labels[:64], tmp_path, epochs=2)
    val_loader = SigintAt(val.images[:50], val.labels[:50], 50, shuffle=False)
    val_loader.kill_at = (1, 0)  # the second validation pass: the last epoch's
    with pytest.raises(TrainingInterrupted) as info:
        trainer.fit(loader, 2, val=val_loader)
    assert str(info.value) == (f"training interrupted after its last epoch (2 of 2, step 4): the run is complete; "
                               f"checkpoint saved to {tmp_path / 'checkpoint.npz'}")
    assert trainer.epoch == 2 and len(trainer.history) == 2 and int(ckpt.load_checkpoint(
        info.value.checkpoint)["meta/epoch"]) == 2

def test_step_checkpoints_and_resume_without_a_checkpoint(cifar, tmp_path, capsys):
    train, _ = cifar
    trainer, loader = build(train.images[:96], train.labels[:96], tmp_path, epochs=1, checkpoint_every=2)
    trainer.fit(loader, 1, resume=True)  # nothing to resume: starts fresh and says so
    assert "starting from scratch" in capsys.readouterr().err
    assert int(ckpt.load_checkpoint(tmp_path)["meta/step"]) == 3
    again, loader = build(train.images[:96], train.labels[:96], tmp_path, epochs=1)
    assert again.fit(loader, 1, resume=True) == again.history
    assert "nothing to do" in capsys.readouterr().err


def test_bad_arguments_are_named():
    model = small_net()
    opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="log_every"):
        Trainer(model, opt, log_every=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        Trainer(model, opt, label_smoothing=1.0)
    with pytest.raises(ValueError, match="label_smoothing='0.1'"):
        Trainer(model, opt, label_smoothing="0.1")
    with pytest.raises(TypeError, match="optimizer=None: the Trainer needs an optimizer"):
        Trainer(model, None)
    with pytest.raises(ValueError, match="checkpoint_every"):
        Trainer(model, opt, checkpoint_every="sometimes")
    # a schedule or an optimizer of something else trained the model at a constant lr, or not at all
    with pytest.raises(ValueError, match="drives another optimizer than optimizer=SGD"):
        Trainer(model, opt, CosineLR(SGD(model.parameters(), lr=0.1), 10))
    with pytest.raises(ValueError, match="holds none of the model's parameters"):
        Trainer(model, SGD(small_net().parameters(), lr=0.1))
    from gpuconv.lookahead import Lookahead
    with pytest.raises(ValueError, match="averages another model than the one trained"):
        Trainer(model, opt, lookahead=Lookahead(small_net()), total_steps=10)
    for steps in (None, 0, True):  # (True was taken as 1 step)
        with pytest.raises(ValueError, match=f"lookahead needs total_steps .*, got {steps!r}"):
            Trainer(model, opt, lookahead=Lookahead(model), total_steps=steps)
    # a bool is no count (True was taken as 1: a checkpoint written at every step, a readback per step)
    with pytest.raises(ValueError, match="checkpoint_every=True: use 'epoch'"):
        Trainer(model, opt, checkpoint_every=True)
    with pytest.raises(ValueError, match="log_every=True: must be an int >= 1"):
        Trainer(model, opt, log_every=True)
    with pytest.raises(ValueError, match="epochs=True: must be an int >= 1"):
        Trainer(model, opt).fit([], True)
    with pytest.raises(ValueError, match="monitor='on': use 'auto'"):  # (it meant no telemetry, silently)
        Trainer(model, opt, monitor="on")
    for progress in ("epochs", 1, None):  # (a typo once drew progress-bar frames into a log file)
        with pytest.raises(ValueError, match=f"progress={progress!r}: use True"):
            Trainer(model, opt, progress=progress)
    with pytest.raises(ValueError, match="out_dir"):
        Trainer(model, opt).fit([], 1, resume=True)
    with pytest.raises(ValueError, match="epochs"):
        Trainer(model, opt).fit([], 0)


# ----------------------------------------------------------------------------- on a GPU (skipped without one)
@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason=f"no GPU: {backend.cuda_status()}")
def test_gpu_epoch_is_device_resident_and_the_pool_stops_growing(cifar, tmp_path):
    cp = backend.cupy_module()
    train, val = cifar
    with gpuconv.default_device("cuda"):
        model = three_layer_convnet(seed=0)
        loader = DeviceLoader(train.images, train.labels, 128, shuffle=True, augment=True, seed=0)
        opt = SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = OneCycleLR(opt, max_lr=0.02, total_steps=2 * len(loader))
        trainer = Trainer(model, opt, sched, out_dir=tmp_path, log_every=1000, progress=False)
        pool = cp.get_default_memory_pool()
        batches = list(loader)[:-1]  # equal-sized batches: allocation shapes repeat
        backend.transfers.reset()
        sizes = []
        for x, y in batches:
            trainer.train_step(x, y)
            sizes.append(pool.total_bytes())
        assert backend.transfers.device_to_host == 0
        assert sizes[-1] == sizes[4], f"pool grew after step 5: {sizes[4]} -> {sizes[-1]} bytes"
        with no_sync("three trainer steps", timeout=5.0):  # float(), .item(), CuPy readbacks fail here
            for x, y in batches[:3]:
                trainer.train_step(x, y)
        assert np.isfinite(trainer._flush()["loss"])
        model = three_layer_convnet(seed=0)  # a fresh run for fit()
        opt = SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4)
        sched = OneCycleLR(opt, max_lr=0.02, total_steps=2 * len(loader))
        trainer = Trainer(model, opt, sched, out_dir=tmp_path, log_every=10, progress=False)
        history = trainer.fit(loader, 2, val=DeviceLoader(val.images, val.labels, 500, shuffle=False))
        assert history[-1]["val_acc"] > 0.3
        lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert "pool_total_gib" in lines[-1]


def test_training_on_sim_tracks_the_cpu_run_on_real_images(cifar):
    """The trainer on Device('sim') (every conv/pool/ReLU/augment step through the CUDA kernels on
    the simulator) follows the NumPy run on real images: same losses step by step, same weights."""
    train, _ = cifar
    images, labels = train.images[:96], train.labels[:96]

    def run(device):
        with gpuconv.default_device(device):
            model = Sequential(Conv2d(3, 6, 3, padding=1, seed=0), BatchNorm2d(6), ReLU(), MaxPool2d(2),
                               Conv2d(6, 8, 3, padding=1, seed=1), ReLU(), MaxPool2d(4), Flatten(),
                               Linear(8 * 4 * 4, 10, seed=2))
            loader = DeviceLoader(images, labels, 32, shuffle=True, augment=True, seed=3)
            opt = SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
            trainer = Trainer(model, opt, log_every=1, progress=False)
            losses = []
            for _ in range(2):
                for x, y in loader:
                    trainer.train_step(x, y)
                    losses.append(trainer._flush()["loss"])
            return np.array(losses), model.state_dict()

    cpu_losses, cpu_state = run("cpu")
    sim_losses, sim_state = run("sim")
    assert len(cpu_losses) == 6 and cpu_losses[-1] < cpu_losses[0]
    np.testing.assert_allclose(sim_losses, cpu_losses, rtol=1e-4, atol=1e-5)
    for k in cpu_state:
        np.testing.assert_allclose(sim_state[k], cpu_state[k], rtol=1e-3, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("autotune", [False, True, "auto"])
def test_resuming_without_autotuning_warns_that_the_recorded_variants_are_not_taken(cifar, tmp_path, autotune,
                                                                                    monkeypatch):
    """A checkpoint's table of autotuned variants is what lets a resumed run go on bit for bit; a run
    resumed with autotuning off takes the default rule's variants instead, which it did silently.
    'auto' is off on the simulator (as the step decides it), so a sim run that autotuned and resumes
    with the default is warned too."""
    from gpuconv import kernels
    monkeypatch.delenv("GPUCONV_AUTOTUNE", raising=False)  # ('auto' takes its word)
    with gpuconv.default_device("sim"):
        images, labels = _with_tuned_variant(cifar, tmp_path / "tuned.npz", "v1")
        trainer, loader = build(images, labels, tmp_path / "b", epochs=2)
        trainer.autotune = autotune
        tuned = kernels.tuned_variants()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer.load_checkpoint(tmp_path / "tuned.npz", loader=loader)
        finally:
            kernels.load_tuned_variants(tuned, replace=True)
    said = [str(w.message) for w in caught if "autotuned variants" in str(w.message)]
    assert len(said) == (autotune is not True), said
    if said:
        assert "tuned.npz" in said[0] and "not bit for bit" in said[0]


def test_a_resume_drops_metrics_lines_that_hold_no_record(tmp_path):
    """Damaged lines of metrics.jsonl (JSON that is no object, a step that is no number, a
    loss that is text, a cut-off line) are dropped as a cut-off line is: the resume's trim read
    them with rec.get, an AttributeError that stopped the resume with a traceback."""
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
    good = [{"kind": "interval", "epoch": 1, "step": 4}, {"kind": "epoch", "epoch": 1, "step": 8, "val_acc": 0.25}]
    damaged = ["3", '"text"', "null", "[1, 2]", '{"kind": "epoch", "epoch": 1, "step": "8"}',
               '{"kind": "epoch", "step": 8}', '{"kind": "epoch", "epoch": 1, "step": 8, "val_acc": "0.5"}',
               '{"kind": "epoch", "epoch": true, "step": 8}', '{"kind": "epo']
    trainer.metrics_path.write_text(json.dumps(good[0]) + "\n" + "\n".join(damaged) + "\n" + json.dumps(good[1]) + "\n")
    trainer.step, trainer.epoch = 8, 1
    trainer._trim_metrics()
    assert [json.loads(x) for x in trainer.metrics_path.read_text().splitlines()] == good
    assert trainer.history == good[1:]


@pytest.mark.parametrize("fails, err", [("checkpoint.npz", "ENOSPC"), ("best.npz", "EIO"),
                                        ("metrics.jsonl", "EROFS"), ("curves.png", "EDQUOT")])
def test_a_failed_write_names_the_file_the_checkpoint_kept_and_the_way_on(cifar, tmp_path, monkeypatch, fails, err):
    """A full disk, a disk error, a file system remounted read-only while epoch 2 ends: the error
    (of the original's type and errno) names the file it could not write, the checkpoint that is
    intact (epoch 1's, or epoch 2's where its own write had passed) and how to go on; the run's
    files stay readable and no temporary file is left."""
    import errno
    number = getattr(errno, err, errno.ENOSPC)
    model, trainer, loader, val_loader = _one_epoch_run(cifar, tmp_path)
    real_open, real_savez = os.open, np.savez

    def failing_open(path, *args, **kwargs):  # every file the trainer writes is opened (mkstemp, O_APPEND) here
        name = os.path.basename(os.fspath(path))
        if name == fails or name.startswith(f".{fails}."):
            raise OSError(number, os.strerror(number), os.fspath(path))
        return real_open(path, *args, **kwargs)

    def partial_savez(f, **arrays):  # the disk fills halfway through the archive
        f.write(b"PK\x03\x04 partial")
        raise OSError(number, os.strerror(number))

    if fails == "checkpoint.npz":
        monkeypatch.setattr(np, "savez", partial_savez)
    else:
        monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(OSError) as info:
        trainer.fit(loader, 2, val=val_loader)
    monkeypatch.setattr(os, "open", real_open)
    monkeypatch.setattr(np, "savez", real_savez)
    message = str(info.value)
    assert info.value.errno == number and message.startswith(f"could not write {tmp_path / fails} at step 4 ")
    assert os.strerror(number) in message and "[Errno" not in message
    kept = 1 if fails in ("checkpoint.npz", "metrics.jsonl") else 2  # epoch 2's line comes before its checkpoint
    assert f"the checkpoint of epoch {kept}'s end (step {2 * kept}) is intact at {tmp_path / 'checkpoint.npz'}" in message
    assert f"--out {tmp_path} --resume" in message
    assert int(ckpt.load_checkpoint(tmp_path / "checkpoint.npz")["meta/epoch"]) == kept
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "temporary files left"


def test_the_metrics_lines_are_on_disk_before_the_checkpoint_that_follows_them(cifar, tmp_path, monkeypatch):
    """metrics.jsonl is appended to without fsync; a checkpoint is fsynced and renamed. A power cut
    after the rename could keep the checkpoint and lose the lines of the epochs it holds, which a
    resume never writes again: the metrics file is fsynced before each checkpoint's rename."""
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    _one_epoch_run(cifar, tmp_path)
    metrics = os.stat(tmp_path / "metrics.jsonl").st_ino
    saved = events.index(("replace", "checkpoint.npz"))
    assert ("fsync", metrics) in events[:saved], events


def test_the_previous_runs_files_are_set_aside_durably_before_the_new_run_writes(cifar, tmp_path, monkeypatch):
    """A fresh run moves the old run's files into previous-<time>/: those renames are fsynced (the
    new directory, and the run directory) before the new run's first checkpoint, whose own fsync of
    the run directory would otherwise make the old names' removal durable and not their new ones."""
    import gpuconv.trainer as T
    _one_epoch_run(cifar, tmp_path)
    events, real_fsync_dir, real_replace = [], T.fsync_dir, os.replace
    monkeypatch.setattr(T, "fsync_dir", lambda d: (events.append(("fsync", os.path.basename(d))), real_fsync_dir(d)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(os.path.dirname(b)),
                                                                    os.path.basename(b))), real_replace(a, b))[-1])
    _one_epoch_run(cifar, tmp_path)
    (aside,) = tmp_path.glob("previous-*")
    first_save = events.index(("replace", tmp_path.name, "checkpoint.npz"))
    moves = [i for i, e in enumerate(events) if e[:2] == ("replace", aside.name)]
    assert len(moves) == 4 and max(moves) < events.index(("fsync", aside.name)) < first_save, events
    assert max(moves) < events.index(("fsync", tmp_path.name)) < first_save, events


def test_a_run_directory_and_checkpoint_paths_given_with_a_tilde_are_in_the_home_directory(tmp_path, monkeypatch):
    """Trainer(out_dir='~/runs/x') from Python wrote into a directory named '~' in the working
    directory (the shell expands --out's tilde, and load_cifar10 its root's); load_checkpoint and
    save_checkpoint likewise took '~' literally."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    rng = np.random.default_rng(0)
    loader = DeviceLoader(rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 8), 4)
    model = small_net()
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir="~/runs/x", progress=False)
    trainer.fit(loader, 1)
    assert (home / "runs" / "x" / "checkpoint.npz").is_file() and not (work / "~").exists()
    assert "model/0.weight" in ckpt.load_checkpoint("~/runs/x")
    trainer.save_checkpoint("~/copy.npz")
    assert (home / "copy.npz").is_file()


def test_setting_the_previous_run_aside_tells_a_python_user_how_to_resume(cifar, tmp_path, capsys):
    """Trainer.fit's note named the command line's --resume only: a Python user reads fit's own
    resume=True too."""
    _one_epoch_run(cifar, tmp_path)
    capsys.readouterr()
    _one_epoch_run(cifar, tmp_path)
    out = capsys.readouterr()
    assert "moved to" in out.err + out.out and "fit(..., resume=True)" in out.err + out.out


def test_a_resume_writes_a_damaged_best_npz_again_from_its_checkpoint(cifar, tmp_path, capsys):
    """best.npz truncated (a copy of the run made by hand, a disk error) where the resumed epoch is
    the best one: the resume stopped on it ("use an intact copy, or retrain") though checkpoint.npz,
    of that same epoch, was intact; it now writes best.npz again from it and says so."""
    model, trainer, loader, val_loader = _one_epoch_run(cifar, tmp_path)
    whole = (tmp_path / "best.npz").read_bytes()
    (tmp_path / "best.npz").write_bytes(whole[:len(whole) // 2])
    model = small_net()
    resumed = Trainer(model, SGD(model.parameters(), lr=0.01), out_dir=tmp_path, progress=False)
    resumed.fit(loader, 1, val=val_loader, resume=True)  # nothing left to train
    assert (tmp_path / "best.npz").read_bytes() == (tmp_path / "checkpoint.npz").read_bytes()
    assert f"{tmp_path / 'best.npz'} is damaged, no checkpoint gpuconv can read: written again" in capsys.readouterr().err


def test_a_second_fit_into_the_same_out_dir_is_refused_while_the_first_runs(cifar, tmp_path):
    """Trainer.fit takes out_dir's lock as `gpuconv train` does: a fit while another process (or
    thread) trains into the same directory is refused, naming it, instead of interleaving their
    checkpoints and metrics; the lock is free again once the fit ends, and `gpuconv train`'s own
    hold covers the fit it runs."""
    from conftest import lock_held_elsewhere
    from gpuconv import _files
    with lock_held_elsewhere(tmp_path) as holder:
        with pytest.raises(_files.DirectoryLocked, match=rf"\(pid {holder.pid} on .*\) is writing to {tmp_path}"):
            _one_epoch_run(cifar, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [_files.LOCK_NAME]  # nothing of the refused fit's
    with _files.directory_lock(tmp_path):  # as gpuconv train holds it around its fit
        _one_epoch_run(cifar, tmp_path)
        assert (tmp_path / _files.LOCK_NAME).exists()
    assert (tmp_path / "checkpoint.npz").exists() and not (tmp_path / _files.LOCK_NAME).exists()


class RemoveAt(DeviceLoader):
    """A DeviceLoader that runs ``remove()`` (an `rm -rf` of the run directory, ...) when it yields
    a given batch."""

    remove_at, remove = None, None  # (epoch, batch), a function

    def _batches(self, epoch, start):
        for i, batch in enumerate(super()._batches(epoch, start), start=start):
            if (epoch, i) == self.remove_at:
                self.remove()
            yield batch


@pytest.mark.parametrize("how", ["rm -rf", "mv", "lock file removed, another run in"])
def test_a_run_directory_removed_during_the_run_is_not_made_again(cifar, tmp_path, how):
    """`rm -rf runs/x` (or `mv runs/x runs/y`) while a run trains into it: the next write stops the
    run, saying so and how to go on, instead of making a new runs/x that no lock holds (where a
    second run could start and interleave its files with this one's); a lock file removed and
    taken by another run is never written beside either."""
    import shutil
    from conftest import lock_held_elsewhere
    from gpuconv import _files
    train, _ = cifar
    images, labels = train.images[:192], train.labels[:192]  # 6 batches of 32 per epoch
    out = tmp_path / "run"
    trainer, _ = build(images, labels, out, epochs=2, log_every=2)
    loader = RemoveAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    loader.remove_at = (1, 3)
    held = contextlib.ExitStack()
    if how == "rm -rf":
        loader.remove = lambda: shutil.rmtree(out)
    elif how == "mv":
        loader.remove = lambda: out.rename(tmp_path / "moved")
    else:
        loader.remove = lambda: ((out / _files.LOCK_NAME).unlink(), held.enter_context(lock_held_elsewhere(out)))
    with held, pytest.raises(FileNotFoundError) as info:
        trainer.fit(loader, 2)
    message = str(info.value)
    if how == "lock file removed, another run in":
        assert message.startswith(f"the lock file {out / _files.LOCK_NAME} of this run was removed while it trained "
                                  f"(another run may be writing to {out} now): this run stops at step ")
        assert int(ckpt.load_checkpoint(out)["meta/step"]) == 6  # epoch 1's: nothing written there since
    else:
        assert not out.exists()
        assert message.startswith(f"the run directory {out} was removed or moved while this run trained: it "
                                  "stops at step ")
        assert (f"where you moved it, continue with `gpuconv train ... --out NEW_DIR --resume` or "
                f"Trainer(out_dir=NEW_DIR).fit(..., resume=True); where it was deleted, train again") in message
    if how == "mv":
        assert int(ckpt.load_checkpoint(tmp_path / "moved")["meta/step"]) == 6  # epoch 1's, as moved


def test_a_run_directory_moved_before_its_first_checkpoint_says_to_train_again(cifar, tmp_path):
    """Moved away in the first epoch, before any checkpoint: the stop said "where you moved it,
    continue with `gpuconv train ... --out NEW_DIR --resume`", which then found no checkpoint there."""
    train, _ = cifar
    images, labels = train.images[:192], train.labels[:192]
    out = tmp_path / "run"
    trainer, _ = build(images, labels, out, epochs=2, log_every=2)
    loader = RemoveAt(images, labels, 32, shuffle=True, augment=True, seed=7)
    loader.remove_at, loader.remove = (0, 1), lambda: out.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError) as info:
        trainer.fit(loader, 2)
    message = str(info.value)
    assert not (tmp_path / "moved" / "checkpoint.npz").exists()
    assert "--resume" not in message and message.endswith(
        "no checkpoint of this run had been written there: train again"), message


def test_training_goes_on_without_matplotlib(tmp_path, monkeypatch):
    """Without matplotlib (a bare interpreter, such as a lent GPU machine's) a run with an out_dir
    trains, checkpoints and logs every epoch, warning once that curves.png is not drawn; it used to
    end with ModuleNotFoundError after its first epoch."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    trainer, loader = build(images, labels, tmp_path, epochs=2)
    val = DeviceLoader(images[:32], labels[:32], 32, shuffle=False)
    with pytest.warns(RuntimeWarning, match="curves.png is not drawn: matplotlib is not importable") as caught:
        trainer.fit(loader, 2, val=val)
    assert len([w for w in caught if "curves.png" in str(w.message)]) == 1
    assert trainer.epoch == 2 and not (tmp_path / "curves.png").exists()
    assert (tmp_path / "checkpoint.npz").exists() and (tmp_path / "best.npz").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r.get("kind") != "interval"] == [1, 2]


def test_a_failed_fsync_of_the_metrics_names_that_file_once(cifar, tmp_path, monkeypatch):
    """The metrics' fsync before a checkpoint fails (a disk error surfaces at fsync, not at the
    append): the error names metrics.jsonl, once, with the checkpoint still intact; it was
    restated again as a failed write of checkpoint.npz around its own message."""
    import errno
    model, trainer, loader, val_loader = _one_epoch_run(cifar, tmp_path)
    metrics, real_fsync = os.stat(tmp_path / "metrics.jsonl").st_ino, os.fsync

    def fsync(fd):
        if os.fstat(fd).st_ino == metrics:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        trainer.fit(loader, 2, val=val_loader)
    message = str(info.value)
    assert info.value.errno == errno.EIO
    assert message.startswith(f"could not write {tmp_path / 'metrics.jsonl'} at step 4 ({os.strerror(errno.EIO)}); ")
    assert message.count("could not write") == 1 and "checkpoint.npz at step" not in message, message
    assert message.count(" is intact at ") == 1 and "the checkpoint of epoch 1's end (step 2)" in message


def test_the_metrics_log_each_parameter_groups_lr(tmp_path, monkeypatch, capsys):
    """With per-group lrs (airbench's batch-norm biases at 64 times the lr) the records' ``lr`` was
    the schedule's value alone, the lr of no group that set its own, and a Chain's was the factor on
    its members' lrs: the log named one lr where the groups trained with others. Each record now
    also holds ``group_lrs``, every group's as ``param_groups[i]['lr']`` reads it (the next step's),
    and a plain log line shows those; ``lr`` keeps its meaning for the readers of old logs."""
    import gpuconv.trainer as trainer_module
    monkeypatch.setattr(trainer_module, "_is_terminal", lambda stream: False)  # plain lines, as in a log file
    monkeypatch.setattr("gpuconv.plots.plot_curves", lambda history, path: None)  # (matplotlib's import: a second)
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (8, 3, 4, 4), dtype=np.uint8), rng.integers(0, 10, 8)
    net = Sequential(Conv2d(3, 2, 1, seed=0), BatchNorm2d(2), Flatten(), Linear(32, 10, seed=1))
    opt = SGD([{"params": net[1].parameters(), "lr": 6.4}, {"params": net[0].parameters() + net[3].parameters()}],
              lr=0.1, momentum=0.9)
    sched = StepLR(opt, step_size=1, gamma=0.5)
    trainer = Trainer(net, opt, sched, out_dir=tmp_path, log_every=1, progress=True, checkpoint_every=None)
    history = trainer.fit(DeviceLoader(imgs, labels, 4, seed=0), 1)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, epoch = lines[0], lines[-1]
    assert first["kind"] == "interval" and first["lr"] == pytest.approx(0.05)
    assert first["group_lrs"] == [pytest.approx(3.2), pytest.approx(0.05)]
    assert epoch["kind"] == "epoch" and epoch["group_lrs"] == [pytest.approx(1.6), pytest.approx(0.025)]
    assert history[-1]["group_lrs"] == epoch["group_lrs"] and history[-1]["lr"] == pytest.approx(0.025)
    assert "lr 3.2/0.05 (groups) |" in capsys.readouterr().err
    one = SGD(net.parameters(), lr=0.1)
    Trainer(net, one, log_every=1, progress=True).fit(DeviceLoader(imgs, labels, 4, seed=0), 1)
    assert "lr 0.1 |" in capsys.readouterr().err  # one lr for all: as before


def test_fit_and_evaluate_run_with_the_models_gpu_current(monkeypatch):
    """CuPy allocates on its current device and refuses (or reads across the bus) arrays of another
    in a kernel: a model on cuda:1 trained or evaluated while cuda:0 was current made its optimizer
    state and loss buffer on GPU 0, and its first step failed. fit and evaluate make the model's GPU
    current. CuPy is faked: the parameters 'on cuda:1' are a NumPy subclass."""
    from conftest import fake_cupy_second_gpu

    net = small_net()
    trainer = Trainer(net, SGD(net.parameters(), lr=0.01), progress=False)
    cupy, current = fake_cupy_second_gpu(monkeypatch)
    for p in net.parameters():
        p.data = p.data.view(cupy.ndarray)
    seen = []
    monkeypatch.setattr(Trainer, "_fit", lambda self, *args: seen.append(("fit", current[0])))
    monkeypatch.setattr(gpuconv.trainer, "_evaluate", lambda *args: seen.append(("evaluate", current[0])))
    trainer.fit([], 1)
    evaluate(net, [])
    assert seen == [("fit", 1), ("evaluate", 1)] and current == [0]


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason=f"no GPU: {backend.cuda_status()}")
@pytest.mark.skipif(backend.cuda_available() and backend.cupy_module().cuda.runtime.getDeviceCount() < 2,
                    reason="not on this GPU: needs two GPUs")  # (conftest.NOT_ON_THIS_GPU: the battery's one GPU passes)
def test_a_model_and_loader_on_the_second_gpu_train_while_the_first_is_current():
    """A fit of a model and a loader on cuda:1 outside default_device('cuda:1') (GPU 0 current):
    the optimizer's state, the loss buffer and the batches are made on GPU 1, and GPU 0 is
    current again afterwards."""
    cp = backend.cupy_module()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 32)
    model = three_layer_convnet(seed=0, num_filters=4, hidden_dim=8).to("cuda:1")
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    with cp.cuda.Device(0):
        loader = DeviceLoader(x, y, 16, augment=True, device="cuda:1")
        history = Trainer(model, opt, progress=False).fit(loader, 1)
        assert cp.cuda.Device().id == 0
        assert np.isfinite(history[-1]["train_loss"])
        assert {backend.device_id(s) for st in opt.state for s in st.values() if backend.is_cupy_array(s)} == {1}
        assert np.isfinite(evaluate(model, DeviceLoader(x, y, 16, shuffle=False, device="cuda:1"))["loss"])


def test_the_two_gpu_test_skips_as_not_on_this_gpu_only_where_a_gpu_answers():
    """GPUCONV_REQUIRE_GPU=1 accepts a GPU test's skip whose reason says 'not on this GPU' (one GPU
    where two are needed); where CUDA is unusable the two-GPU test must skip as any GPU test does
    ('no GPU: ...'), so that the strict GPU suite fails there instead of passing it as skipped."""
    from conftest import NOT_ON_THIS_GPU
    marks = test_a_model_and_loader_on_the_second_gpu_train_while_the_first_is_current.pytestmark
    applied = [m.kwargs["reason"] for m in marks if m.name == "skipif" and m.args[0]]
    if backend.cuda_available():
        two = backend.cupy_module().cuda.runtime.getDeviceCount() >= 2
        assert applied == ([] if two else ["not on this GPU: needs two GPUs"])
    else:
        assert applied == [f"no GPU: {backend.cuda_status()}"] and NOT_ON_THIS_GPU not in applied[0]
