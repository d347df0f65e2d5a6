"""DeviceLoader: device-resident batches, reproducible epochs, no readbacks."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv.data import CIFAR10_MEAN, CIFAR10_STD, DeviceLoader, crop_flip, normalize, read_cifar10


def dataset(n=50, seed=0):
    """Random images with labels 0..n-1, so a batch's labels say which images it holds."""
    x = np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return x, np.arange(n, dtype=np.int64)


def epoch(loader, backend=None):
    """All batches of one iteration as host arrays (the test reads back; the loader never does)."""
    get = backend.asnumpy if backend is not None else B.asnumpy
    return [(get(x), get(y)) for x, y in loader]


def test_batches_shapes_dtypes_and_device(backend):
    x, y = dataset(50)
    loader = DeviceLoader(x, y, batch_size=16)
    assert loader.device.kind == backend.device.split(":")[0] and len(loader) == 4
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [16, 16, 16, 2]
    for xb, yb in batches:
        assert backend.xp is B.get_array_module(xb, yb)
        assert xb.dtype == np.float32 and xb.shape[1:] == (3, 32, 32) and yb.dtype == np.int64
    dropped = DeviceLoader(x, y, batch_size=16, drop_last=True)
    assert len(dropped) == 3 and [len(b[1]) for b in dropped] == [16, 16, 16]


def test_each_epoch_is_a_permutation_and_epochs_differ(backend):
    x, y = dataset(50)
    loader = DeviceLoader(x, y, batch_size=8, shuffle=True, seed=3)
    e0 = np.concatenate([b[1] for b in epoch(loader, backend)])
    e1 = np.concatenate([b[1] for b in epoch(loader, backend)])  # iter() advanced to epoch 1
    assert sorted(e0) == list(range(50)) and sorted(e1) == list(range(50))
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, np.arange(50))
    plain = DeviceLoader(x, y, batch_size=8, shuffle=False)
    assert np.array_equal(np.concatenate([b[1] for b in epoch(plain, backend)]), np.arange(50))


def test_without_augmentation_batches_are_the_normalized_images(backend):
    x, y = dataset(40)
    for xb, yb in epoch(DeviceLoader(x, y, batch_size=12, seed=1), backend):
        np.testing.assert_allclose(xb, normalize(x[yb]), rtol=0, atol=0)


def test_same_seed_and_epoch_give_identical_batches(backend):
    x, y = dataset(60)
    a = DeviceLoader(x, y, 16, augment=True, seed=5)
    runs = [epoch(a, backend) for _ in range(3)]  # epochs 0, 1, 2
    b = DeviceLoader(x, y, 16, augment=True, seed=5)
    b.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(runs[2], epoch(b, backend), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    c = DeviceLoader(x, y, 16, augment=True, seed=6)
    assert not np.array_equal(runs[0][0][1], epoch(c, backend)[0][1])
    # Resuming mid-epoch: batch k onward equals the uninterrupted epoch's batch k onward.
    d = DeviceLoader(x, y, 16, augment=True, seed=5)
    d.load_state_dict({"seed": 5, "epoch": 1, "start_batch": 2})
    tail = epoch(d, backend)
    assert len(tail) == 2 and d.state_dict() == {"seed": 5, "epoch": 2, "start_batch": 0}
    for (xa, _), (xb, _) in zip(runs[1][2:], tail, strict=True):
        np.testing.assert_array_equal(xa, xb)
    # a state without its seed failed with a bare KeyError: 'seed'
    with pytest.raises(KeyError, match=r"the state has no 'seed' \(it has \['epoch'\]\); pass the dict "
                                       r"DeviceLoader.state_dict\(\) returned"):
        d.load_state_dict({"epoch": 1})


def test_augmented_batches_are_crops_and_flips_of_their_images(backend):
    x, y = dataset(48)
    loader = DeviceLoader(x, y, 16, augment=True, seed=2)
    order, oy, ox, flip = (backend.asnumpy(a) for a in loader.epoch_plan(0))
    got = epoch(loader, backend)
    assert oy.min() >= 0 and oy.max() <= 8 and len(set(ox.tolist())) > 4 and 0 < flip.mean() < 1
    want = normalize(crop_flip(x[order], oy, ox, flip, padding=4))  # the NumPy reference pipeline
    np.testing.assert_allclose(np.concatenate([b[0] for b in got]), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), order)
    plain = normalize(x[order])
    changed = ~np.all(np.isclose(np.concatenate([b[0] for b in got]), plain), axis=(1, 2, 3))
    assert changed.mean() > 0.5


