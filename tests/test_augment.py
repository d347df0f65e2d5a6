"""Augmentation and normalization (gpuconv.data.augment), one body per backend present."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuconv.data import (CIFAR10_MEAN, CIFAR10_STD, crop_flip, cutout, normalize, random_crop, random_flip,
                          read_cifar10)


def images(n=64, c=3, h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def rng_for(backend, seed):
    return backend.xp.random.default_rng(seed)


def crop_offset(src, out, p):
    """The (dy, dx) at which ``out`` is a window of ``src`` zero-padded by p, or None."""
    padded = np.pad(src, ((0, 0), (p, p), (p, p)))
    h, w = src.shape[1:]
    hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
            if np.array_equal(padded[:, dy:dy + h, dx:dx + w], out)]
    return hits[0] if hits else None


def test_random_crop_takes_windows_of_the_padded_image(backend):
    x = images(200, h=8, w=8)  # small, so the window search is fast; random pixels make hits unique
    out = backend.asnumpy(random_crop(backend.asarray(x), padding=2, rng=rng_for(backend, 1)))
    assert out.shape == x.shape and out.dtype == np.uint8
    offsets = [crop_offset(x[i], out[i], 2) for i in range(len(x))]
    assert None not in offsets
    assert {o[0] for o in offsets} == set(range(5)) and {o[1] for o in offsets} == set(range(5))
    assert (out == 0).mean() > (x == 0).mean()  # zero padding shows in the crops


def test_random_crop_is_seeded_and_padding_zero_is_identity(backend):
    x = backend.asarray(images(32))
    a = backend.asnumpy(random_crop(x, 4, rng_for(backend, 7)))
    b = backend.asnumpy(random_crop(x, 4, rng_for(backend, 7)))
    c = backend.asnumpy(random_crop(x, 4, rng_for(backend, 8)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(backend.asnumpy(random_crop(x, 0, rng_for(backend, 7))), images(32))
    np.testing.assert_array_equal(backend.asnumpy(random_crop(x, 4, rng=5)),
                                  backend.asnumpy(random_crop(x, 4, rng=5)))  # an int seed works too


def test_random_flip_mirrors_about_half(backend):
    x = images(1000, h=4, w=6)
    out = backend.asnumpy(random_flip(backend.asarray(x), rng_for(backend, 3)))
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[..., ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)  # each image exactly one of the two (random pixels: never both)
    assert 0.42 < mirrored.mean() < 0.58
    again = backend.asnumpy(random_flip(backend.asarray(x), rng_for(backend, 3)))
    np.testing.assert_array_equal(out, again)


def test_crop_flip_matches_a_per_image_loop(backend):
    x = images(16, h=10, w=12, seed=4)
    r = np.random.default_rng(0)
    oy, ox, fl = r.integers(0, 7, 16), r.integers(0, 7, 16), r.integers(0, 2, 16).astype(bool)
    got = backend.asnumpy(crop_flip(backend.asarray(x), backend.asarray(oy), backend.asarray(ox),
                                    backend.asarray(fl), padding=3))
    padded = np.pad(x, ((0, 0), (0, 0), (3, 3), (3, 3)))
    for i in range(16):
        want = padded[i, :, oy[i]:oy[i] + 10, ox[i]:ox[i] + 12]
        np.testing.assert_array_equal(got[i], want[..., ::-1] if fl[i] else want)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 4), h=st.integers(1, 9), w=st.integers(1, 9),
       p=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_crop_then_flip_property(n, c, h, w, p, seed):
    x = images(n, c, h, w, seed=seed % 1000)
    out = random_flip(random_crop(x, p, seed), seed + 1)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(n):
        assert crop_offset(x[i], out[i], p) is not None or crop_offset(x[i], out[i][..., ::-1], p) is not None


def test_normalize_matches_float64_reference(backend):
    x = images(8)
    want = (x.astype(np.float64) - np.array(CIFAR10_MEAN)[:, None, None]) / np.array(CIFAR10_STD)[:, None, None]
    got = normalize(backend.asarray(x))
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_allclose(backend.asnumpy(got), want, rtol=1e-5, atol=1e-5)
    got64 = normalize(backend.asarray(x), mean=(0, 0, 0), std=(255, 255, 255), dtype=np.float64)
    assert got64.dtype == np.float64
    np.testing.assert_array_equal(backend.asnumpy(got64), x / 255.0)


def test_constants_agree_with_the_real_images(subset_dir):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        im = read_cifar10(subset_dir).train.images
    per_channel = im.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64)
    # The constants are the full training set's; 5,170 of its images land within ~1 level.
    np.testing.assert_allclose(per_channel.mean(axis=1), CIFAR10_MEAN, atol=2.0)
    np.testing.assert_allclose(per_channel.std(axis=1), CIFAR10_STD, atol=2.0)
    z = normalize(im[:2000])
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


@pytest.mark.parametrize("call, err, match", [
    (lambda: normalize(images(2).astype(np.float32)), TypeError, "must be uint8"),
    (lambda: normalize(images(2), dtype=np.int16), TypeError, r"float64, float32, bfloat16 \(ml_dtypes.bfloat16\) or float16"),
    # a precision name failed in NumPy ("data type 'bf16' not understood"); None was read as float64, silently
    (lambda: normalize(images(2), dtype="bf16"), TypeError, r"dtype='bf16' must be .*: for the precision 'bf16' pass "
                                                            r"dtype='bfloat16'"),
    (lambda: normalize(images(2), dtype=None), TypeError, r"dtype=None must be float64, float32"),
    (lambda: normalize(images(2, c=4)), ValueError, r"one value per channel \(C=4 "),
    (lambda: normalize(images(1)[0]), ValueError, r"\(N, C, H, W\).*x\[None\]"),
    (lambda: random_crop(images(2), padding=-1), ValueError, "padding=-1 must be an integer >= 0"),
    (lambda: random_crop(images(2), padding=1.5), ValueError, "padding=1.5"),
    (lambda: random_flip(images(2), rng="seed"), TypeError, "rng must be None, an int seed"),
    (lambda: crop_flip(images(2), np.zeros(3, int), np.zeros(3, int)), ValueError, r"one value per image"),
    (lambda: crop_flip(images(2), np.zeros(2, int)), ValueError, "both offsets_y and offsets_x"),
    # a negative offset indexed from the far border, silently; one past 2 * padding raised NumPy's IndexError
    (lambda: crop_flip(images(2), np.array([-1, 0]), np.zeros(2, int), padding=2), ValueError,
     r"offsets_y must lie in \[0, 2 \* padding\] = \[0, 4\].*\[-1, 0\]"),
    (lambda: crop_flip(images(2), np.zeros(2, int), np.array([0, 5]), padding=2), ValueError,
     r"offsets_x must lie in \[0, 2 \* padding\] = \[0, 4\].*\[0, 5\]"),
    # (N, H, W, C) images were flipped along their channels (RGB read as BGR) and cropped along W and C, silently
    (lambda: random_flip(images(2).transpose(0, 2, 3, 1), rng=0), ValueError,
     r"images of shape \(2, 32, 32, 3\) look channels-last .* images.transpose\(0, 3, 1, 2\)"),
    (lambda: random_crop(images(2).transpose(0, 2, 3, 1), rng=0), ValueError, "look channels-last"),
    # float offsets failed deep inside with NumPy's "arrays used as indices must be of integer type"
    (lambda: crop_flip(images(2), np.zeros(2), np.zeros(2), padding=2), TypeError,
     r"offsets_y must hold integer pixel positions .* got dtype float64: pass offsets_y.astype\(np.int64\)"),
    # a corner out of [0, H - size] cut part of a square, or none, silently
    (lambda: cutout(images(2, h=8, w=8).astype(np.float32), np.array([-3, 0]), np.zeros(2, int), 4), ValueError,
     r"corner_y must lie in \[0, H - size\] = \[0, 4\].*\[-3, 0\]"),
    (lambda: cutout(images(2, h=8, w=8).astype(np.float32), np.zeros(2, int), np.array([0, 5]), 4), ValueError,
     r"corner_x must lie in \[0, W - size\] = \[0, 4\].*\[0, 5\]"),
    (lambda: cutout(images(2).astype(np.float32), np.full(2, 1.5), np.zeros(2, int), 4), TypeError,
     r"corner_y must hold integer pixel positions"),
])
def test_bad_arguments(call, err, match):
    with pytest.raises(err, match=match):
        call()
