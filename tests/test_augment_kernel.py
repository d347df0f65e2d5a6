"""The fused loader kernel (kernels/augment.cu): gather + pad-crop + flip + normalize in one pass.

It must give exactly the batches of the array-module path (``images[idx]`` -> ``crop_flip`` ->
``normalize``), for the same random draws, on the host simulator; and compile with NVRTC for
compute_80 and compute_90. (tests/test_sanitizer.py runs it under AddressSanitizer/UBSan.)
"""
from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

import gpuconv
from gpuconv import backend as B
from gpuconv import kernels
from gpuconv.data import CIFAR10_MEAN, CIFAR10_STD, DeviceLoader, crop_flip, cutout, normalize, random_cutout
from gpuconv.data._launch_augment import augment_batch_kernel
from gpuconv.precision import compute_dtype
from test_nvrtc import needs_nvrtc
from test_optim import KERNEL_DEVICES


def on(target, *arrays):
    """The arrays where ``target`` runs the kernel: CuPy's for 'cuda', as they are for 'sim'."""
    return [a if a is None or target != "cuda" else B.to_device(a, "cuda") for a in arrays]


def reference(images, idx, oy, ox, flip, padding, mean, std, dtype):
    return normalize(crop_flip(images[idx], oy, ox, flip, padding), mean, std, dtype)


def draws(rng, n, b, padding, crop=True, do_flip=True):
    idx = rng.integers(0, n, b)
    oy = rng.integers(0, 2 * padding + 1, b) if crop else None
    ox = rng.integers(0, 2 * padding + 1, b) if crop else None
    flip = rng.integers(0, 2, b).astype(bool) if do_flip else None
    return idx, oy, ox, flip