def test_a_strided_data_set_is_stored_contiguous_once(backend):
    """NHWC images given as images.transpose(0, 3, 1, 2) (the idiom the loader's error suggests) are
    a strided view: the loader stores them C-contiguous once, as the fused kernel reads them, and
    never copies the whole set per batch; the batches are those of the contiguous set."""
    x, y = dataset(40)
    strided = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not strided.flags.c_contiguous
    loader = DeviceLoader(strided, y, 16, augment=True, seed=4)
    assert loader.images.flags.c_contiguous
    want = epoch(DeviceLoader(x, y, 16, augment=True, seed=4), backend)
    for (xa, ya), (xb, yb) in zip(epoch(loader, backend), want, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_the_epoch_plan_is_the_same_on_every_backend(backend):
    """Counter-based: the shuffle, crops and flips are a function of (seed, epoch) only, so a GPU
    run sees exactly the batches a CPU run sees (what the CPU/GPU parity run relies on)."""
    x, y = dataset(300)
    with gpuconv.default_device("cpu"):
        ref = DeviceLoader(x, y, 64, augment=True, seed=11).epoch_plan(3)
    with gpuconv.default_device(backend.device):
        got = DeviceLoader(backend.asarray(x), backend.asarray(y), 64, augment=True, seed=11).epoch_plan(3)
    for name, a, b in zip(("order", "offsets_y", "offsets_x", "flip"), ref, got, strict=True):
        b = backend.asnumpy(b)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_a_seed_of_2_32_or_more_is_kept_whole():
    """SeedSequence([seed, epoch]) reads seed 5 + 3 * 2**32 as the words [5, 3]: its epoch 0 was
    seed 5's epoch 3, crops, flips, cutouts and all. Seeds below 2**32 keep the keys they had."""
    x, y = dataset(64)
    def plans(seed, epoch):
        loader = DeviceLoader(x, y, 8, augment=True, cutout=8, seed=seed)
        return loader.epoch_plan(epoch) + loader.cutout_plan(epoch)
    for (a, b) in [((5 + 3 * 2**32, 0), (5, 3)), ((2**32, 0), (0, 1)), ((2**64 - 1, 0), (2**32 - 1, 2**32 - 1))]:
        for name, u, v in zip(("order", "offsets_y", "offsets_x", "flip", "cutout_y", "cutout_x"), plans(*a), plans(*b)):
            assert not np.array_equal(u, v), (a, b, name)
    order, oy, ox, flip, cy, cx = plans(11, 3)
    from gpuconv.counter_rng import splitmix64
    keys = np.random.SeedSequence([11, 3]).generate_state(3, np.uint64)
    assert np.array_equal(order, np.argsort(splitmix64(keys[0], 64), kind="stable"))
    assert np.array_equal(flip, (splitmix64(keys[1], 128)[1::2] >> np.uint64(63)).astype(bool))
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match=rf"seed={seed} is out of range: a seed is an integer in \[0, 2\*\*64\)"):
            DeviceLoader(x, y, 8, seed=seed)


