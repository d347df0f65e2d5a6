"""DeviceLoader: the data set on the device as uint8, batches made there.

The images are uploaded once. Each batch is then a gather by a permutation index, an
optional random crop + flip (+ cutout), and a normalization to float, all on the device: no
per-batch host work and no device-to-host copy, so a training step on the GPU never waits on the
loader.
Where the arrays have a kernel target ('cuda', or 'sim' while it is the default device) that is
one fused kernel (kernels/augment.cu) instead of four array-module passes; both paths take the
same random draws and give bit-identical batches (``fused=False`` forces the array path).

Epoch ``e``'s order and augmentation are a pure function of ``(seed, e)``: both are counter-based
draws (SplitMix64 of the element's index under keys taken from ``SeedSequence([seed, e])``; see
:func:`epoch_plan` and :func:`_epoch_keys`), so a resumed
run (``set_epoch(e, start_batch=k)``) sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math

import numpy as np

from .. import layout, precision
from ..backend import (Device, array_device_context, asnumpy, get_array_module, get_default_device, is_cupy_array,
                       to_device)
from ..backend import kernel_target as _kernel_target
from ..counter_rng import check_seed, splitmix64, uniform_below
from ..ops._checks import check_bool
from ._launch_augment import augment_batch_kernel
from .augment import (CIFAR10_MEAN, CIFAR10_STD, check_cutout, check_mean_std, check_padding_mode, crop_flip, cutout,
                      normalized)


def _check_int(name, value, low, fix):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}; {fix}")
    return int(value)


def _images_fix(images):
    """What to do with ``images`` the loader refuses: the fix for float pixels, for grayscale images
    without a channel axis, else an example."""
    kind, ndim = getattr(getattr(images, "dtype", None), "kind", None), getattr(images, "ndim", None)
    if kind == "f":
        return ("for float images in [0, 1] pass (images * 255).round().astype(np.uint8), and for images already "
                "normalized undo it first (images * std + mean, on the 0-255 scale), with mean= and std= per channel")
    if ndim == 3:
        return "for grayscale images (N, H, W) add the channel axis, images[:, None]"
    return "e.g. cifar.train.images"


def _epoch_keys(seed, epoch, n):
    """``n`` 64-bit keys of (seed, epoch). SeedSequence reads each int as its 32-bit words and pads
    short entropy with zeros, so ``[seed, epoch]`` of a seed of two words ``[lo, hi]`` would be the
    words of seed ``lo`` at epoch ``hi``: such seeds (2**32 and up) take a spawn key of their own
    (2; the 'alternate' flips use 1), and seeds below 2**32 keep the keys they always had."""
    spawn_key = () if seed < 2**32 else (2,)
    return np.random.SeedSequence([seed, int(epoch)], spawn_key=spawn_key).generate_state(n, np.uint64)


class DeviceLoader:
    """Iterate ``(x float (B, C, H, W) normalized, y int64 (B,))`` batches on ``device``.

    ``images`` uint8 (N, C, H, W) and ``labels`` integers (N,), NumPy or CuPy; ``device``
    None means the default device. ``augment`` applies a random crop (zero padding
    ``padding``) and a horizontal flip per image. Each ``iter()`` runs the loader's current
    epoch and then advances it; ``set_epoch`` picks the epoch (and first batch) explicitly.
    ``fused``: None runs the fused kernel where the arrays have a kernel target, False never,
    True always (an error where there is no target). ``channels_last``: batches in NHWC memory
    (still (B, C, H, W) arrays; gpuconv.layout), the layout the tensor-core convolutions read,
    written so by the fused kernel directly. ``padding_mode``: 'zeros' (the ResNet crop) or
    'reflect' (airbench's translation: ``padding=2``, the borders mirrored). ``flip``: 'random'
    draws each image's flip afresh every epoch; 'alternate' (airbench) draws it once per seed
    and flips every image the other way on odd epochs, so each image is seen both ways every
    two epochs. ``cutout``: with ``augment`` (an error without), a ``cutout`` x ``cutout`` square of each augmented
    image set to 0 (the mean color, after normalization), at a corner drawn uniformly per image
    and epoch (airbench96: 12); 0 for none. ``mean`` and ``std``: per channel, on the 0-255
    pixel scale; the defaults are CIFAR-10's training set's (3 channels): give your own data
    set's (``images.mean(axis=(0, 2, 3))`` and ``.std(...)``) for anything else. Kept as given in
    ``.mean``/``.std``; a Trainer records them in its checkpoint for prediction.
    """

    def __init__(self, images, labels, batch_size, shuffle=True, augment=False, drop_last=False, seed=0,
                 device=None, *, padding=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, dtype=np.float32, fused=None,
                 channels_last=False, padding_mode="zeros", flip="random", cutout=0):
        if not (isinstance(images, np.ndarray) or is_cupy_array(images)) or images.dtype != np.uint8 \
                or images.ndim != 4:
            raise TypeError(
                "images must be a uint8 array of shape (N, C, H, W) (the raw 0-255 pixels; the loader "
                f"normalizes), got {getattr(images, 'dtype', type(images).__name__)} "
                f"{getattr(images, 'shape', '')}; {_images_fix(images)}")
        n = images.shape[0]
        if n == 0:
            raise ValueError("images is empty (0 images); a loader needs at least one image")
        if not (isinstance(labels, np.ndarray) or is_cupy_array(labels)):  # a list, a torch tensor, ...
            labels = np.asarray(labels)
        get_array_module(images, labels)
        if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integers of shape ({n},) (one per image), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        # (Python ints: NumPy 1.x compared a uint64 with an int64 bound as float64, never above it)
        if isinstance(labels, np.ndarray) and labels.size and (int(labels.min()) < 0
                                                               or int(labels.max()) > np.iinfo(np.int64).max):
            raise ValueError(f"labels must be class indices (>= 0, within int64), got values in "
                             f"[{labels.min()}, {labels.max()}]")
        self.batch_size = _check_int("batch_size", batch_size, 1, "e.g. batch_size=512")
        self.shuffle, self.augment, self.drop_last = (check_bool("shuffle", shuffle), check_bool("augment", augment),
                                                      check_bool("drop_last", drop_last))
        if drop_last and self.batch_size > n:
            raise ValueError(f"batch_size={batch_size} with drop_last=True and only {n} images would yield "
                             f"no batch; use batch_size <= {n} or drop_last=False")
        self.seed = check_seed(seed)
        self.padding = _check_int("padding", padding, 0, "e.g. padding=4")
        check_padding_mode(padding_mode, self.padding, images.shape[2], images.shape[3])
        self.padding_mode = padding_mode
        if flip not in ("random", "alternate"):
            raise ValueError(f"flip={flip!r} must be 'random' (drawn per image and epoch) or 'alternate' (drawn "
                             "once, every image flipped the other way on odd epochs)")
        self.flip = flip
        self.cutout = check_cutout(cutout, images.shape[2], images.shape[3])
        if self.cutout and not self.augment:
            raise ValueError(f"cutout={self.cutout} cuts its square out of the augmented images, and augment=False: "
                             "pass augment=True (the random crop and flip come with it) to cut it out, or cutout=0")
        if fused not in (None, True, False):
            raise ValueError(f"fused={fused!r} must be None (the kernel where there is a target), True or False")
        self.fused = fused
        self.channels_last = check_bool("channels_last", channels_last)
        self.dtype = precision.check_dtype(dtype)
        c = images.shape[1]
        # Kept on the host (a checkpoint records them, each batch takes them from the device copy
        # below): a device array, as the mean of CuPy images is, is read back once, here (NumPy
        # refuses to convert a CuPy array implicitly).
        mean, std = (asnumpy(v) if is_cupy_array(v) else v for v in (mean, std))
        if np.size(mean) != c and images.shape[3] == np.size(mean):
            raise ValueError(f"images of shape {tuple(images.shape)} look channels-last (N, H, W, C) but the loader "
                             "takes channels-first (N, C, H, W) images, as gpuconv.data.load_cifar10 returns them: "
                             "pass images.transpose(0, 3, 1, 2)")
        check_mean_std(mean, std, c)
        # as given, per channel: what a checkpoint records for prediction (Trainer.fit)
        self.mean, self.std = tuple(float(v) for v in np.ravel(mean)), tuple(float(v) for v in np.ravel(std))
        self.device = Device(device) if device is not None else get_default_device()
        self.xp = self.device.xp
        # The only uploads: the data set (uint8, once) and the normalization constants. C-contiguous
        # once here (an NHWC set given as images.transpose(0, 3, 1, 2) is a strided view): the fused
        # kernel reads a contiguous set and would otherwise copy all of it for every batch.
        images = to_device(images, self.device)
        with array_device_context((images,)):  # (CuPy copies onto its current GPU, not the array's)
            self.images = self.xp.ascontiguousarray(images)
        self.labels = to_device(labels.astype(np.int64, copy=False), self.device)
        # In the compute dtype: a bfloat16/float16 batch is normalized in float32, rounded once.
        self._mean = to_device(np.asarray(mean, dtype=precision.compute_dtype(self.dtype)), self.device)
        self._std = to_device(np.asarray(std, dtype=precision.compute_dtype(self.dtype)), self.device)
        self.num_samples = n
        self.epoch = 0
        self.start_batch = 0

    @classmethod
    def from_split(cls, split, batch_size, **kwargs):
        """A loader over a ``gpuconv.data.Split`` (``cifar.train``, ``cifar.test``)."""
        if split is None:  # (a copy without test_batch has cifar.test None: an AttributeError on 'images' said nothing)
            raise ValueError("split is None: the data has no such split (cifar.test is None where the copy holds no "
                             "test_batch); hold out validation images with gpuconv.data.train_val_split(cifar.train, "
                             "val_batch=5) and pass one of its parts")
        if not (hasattr(split, "images") and hasattr(split, "labels")):
            raise TypeError(f"split must be a gpuconv.data.Split (cifar.train, cifar.test), got {type(split).__name__}; "
                            "for arrays use DeviceLoader(images, labels, batch_size)")
        return cls(split.images, split.labels, batch_size, **kwargs)

    def __len__(self):
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch, start_batch=0):
        """Make the next iteration run epoch ``epoch`` from batch ``start_batch`` (to resume)."""
        self.epoch = _check_int("epoch", epoch, 0, "epochs count from 0")
        self.start_batch = _check_int("start_batch", start_batch, 0, "batches count from 0")
        if self.start_batch > len(self):
            raise ValueError(f"start_batch={start_batch} is past the {len(self)} batches of an epoch")

    def state_dict(self) -> dict:
        """Where the loader stands: the next iteration runs ``epoch`` from ``start_batch``."""
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: dict):
        missing = [k for k in ("seed", "epoch") if k not in state]
        if missing:
            raise KeyError(f"DeviceLoader.load_state_dict: the state has no {' and no '.join(map(repr, missing))} (it "
                           f"has {sorted(state)}); pass the dict DeviceLoader.state_dict() returned")
        self.seed = check_seed(state["seed"], "state['seed']")
        self.set_epoch(state["epoch"], state.get("start_batch", 0))

    def epoch_plan(self, epoch):
        """(order, offsets_y, offsets_x, flip) for ``epoch``, on the device; ``order`` is None
        without shuffling and the rest None without augmentation. ``order[i]`` is the image at
        position i of the epoch, and the other arrays are per position too (batch k takes
        positions k * batch_size onwards); an 'alternate' flip is each image's own, moved to its
        position.

        Counter-based (:mod:`gpuconv.counter_rng`): two 64-bit keys from (seed, epoch), then
        per image its shuffle key (the order sorts them) and its crop and flip bits. The plan
        is a function of (seed, epoch) alone, computed where the images are, and the same on
        NumPy and CuPy (the shuffle keys never tie: SplitMix64 maps distinct indices to distinct
        keys): a CPU run and a GPU run see the same batches."""
        xp, n = self.xp, self.num_samples
        keys = _epoch_keys(self.seed, epoch, 2)
        order = xp.argsort(splitmix64(keys[0], n, xp), kind="stable") if self.shuffle else None
        if not self.augment:
            return order, None, None, None
        bits = splitmix64(keys[1], 2 * n, xp).reshape(n, 2)
        span = 2 * self.padding + 1
        oy = uniform_below(bits[:, 0], span, high=True)
        ox = uniform_below(bits[:, 0], span, high=False)
        if self.flip == "alternate":  # one draw per image and seed, inverted on odd epochs
            # A key of its own (a spawned sequence): SeedSequence([seed]) is SeedSequence([seed, 0]), whose
            # first word is epoch 0's shuffle key, which made epoch 0's flips follow its order.
            base = np.random.SeedSequence([self.seed], spawn_key=(1,)).generate_state(1, np.uint64)
            flip = (splitmix64(base[0], n, xp) >> np.uint64(63)).astype(bool) ^ bool(epoch % 2)
            if order is not None:  # image order[i]'s flip, at position i: each image flips every epoch
                flip = flip[order]
        else:
            flip = (bits[:, 1] >> np.uint64(63)).astype(bool)
        return order, oy, ox, flip

    def cutout_plan(self, epoch):
        """(corner_y, corner_x) of the cutout square at each position of ``epoch``, on the device;
        None without augmentation or cutout. Drawn as :meth:`epoch_plan` draws, from a third key
        of (seed, epoch): the same on every backend."""
        if not (self.augment and self.cutout):
            return None
        xp, n = self.xp, self.num_samples
        key = _epoch_keys(self.seed, epoch, 3)[2]
        bits = splitmix64(key, n, xp)
        h, w = self.images.shape[2:]
        return (uniform_below(bits, h - self.cutout + 1, high=True),
                uniform_below(bits, w - self.cutout + 1, high=False))

    def kernel_target(self):
        """'cuda' or 'sim' when batches come from the fused kernel, None for the array path."""
        if self.fused is False:
            return None
        target = _kernel_target(self.images)
        if self.fused and target is None:
            raise RuntimeError(f"fused=True but the images are NumPy arrays and the default device is "
                               f"'{get_default_device()}': the fused kernel runs on 'cuda' or 'sim'. Use "
                               "device='cuda', run under gpuconv.default_device('sim'), or fused=None")
        return target

    def __iter__(self):
        epoch, start = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0  # the next iter() runs the next epoch
        return self._batches(epoch, start)

    def _batches(self, epoch, start):
        # Each batch made with the images' GPU current (a no-op on the host), the consumer's own
        # device left current between batches: CuPy allocates the epoch's plan, the batch and its
        # placeholders on its current device, so a loader on cuda:1 iterated while cuda:0 was
        # current made them on GPU 0, where the kernel launched on GPU 1 could not read them.
        def on_device(make, *args):
            with array_device_context((self.images,)):
                return make(*args)

        target = self.kernel_target()
        order, oy, ox, flip = on_device(self.epoch_plan, epoch)
        cuts = on_device(self.cutout_plan, epoch)
        n, bs = self.num_samples, self.batch_size
        if target is not None:
            if order is None:  # the kernel gathers by index: the identity, once per epoch
                order = on_device(lambda: self.xp.arange(n, dtype=np.int64))

            def fused(lo, hi):
                idx = order[lo:hi]
                crop = (oy[lo:hi], ox[lo:hi], flip[lo:hi]) if self.augment else (None, None, None)
                cut = dict(cutout=self.cutout, cut_y=cuts[0][lo:hi], cut_x=cuts[1][lo:hi]) if cuts else {}
                return augment_batch_kernel(self.images, idx, *crop, self._mean, self._std, self.padding,
                                            self.dtype, target=target, channels_last=self.channels_last,
                                            padding_mode=self.padding_mode, **cut), self.labels[idx]

            for i in range(start, len(self)):
                yield on_device(fused, i * bs, min((i + 1) * bs, n))
            return

        def gathered(lo, hi):
            idx = order[lo:hi] if order is not None else slice(lo, hi)
            xb = self.images[idx]
            if self.augment:
                xb = crop_flip(xb, oy[lo:hi], ox[lo:hi], flip[lo:hi], self.padding, self.padding_mode)
            xb = normalized(xb, self._mean, self._std, self.dtype)  # (checked when the loader was built)
            if cuts:
                xb = cutout(xb, cuts[0][lo:hi], cuts[1][lo:hi], self.cutout)
            return (layout.to_channels_last(xb) if self.channels_last else xb), self.labels[idx]

        for i in range(start, len(self)):
            yield on_device(gathered, i * bs, min((i + 1) * bs, n))

    def __repr__(self):
        return (f"DeviceLoader({self.num_samples} images, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"augment={self.augment}, padding={self.padding}, padding_mode={self.padding_mode!r}, "
                f"flip={self.flip!r}, cutout={self.cutout}, drop_last={self.drop_last}, seed={self.seed}, dtype={self.dtype}, "
                f"channels_last={self.channels_last}, device='{self.device}')")