@pytest.mark.parametrize("shape, padding, crop, do_flip, dtype", [
    ((9, 3, 8, 8), 4, True, True, np.float32),     # CIFAR's recipe, scaled down
    ((9, 3, 8, 8), 4, True, True, np.float64),
    ((7, 1, 5, 9), 2, True, False, np.float32),    # one channel, not square, crop only
    ((7, 2, 6, 3), 0, False, True, np.float32),    # flip only (odd width: the middle column stays)
    ((7, 3, 4, 4), 0, False, False, np.float32),   # gather + normalize only
    ((5, 3, 3, 3), 5, True, True, np.float32),     # padding wider than the image: all-zero crops
    ((9, 3, 8, 8), 4, True, True, ml_dtypes.bfloat16),  # normalized in float32, rounded once
    ((9, 3, 8, 8), 4, True, True, np.float16),
])
@pytest.mark.parametrize("target", KERNEL_DEVICES)
def test_kernel_matches_the_array_path_bit_for_bit(shape, padding, crop, do_flip, dtype, target):
    rng = np.random.default_rng(sum(shape) + padding)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    c = shape[1]
    mean = rng.uniform(50, 200, c).astype(compute_dtype(dtype))
    std = rng.uniform(20, 80, c).astype(compute_dtype(dtype))
    idx, oy, ox, flip = draws(rng, shape[0], 11, padding, crop, do_flip)
    got = B.asnumpy(augment_batch_kernel(*on(target, images, idx, oy, ox, flip, mean, std), padding, dtype,
                                         target=target))
    want = reference(images, idx, oy, ox, flip, padding, mean, std, dtype)
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_every_crop_offset_and_flip_pattern_is_exact():
    """All (2p+1)^2 offsets with and without a flip, on one image: no edge case left to chance."""
    p = 2
    images = np.random.default_rng(1).integers(0, 256, (1, 3, 6, 5), dtype=np.uint8)
    oy, ox = (a.ravel() for a in np.meshgrid(np.arange(2 * p + 1), np.arange(2 * p + 1), indexing="ij"))
    oy, ox = np.concatenate([oy, oy]), np.concatenate([ox, ox])
    flip = np.repeat([False, True], oy.size // 2)
    idx = np.zeros(oy.size, np.int64)
    mean, std = np.asarray(CIFAR10_MEAN, np.float32), np.asarray(CIFAR10_STD, np.float32)
    got = augment_batch_kernel(images, idx, oy, ox, flip, mean, std, p, np.float32, target="sim")
    np.testing.assert_array_equal(got, reference(images, idx, oy, ox, flip, p, mean, std, np.float32))


@pytest.mark.parametrize("target", KERNEL_DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_reflect_translation_every_offset_matches_numpy_and_a_loop(channels_last, target):
    """airbench's translation: reflect padding (the edge not repeated), every offset, both flips."""
    p = 2
    images = np.random.default_rng(2).integers(0, 256, (2, 3, 5, 6), dtype=np.uint8)
    oy, ox = (a.ravel() for a in np.meshgrid(np.arange(2 * p + 1), np.arange(2 * p + 1), indexing="ij"))
    oy, ox = np.concatenate([oy, oy]), np.concatenate([ox, ox])
    flip = np.repeat([False, True], oy.size // 2)
    idx = np.arange(oy.size) % 2
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    got = B.asnumpy(augment_batch_kernel(*on(target, images, idx, oy, ox, flip, mean, std), p, np.float32,
                                         target=target, channels_last=channels_last, padding_mode="reflect"))
    want = normalize(crop_flip(images[idx], oy, ox, flip, p, "reflect"), mean, std)
    np.testing.assert_array_equal(got, want)
    # the reference itself, against a per-pixel loop of PyTorch's reflect rule
    def mirror(r, n):
        return -r if r < 0 else 2 * (n - 1) - r if r >= n else r
    for k in (0, 7, 31, 49):
        for i in range(5):
            for j in range(6):
                jj = 5 - j if flip[k] else j
                r, q = mirror(i + oy[k] - p, 5), mirror(jj + ox[k] - p, 6)
                assert want[k, :, i, j].tolist() == images[idx[k], :, r, q].astype(np.float32).tolist()
    assert not np.array_equal(got, augment_batch_kernel(images, idx, oy, ox, flip, mean, std, p, np.float32,
                                                        target="sim"))  # zeros differ from reflect
    with pytest.raises(ValueError, match=r"padding=5 with padding_mode='reflect' must be smaller than the image"):
        augment_batch_kernel(images, idx, oy, ox, flip, mean, std, 5, np.float32, target="sim",
                             padding_mode="reflect")
    with pytest.raises(ValueError, match=r"padding_mode='wrap' must be one of"):
        crop_flip(images, oy[:2], ox[:2], None, p, "wrap")


def test_an_index_out_of_range_gives_nan_not_a_stray_read():
    images = np.full((3, 3, 4, 4), 7, np.uint8)
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    out = augment_batch_kernel(images, np.array([0, 3, -1, 2]), None, None, None, mean, std, 0, np.float32,
                               target="sim")
    assert np.isnan(out[[1, 2]]).all() and (out[[0, 3]] == 7).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"images": np.zeros((2, 3, 4, 4), np.float32)}, "uint8"),
    ({"offsets_x": None}, "both offsets_y and offsets_x"),
    ({"flip": np.zeros(3, bool)}, r"flip must hold one value per image.*\(2,\)"),
    ({"mean": np.zeros(2, np.float32)}, r"one value per channel \(3\)"),
    ({"target": "cpu"}, "'cuda' or 'sim'"),
])
def test_bad_arguments_are_named(kwargs, match):
    args = dict(images=np.zeros((2, 3, 4, 4), np.uint8), index=np.array([0, 1]), offsets_y=np.zeros(2, np.int64),
                offsets_x=np.zeros(2, np.int64), flip=np.zeros(2, bool), mean=np.zeros(3, np.float32),
                std=np.ones(3, np.float32), padding=1, dtype=np.float32, target="sim")
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=match):
        augment_batch_kernel(**args)


@pytest.mark.parametrize("dtype, channels_last", [(np.float32, False), (np.float32, True),
                                                   (ml_dtypes.bfloat16, True), (np.float64, False)])