def test_the_epoch_plan_is_uniform():
    x, y = dataset(4000)
    loader = DeviceLoader(x, y, 100, augment=True, seed=0)
    order, oy, ox, flip = loader.epoch_plan(0)
    assert sorted(order.tolist()) == list(range(4000)) and order.dtype == np.int64
    for off in (oy, ox):  # 9 crop offsets (padding 4), each about 4000/9 = 444 times
        counts = np.bincount(off, minlength=9)
        assert off.min() == 0 and off.max() == 8 and len(counts) == 9
        chi2 = ((counts - 4000 / 9) ** 2 / (4000 / 9)).sum()
        assert chi2 < 30, counts  # 8 degrees of freedom: P(chi2 > 30) < 0.0003
    assert abs(flip.mean() - 0.5) < 0.04 and abs(np.corrcoef(oy, ox)[0, 1]) < 0.06
    # Shuffles of consecutive epochs are unrelated: where an image lands is uncorrelated.
    nxt = loader.epoch_plan(1)[0]
    pos0, pos1 = np.argsort(order), np.argsort(nxt)
    assert abs(np.corrcoef(pos0, pos1)[0, 1]) < 0.06 and not np.array_equal(order, nxt)


def test_sim_matches_the_numpy_reference_exactly():
    x, y = dataset(40)
    with gpuconv.default_device("cpu"):
        ref = epoch(DeviceLoader(x, y, 16, augment=True, seed=9))
    with gpuconv.default_device("sim"):
        sim = epoch(DeviceLoader(x, y, 16, augment=True, seed=9))
    for (a, la), (b, lb) in zip(ref, sim, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_iterating_under_sim_reads_nothing_back():
    x, y = dataset(70)
    with gpuconv.default_device("sim"):
        loader = DeviceLoader(x, y, 16, augment=True, seed=0)
        B.transfers.reset()
        count = 0
        for _ in range(2):
            for xb, yb in loader:
                count += 1
        assert count == 10 and B.transfers.device_to_host == 0
        B.asnumpy(xb)  # the counter does see a readback on 'sim': the zero above means something
        assert B.transfers.device_to_host == 1


def test_repr_shows_dtype_and_layout():
    images, labels = np.zeros((4, 3, 8, 8), np.uint8), np.zeros(4, np.int64)
    text = repr(DeviceLoader(images, labels, 2, device="cpu", dtype="bfloat16", channels_last=True))
    assert "dtype=bfloat16, channels_last=True" in text
    assert "dtype=float32, channels_last=False" in repr(DeviceLoader(images, labels, 2, device="cpu"))


def test_real_subset_batches_are_normalized(subset_dir, backend):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train = read_cifar10(subset_dir).train
    loader = DeviceLoader.from_split(train, 512, drop_last=True)
    assert len(loader) == 10 and "5170 images" in repr(loader)
    # the subset has no test_batch: from_split(cifar.test) failed with AttributeError: 'NoneType' ... 'images'
    with pytest.raises(ValueError, match=r"split is None: .*no test_batch.*train_val_split\(cifar.train, val_batch=5\)"):
        DeviceLoader.from_split(None, 512)
    with pytest.raises(TypeError, match=r"got tuple; for arrays use DeviceLoader\(images, labels, batch_size\)"):
        DeviceLoader.from_split((train.images, train.labels), 512)
    xb, yb = (backend.asnumpy(a) for a in next(iter(loader)))
    assert xb.shape == (512, 3, 32, 32) and yb.min() >= 0 and yb.max() <= 9
    assert abs(xb.mean()) < 0.15 and 0.85 < xb.std() < 1.15
    # Augmented crops carry zero padding, which normalizes to exactly -mean/std per channel.
    xa = backend.asnumpy(next(iter(DeviceLoader.from_split(train, 512, augment=True)))[0])
    np.testing.assert_allclose(xa.min(axis=(0, 2, 3)), -np.asarray(CIFAR10_MEAN) / np.asarray(CIFAR10_STD),
                               rtol=1e-5)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"images": np.zeros((4, 3, 32, 32), np.float32)}, TypeError, "must be a uint8 array.*normalizes"),
    # float pixels, already normalized or in [0, 1], and grayscale without a channel axis: the fix for each
    ({"images": np.zeros((4, 1, 28, 28), np.float32)}, TypeError,
     r"float32 \(4, 1, 28, 28\); for float images in \[0, 1\] pass \(images \* 255\).*already normalized undo it"),
    ({"images": np.zeros((4, 28, 28), np.uint8)}, TypeError, r"grayscale images \(N, H, W\) add the channel axis"),
    ({"images": np.zeros((4, 3072), np.uint8)}, TypeError, r"\(N, C, H, W\)"),
    ({"images": np.zeros((0, 3, 32, 32), np.uint8), "labels": np.zeros(0, np.int64)}, ValueError, "empty"),
    ({"labels": np.arange(5)}, ValueError, r"shape \(4,\)"),
    ({"labels": np.zeros(4)}, ValueError, "integers"),
    ({"labels": np.array([0, 1, -2, 3])}, ValueError, ">= 0"),
    ({"batch_size": 0}, ValueError, "batch_size=0 must be an integer >= 1"),
    ({"batch_size": 2.5}, ValueError, "batch_size=2.5"),
    ({"batch_size": True}, ValueError, "batch_size=True"),
    ({"batch_size": 8, "drop_last": True}, ValueError, "would yield no batch"),
    ({"seed": -1}, ValueError, "seed=-1"),
    ({"mean": (1.0, 2.0)}, ValueError, r"one value per channel \(C=3 .*pass mean= and std= with 3 values"),
    ({"std": (60.0, 0.0, 60.0)}, ValueError, r"finite with every std > 0"),
    ({"labels": np.array([2**63 + 5, 1, 2, 3], np.uint64)}, ValueError, r"within int64"),
    ({"images": np.zeros((4, 32, 32, 3), np.uint8)}, ValueError, r"look channels-last.*transpose\(0, 3, 1, 2\)"),
    ({"dtype": np.int32}, TypeError, r"float64, float32, bfloat16 \(ml_dtypes.bfloat16\) or float16"),
    # a word (from a config file) was taken for True: bool('no') is True
    ({"shuffle": "no"}, TypeError, r"shuffle must be True or False, got 'no'"),
    ({"augment": "false"}, TypeError, r"augment must be True or False, got 'false'"),
    ({"drop_last": "no"}, TypeError, r"drop_last must be True or False, got 'no'"),
    ({"channels_last": 0}, TypeError, r"channels_last must be True or False, got 0"),
])
def test_bad_arguments(kwargs, err, match):
    args = {"images": np.zeros((4, 3, 32, 32), np.uint8), "labels": np.arange(4), "batch_size": 2, **kwargs}
    with pytest.raises(err, match=match):
        DeviceLoader(**args)


def test_labels_as_a_list_or_a_torch_tensor_and_a_0_1_scale_warning():
    x = np.zeros((4, 3, 8, 8), np.uint8)
    assert DeviceLoader(x, [0, 1, 2, 3], 4, shuffle=False).labels.tolist() == [0, 1, 2, 3]
    torch = pytest.importorskip("torch")
    assert DeviceLoader(x, torch.arange(4), 4, shuffle=False).labels.tolist() == [0, 1, 2, 3]
    with pytest.warns(UserWarning, match="look like the 0-1 scale.*multiply both by 255"):
        DeviceLoader(x, np.arange(4), 4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_bad_epoch_arguments():
    loader = DeviceLoader(*dataset(10), batch_size=4)
    with pytest.raises(ValueError, match="epoch=-1"):
        loader.set_epoch(-1)
    with pytest.raises(ValueError, match="past the 3 batches"):
        loader.set_epoch(0, start_batch=4)
    loader.set_epoch(0, start_batch=3)
    assert list(loader) == []


def test_a_low_precision_loader_gives_the_float32_batches_rounded_once(backend):
    """dtype=bfloat16 (what `gpuconv train` asks for in bf16, so a step casts nothing): the float32
    loader's batches rounded once, bit for bit, with the recipe's augmentation and layout."""
    import ml_dtypes
    x, y = dataset(40)
    kw = dict(batch_size=16, shuffle=True, augment=True, seed=3, channels_last=True, padding=2,
              padding_mode="reflect", flip="alternate")
    wide, narrow = DeviceLoader(x, y, **kw), DeviceLoader(x, y, dtype=ml_dtypes.bfloat16, **kw)
    for (xw, yw), (xn, yn) in zip(epoch(wide, backend), epoch(narrow, backend)):
        assert xn.dtype == ml_dtypes.bfloat16 and np.array_equal(yw, yn)
        assert xw.astype(ml_dtypes.bfloat16).tobytes() == np.ascontiguousarray(xn).tobytes()


@pytest.mark.parametrize("fused", [True, False], ids=["kernel", "array-path"])
def test_batches_are_made_on_the_images_gpu(monkeypatch, fused):
    """CuPy allocates on its current device: a loader on cuda:1 iterated while cuda:0 was current
    made its epoch plan, its batches and the kernel's placeholders on GPU 0, where the kernel
    launched on GPU 1 could not read them. Each batch is made with the images' GPU current, and
    the caller's device is current again between batches. CuPy is faked: the images 'on cuda:1'
    are a NumPy subclass."""
    import gpuconv.data.loader as loader_module
    from conftest import fake_cupy_second_gpu

    cupy, current = fake_cupy_second_gpu(monkeypatch)
    rng = np.random.default_rng(0)
    loader = DeviceLoader(rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8), np.arange(6), 4, augment=True,
                          padding=1, fused=False)
    loader.images = loader.images.view(cupy.ndarray)
    made = []
    if fused:
        monkeypatch.setattr(loader, "kernel_target", lambda: "cuda")
        monkeypatch.setattr(loader_module, "augment_batch_kernel", lambda *a, **k: made.append(current[0]) or a[0])
    else:
        loader.augment = False  # (the crop's arrays would meet the fake's images)
        real = loader_module.normalized
        monkeypatch.setattr(loader_module, "normalized",
                            lambda xb, *a: made.append(current[0]) or real(np.asarray(xb), *a))
    between = [current[0] for _ in loader]
    assert made == [1, 1] and between == [0, 0]