@pytest.mark.parametrize("target", KERNEL_DEVICES)
def test_cutout_matches_the_array_path_and_a_loop(dtype, channels_last, target):
    """airbench96's cutout: a square of the augmented image set to 0 (the normalized mean), every
    corner position including both edges, after the crop and the flip (output coordinates)."""
    size, p = 3, 2
    images = np.random.default_rng(7).integers(1, 256, (4, 3, 6, 5), dtype=np.uint8)
    cy, cx = (a.ravel() for a in np.meshgrid(np.arange(6 - size + 1), np.arange(5 - size + 1), indexing="ij"))
    b = cy.size
    rng = np.random.default_rng(8)
    idx, oy, ox, flip = draws(rng, 4, b, p)
    mean = np.full(3, 0.5, compute_dtype(dtype))  # no pixel normalizes to 0: every zero is the cutout's
    std = np.asarray(CIFAR10_STD, compute_dtype(dtype))
    got = B.asnumpy(augment_batch_kernel(*on(target, images, idx, oy, ox, flip, mean, std), p, dtype, target=target,
                                         channels_last=channels_last, padding_mode="reflect", cutout=size,
                                         cut_y=on(target, cy)[0], cut_x=on(target, cx)[0]))
    plain = normalize(crop_flip(images[idx], oy, ox, flip, p, "reflect"), mean, std, dtype)
    want = cutout(plain, cy, cx, size)
    assert got.dtype == want.dtype and np.ascontiguousarray(got).tobytes() == want.tobytes()
    for k in range(b):  # the reference against a loop
        inside = np.zeros((6, 5), bool)
        inside[cy[k]:cy[k] + size, cx[k]:cx[k] + size] = True
        assert (want[k][:, inside] == 0).all() and (want[k][:, ~inside] == plain[k][:, ~inside]).all()
        assert (plain[k] != 0).all()
    # no cutout is the plain batch
    none = B.asnumpy(augment_batch_kernel(*on(target, images, idx, oy, ox, flip, mean, std), p, dtype, target=target,
                                          padding_mode="reflect", cutout=0, cut_y=on(target, cy)[0],
                                          cut_x=on(target, cx)[0]))
    assert none.tobytes() == plain.tobytes()


def test_cutout_arguments_are_checked():
    images = np.zeros((2, 3, 4, 4), np.uint8)
    args = (images, np.array([0, 1]), None, None, None, np.zeros(3, np.float32), np.ones(3, np.float32), 0,
            np.float32)
    with pytest.raises(ValueError, match=r"cutout=2 needs the squares' corners"):
        augment_batch_kernel(*args, target="sim", cutout=2)
    with pytest.raises(ValueError, match=r"cutout=5 is larger than the 4x4 images"):
        augment_batch_kernel(*args, target="sim", cutout=5, cut_y=np.zeros(2), cut_x=np.zeros(2))
    with pytest.raises(ValueError, match=r"cutout=-1 must be an integer >= 0"):
        cutout(images, np.zeros(2, np.int64), np.zeros(2, np.int64), -1)
    with pytest.raises(ValueError, match=r"corner_x must hold one value per image"):
        cutout(images, np.zeros(2, np.int64), np.zeros(3, np.int64), 2)
    with pytest.raises(ValueError, match=r"cutout=9 is larger than the 8x8 images"):
        DeviceLoader(np.zeros((4, 3, 8, 8), np.uint8), np.arange(4), 2, augment=True, cutout=9)
    # without augmentation there is no augmented image to cut: refused, not silently left out
    with pytest.raises(ValueError, match=r"cutout=3 cuts its square out of the augmented images, and "
                                         r"augment=False: pass augment=True .* or cutout=0"):
        DeviceLoader(np.zeros((4, 3, 8, 8), np.uint8), np.arange(4), 2, cutout=3)
    # the whole image: every value the mean
    out = random_cutout(np.full((3, 1, 4, 4), 9.0, np.float32), 4, rng=0)
    assert (out == 0).all()


# ----------------------------------------------------------------------------- the loader routes it
@pytest.mark.parametrize("shuffle, augment, dtype", [(True, True, np.float32), (False, True, np.float32),
                                                     (True, False, np.float32), (False, False, np.float32),
                                                     (True, True, ml_dtypes.bfloat16), (True, True, np.float16)])
def test_loader_on_sim_uses_the_kernel_and_matches_the_array_path(launches, shuffle, augment, dtype):
    x = np.random.default_rng(3).integers(0, 256, (37, 3, 8, 8), dtype=np.uint8)
    y = np.arange(37)
    kw = dict(batch_size=10, shuffle=shuffle, augment=augment, seed=5, padding=3, dtype=dtype)
    with gpuconv.default_device("sim"):
        fused = DeviceLoader(x, y, **kw)
        array = DeviceLoader(x, y, fused=False, **kw)
        assert fused.kernel_target() == "sim" and array.kernel_target() is None
        B.transfers.reset()
        got = [(a.copy(), b.copy()) for a, b in fused]
        assert B.transfers.device_to_host == 0 and B.transfers.host_to_device == 0
        assert launches.names == ["augment_batch"] * 4
        want = list(array)
        assert launches.names == ["augment_batch"] * 4  # the array path launched nothing
    assert {rec.build for rec in launches} == {np.dtype(dtype).name.replace("float32", "float")}
    for (xa, ya), (xb, yb) in zip(got, want, strict=True):
        assert xa.dtype == xb.dtype == dtype
        assert xa.tobytes() == xb.tobytes()
        np.testing.assert_array_equal(ya, yb)


def test_loader_airbench_augmentation_alternates_flips_and_matches_the_array_path(launches):
    x = np.random.default_rng(6).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    kw = dict(batch_size=40, shuffle=False, augment=True, seed=2, padding=2, padding_mode="reflect", flip="alternate")
    with gpuconv.default_device("sim"):
        fused, array = DeviceLoader(x, np.arange(40), **kw), DeviceLoader(x, np.arange(40), fused=False, **kw)
        plans = [fused.epoch_plan(e) for e in range(3)]
        for _ in range(2):
            (a, _), (b, _) = next(iter(fused)), next(iter(array))
            assert a.tobytes() == b.tobytes()
        assert launches.names == ["augment_batch"] * 2
    f0, f1, f2 = (p[3] for p in plans)
    assert np.array_equal(f1, ~f0) and np.array_equal(f2, f0)  # every image flipped the other way each epoch
    assert 10 < f0.sum() < 30  # a fair draw per image, not one for all
    assert not np.array_equal(plans[0][1], plans[2][1])  # the translations are drawn afresh every epoch
    assert {int(v) for v in plans[0][1]} <= set(range(5))
    with pytest.raises(ValueError, match=r"flip='sometimes' must be 'random'"):
        DeviceLoader(x, np.arange(40), 8, flip="sometimes")
    with pytest.raises(ValueError, match=r"padding=8 with padding_mode='reflect'"):
        DeviceLoader(x, np.arange(40), 8, padding=8, padding_mode="reflect")


@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "array"])
def test_alternating_flips_follow_each_image_through_the_shuffle(fused):
    """'alternate' with shuffling: every image is seen mirrored in every other epoch, wherever the
    shuffle puts it (padding 0: no translation, so an image's two epochs are exact mirrors)."""
    n = 48
    x = np.random.default_rng(10).integers(0, 256, (n, 3, 6, 6), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)  # the first pixel names the image (no flip moves column 0 onto itself)
    x[:, 0, 0, -1] = 255 - np.arange(n)
    with gpuconv.default_device("sim"):
        loader = DeviceLoader(x, np.arange(n), 16, shuffle=True, augment=True, seed=3, padding=0, flip="alternate",
                              fused=fused, mean=(0, 0, 0), std=(1, 1, 1))
        epochs = []
        for _ in range(3):
            seen = {}
            for xb, yb in loader:
                for img, label in zip(np.asarray(xb), np.asarray(yb)):
                    seen[int(label)] = img
            epochs.append(seen)
    flipped = [{i: bool(e[i][0, 0, -1] == i) for i in range(n)} for e in epochs]  # column 0 landed at the end
    for i in range(n):
        assert flipped[1][i] != flipped[0][i] and flipped[2][i] == flipped[0][i], i
        want = x[i].astype(np.float32)
        assert np.array_equal(epochs[0][i], want[..., ::-1] if flipped[0][i] else want)
    assert 10 < sum(flipped[0].values()) < 38  # a draw per image, not one for all