def test_a_mean_and_std_on_the_gpu_are_taken(monkeypatch):
    """The loader's documented mean for other data, ``images.mean(axis=(0, 2, 3))``, is a CuPy array
    for CuPy images, which NumPy refuses to convert implicitly: the loader failed with CuPy's
    'Implicit conversion to a NumPy array is not allowed'. Device values are read back once, at
    construction. CuPy is faked by an array-like whose __array__ refuses, as CuPy's does."""
    from gpuconv import backend as B

    class OnGpu:
        def __init__(self, values):
            self._host = np.asarray(values, np.float64)
            self.shape, self.size, self.ndim, self.dtype = self._host.shape, self._host.size, 1, self._host.dtype

        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                            "a NumPy array explicitly.")

        def get(self):
            return self._host.copy()

    import gpuconv.data.loader as loader_module
    for module in (B, loader_module):
        monkeypatch.setattr(module, "is_cupy_array", lambda a: isinstance(a, OnGpu))
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 4, 4), dtype=np.uint8)
    mean, std = (100.0, 110.0, 120.0), (50.0, 60.0, 70.0)
    loader = DeviceLoader(images, np.arange(4), 4, shuffle=False, mean=OnGpu(mean), std=OnGpu(std))
    assert loader.mean == mean and loader.std == std
    (x, _), = loader
    np.testing.assert_array_equal(x, normalize(images, mean, std))


@pytest.mark.gpu
@pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")
def test_a_loader_of_cupy_images_takes_their_own_mean_and_std():
    """The docstring's recipe on the GPU: CuPy images with their own per-channel mean and std."""
    cp = B.cupy_module()
    images = cp.asarray(np.random.default_rng(0).integers(0, 256, (8, 3, 4, 4), dtype=np.uint8))
    mean, std = images.mean(axis=(0, 2, 3)), images.std(axis=(0, 2, 3))
    loader = DeviceLoader(images, cp.arange(8), 8, shuffle=False, device="cuda", mean=mean, std=std)
    (x, _), = loader
    assert loader.mean == tuple(float(v) for v in mean.get())
    np.testing.assert_allclose(B.asnumpy(x), normalize(images.get(), mean.get(), std.get()), rtol=1e-6, atol=1e-6)