@pytest.mark.parametrize("seed", [0, 7])
def test_alternating_flips_are_independent_of_the_shuffle_order(seed):
    """Each image's alternating flip is its own draw, not a bit of the key epoch 0's order sorts by:
    every batch of every epoch holds about half flipped images (the flips and the shuffle shared
    a key, and epoch 0 ran all its unflipped images first, then all the flipped ones)."""
    n, batch = 4096, 512
    loader = DeviceLoader(np.zeros((n, 3, 4, 4), np.uint8), np.zeros(n, np.int64), batch, augment=True,
                          flip="alternate", seed=seed)
    for epoch in range(3):
        _, _, _, flip = loader.epoch_plan(epoch)
        fractions = [float(np.mean(flip[i:i + batch])) for i in range(0, n, batch)]
        assert all(0.4 < f < 0.6 for f in fractions), (epoch, fractions)


def test_loader_cutout_fused_matches_the_array_path_and_is_drawn_per_image_and_epoch(launches):
    x = np.random.default_rng(9).integers(0, 256, (64, 3, 8, 8), dtype=np.uint8)
    kw = dict(batch_size=32, shuffle=True, augment=True, seed=4, padding=2, padding_mode="reflect",
              flip="alternate", cutout=3)
    with gpuconv.default_device("sim"):
        fused, array = DeviceLoader(x, np.arange(64), **kw), DeviceLoader(x, np.arange(64), fused=False, **kw)
        for _ in range(2):  # two epochs
            for (a, ya), (b, yb) in zip(fused, array, strict=True):
                assert a.tobytes() == b.tobytes()
                np.testing.assert_array_equal(ya, yb)
        assert launches.names == ["augment_batch"] * 4
        plans = [fused.cutout_plan(e) for e in range(2)]
        plain = DeviceLoader(x, np.arange(64), **dict(kw, cutout=0))
        assert plain.cutout_plan(0) is None
        with_cut, without = next(iter(DeviceLoader(x, np.arange(64), **kw))), next(iter(plain))
    assert (with_cut[0] != without[0]).any() and (with_cut[0][with_cut[0] != without[0]] == 0).all()
    assert "cutout=3" in repr(fused)
    (y0, x0), (y1, _) = plans
    for v in (y0, x0):
        assert v.min() >= 0 and v.max() <= 8 - 3 and len(set(v.tolist())) == 6  # every corner drawn
    assert not np.array_equal(y0, y1)  # afresh each epoch
    assert not np.array_equal(y0, fused.epoch_plan(0)[1])  # not the crop's draws
    with gpuconv.default_device("cpu"):
        cpu = DeviceLoader(x, np.arange(64), **kw).cutout_plan(1)
    np.testing.assert_array_equal(cpu[0], y1)  # the same plan on every backend


def test_loader_resume_mid_epoch_gives_the_same_fused_batches():
    x = np.random.default_rng(4).integers(0, 256, (30, 3, 6, 6), dtype=np.uint8)
    with gpuconv.default_device("sim"):
        full = list(DeviceLoader(x, np.arange(30), 8, augment=True, seed=1, padding=2))
        resumed = DeviceLoader(x, np.arange(30), 8, augment=True, seed=1, padding=2)
        resumed.set_epoch(0, start_batch=2)
        tail = list(resumed)
    assert len(tail) == 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_loader_float64_fused_batches_are_exact():
    x = np.random.default_rng(5).integers(0, 256, (12, 3, 5, 5), dtype=np.uint8)
    with gpuconv.default_device("sim"):
        got = next(iter(DeviceLoader(x, np.arange(12), 12, augment=True, dtype=np.float64, padding=1)))[0]
        want = next(iter(DeviceLoader(x, np.arange(12), 12, augment=True, dtype=np.float64, padding=1,
                                      fused=False)))[0]
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_fused_true_without_a_kernel_target_says_how_to_get_one():
    x = np.zeros((4, 3, 4, 4), np.uint8)
    with gpuconv.default_device("cpu"):
        loader = DeviceLoader(x, np.arange(4), 2, fused=True)
        assert DeviceLoader(x, np.arange(4), 2).kernel_target() is None  # auto: the NumPy path on 'cpu'
        with pytest.raises(RuntimeError, match="fused=True.*default_device\\('sim'\\)"):
            next(iter(loader))
    with pytest.raises(ValueError, match="fused='yes'"):
        DeviceLoader(x, np.arange(4), 2, fused="yes")


# ----------------------------------------------------------------------------- NVRTC and the GPU
@needs_nvrtc
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_compiles_with_nvrtc(arch, dtype):
    ptx = kernels.nvrtc_check("augment", arch, dtype)
    assert f".target sm_{arch[-2:]}" in ptx
    assert set(re.findall(r"\.entry\s+(\w+)", ptx)) == {"augment_batch"}
    # IEEE division (div.rn), never the approximate one: the bit-identity with the array path needs it.
    suffix = "f32" if dtype is np.float32 else "f64"
    assert f"div.rn.{suffix}" in ptx and "div.approx" not in ptx and "div.full" not in ptx


@pytest.mark.gpu
@pytest.mark.skipif(not B.cuda_available(), reason=f"no GPU: {B.cuda_status()}")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shuffle, augment", [(True, True), (False, False)])
def test_cuda_loader_fused_matches_array_path_and_numpy(dtype, shuffle, augment):
    x = np.random.default_rng(6).integers(0, 256, (70, 3, 32, 32), dtype=np.uint8)
    kw = dict(batch_size=32, shuffle=shuffle, augment=augment, seed=3, dtype=dtype, device="cuda",
              cutout=12 if augment else 0)
    fused = DeviceLoader(x, np.arange(70), **kw)
    array = DeviceLoader(x, np.arange(70), fused=False, **kw)
    assert fused.kernel_target() == "cuda"
    order, oy, ox, flip = (None if a is None else a.get() for a in fused.epoch_plan(0))
    cuts = fused.cutout_plan(0)
    cuts = None if cuts is None else [a.get() for a in cuts]
    order = np.arange(70) if order is None else order
    got = [(a.get(), b.get()) for a, b in fused]
    for i, ((xa, ya), (xb, yb)) in enumerate(zip(got, ((a.get(), b.get()) for a, b in array), strict=True)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        sl = slice(i * 32, (i + 1) * 32)
        crop = (oy[sl], ox[sl], flip[sl]) if augment else (None, None, None)
        want = normalize(crop_flip(x[order[sl]], *crop, padding=4), dtype=dtype)
        if cuts is not None:
            want = cutout(want, cuts[0][sl], cuts[1][sl], 12)
        np.testing.assert_array_equal(xa, want)  # the GPU's IEEE division rounds as NumPy's


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=["f32", "bf16"])
def test_channels_last_batches_hold_the_same_values(launches, dtype):
    """channels_last: the fused kernel writes NHWC memory directly (no transposing copy after it),
    the array path converts; both give the NCHW path's values, bit for bit."""
    x = np.random.default_rng(6).integers(0, 256, (23, 3, 8, 8), dtype=np.uint8)
    kw = dict(batch_size=10, shuffle=True, augment=True, seed=2, padding=3, dtype=dtype)
    with gpuconv.default_device("sim"):
        plain = [a.copy() for a, _ in DeviceLoader(x, np.arange(23), **kw)]
        launches.clear()
        fused = [a for a, _ in DeviceLoader(x, np.arange(23), channels_last=True, **kw)]
        assert launches.names == ["augment_batch"] * 3  # nothing else: the kernel wrote NHWC itself
        array = [a for a, _ in DeviceLoader(x, np.arange(23), channels_last=True, fused=False, **kw)]
    for got in (fused, array):
        for a, b in zip(got, plain, strict=True):
            assert gpuconv.is_channels_last(a) and a.shape == b.shape
            assert np.ascontiguousarray(a).tobytes() == b.tobytes()
