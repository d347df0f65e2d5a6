"""Using a trained model: ``model = gpuconv.load_model(checkpoint)``, ``model.predict(images)``.

A checkpoint written by ``gpuconv train`` holds the float32 weights, the model's constructor
and arguments, the class names, the precision it trained in and the preprocessing the loader
applied (the per-channel mean and std of the 0-255 pixels). So a user gives raw uint8 images,
(N, 32, 32, 3) as image files decode or (N, 3, 32, 32) as CIFAR-10's arrays are, and gets
class probabilities; nothing about normalization has to be known. A network built for other
images (``input_dim=(1, 28, 28)`` of ``seed_net`` or ``three_layer_convnet``) takes those: the
channels are the normalization's, the size the config's ``input_dim``, else the size of the images
a ``Trainer.fit`` run trained on (its ``input_size``; 32x32 without either).
The images go through the same loader, batch size, precision and test-time augmentation (by
default the level the run evaluated at, its ``--tta`` or its recipe's: 2 for the airbench recipes) as ``gpuconv
evaluate``, so the predicted classes of the held-out images give exactly its accuracy.

Image files (PNG, JPEG, anything Pillow reads) are turned upright as their EXIF orientation says
(a phone's photo, as a viewer shows it), converted to RGB and resized to the model's input size
with Pillow (area averaging when shrinking): :func:`load_images`.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from . import backend
from .data import CIFAR10_MEAN, CIFAR10_STD, DeviceLoader

INPUT_HW = (32, 32)


class TrainedModel:
    """A network with what it needs to classify raw images: ``classes``, ``mean``/``std`` (the
    loader's normalization), ``precision`` (the one it trained in, the default for predicting),
    ``tta`` (the test-time augmentation level its run evaluated at, the default for predicting:
    2 for the airbench recipes, whose accuracy is that of six views per image). ``input_size``:
    the (height, width) of the images the network takes (default 32x32, CIFAR-10's; a config's
    ``kwargs['input_dim']`` gives it, else its ``input_size``, the size of the images a
    ``Trainer.fit`` trained on); the channels are those of ``mean`` and ``std``."""

    def __init__(self, net, classes, mean=CIFAR10_MEAN, std=CIFAR10_STD, precision="fp32", config=None, tta=0,
                 input_size=None):
        from . import amp
        from .trainer import check_tta
        self.net, self.classes = net.eval(), list(classes)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if input_size is None:
            input_size = recorded_input_dim(config or {})[1:]
        self.input_size = tuple(int(v) for v in input_size)
        self.device = backend.get_default_device()  # where the weights live: 'sim' runs the kernels
        self.precision, self.config = amp.resolve_precision(precision, self.device), dict(config or {})
        self.tta = check_tta(tta)

    @property
    def input_dim(self):
        """(channels, height, width) of the images the network takes (:func:`load_images` makes them)."""
        return (len(self.mean), *self.input_size)

    def __call__(self, x):
        from . import amp
        # (one call at a time with predict's: a bf16 predict in another thread puts its compute
        # copies on the shared parameters, which a float32 forward would meet)
        with amp.model_lock(self.net):
            return self.net(x)

    def logits(self, images, batch_size=500, precision=None, tta=None):
        """Float32 logits (N, classes) on the host for uint8 ``images``; one readback. ``tta``:
        the test-time augmentation level (:func:`gpuconv.trainer.tta_logits`; default ``self.tta``);
        ``precision``: 'fp32', 'tf32', 'bf16', 'fp16' or 'auto' (the model's device decides it, as
        ``gpuconv predict --precision auto``; default ``self.precision``)."""
        from . import amp
        from .layers import eval_mode
        from .trainer import check_tta, tta_logits
        level = self.tta if tta is None else check_tta(tta)
        images = as_nchw(images, self.input_dim)
        if len(images) == 0:  # (a loader needs an image; no batch, no logits)
            return np.empty((0, len(self.classes)), np.float32)
        with backend.default_device(self.device):
            precision = amp.resolve_precision(precision or self.precision, self.device)
            # (placeholder labels where the images are: CuPy images beside NumPy labels are refused)
            with backend.array_device_context((images,)):
                labels = backend.get_array_module(images).zeros(len(images), np.int64)
            loader = DeviceLoader(images, labels, batch_size, shuffle=False, augment=False,
                                  mean=self.mean, std=self.std, device=self.device,
                                  channels_last=amp.channels_last_for(precision))
            out = []
            # in eval mode whatever the net's mode now (a net being trained in another thread), one
            # call at a time per net (the evaluation's lock: both switch its mode)
            with amp.model_lock(self.net), eval_mode(self.net):  # (its modes and training caches as they were after)
                for x, _ in loader:
                    with amp.autocast(self.net, precision, backward=False) as dt:
                        out.append(tta_logits(self.net, amp.cast_input(x, dt), level).astype(np.float32))
            if out[0].shape[1] != len(self.classes):
                raise ValueError(f"the network gives {out[0].shape[1]} class scores per image but classes has "
                                 f"{len(self.classes)} names: give TrainedModel one name per output of the network")
            xp = backend.get_array_module(out[0])
            return backend.asnumpy(xp.concatenate(out))

    def predict(self, images, batch_size=500, precision=None, tta=None):
        """Class probabilities (N, classes), float32 on the host, for uint8 ``images`` (the softmax
        of :meth:`logits`, test-time augmentation as there)."""
        z = self.logits(images, batch_size, precision, tta)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict_classes(self, images, batch_size=500, precision=None, tta=None):
        """The most likely class index per image (argmax of the logits, as ``evaluate`` counts)."""
        return self.logits(images, batch_size, precision, tta).argmax(axis=1)

    def __repr__(self):
        return f"TrainedModel({len(self.classes)} classes, precision={self.precision!r}, tta={self.tta},\n{self.net!r})"


def load_model(path, device=None) -> TrainedModel:
    """The model of a ``gpuconv train`` checkpoint, with its weights, on ``device`` (default: the
    default device), in eval mode, ready to :meth:`TrainedModel.predict`."""
    from .checkpoint import load_checkpoint, read_config, section
    from .models import from_config
    arrays = load_checkpoint(path)
    config = read_config(arrays)
    if "constructor" not in config:
        raise ValueError(f"{path} has no model config (meta/config): it was not written by `gpuconv train`, nor by "
                         "a Trainer given config={'constructor': ..., 'kwargs': ...}; build the model in Python and "
                         "load_state_dict the checkpoint's model/ arrays")
    with backend.default_device(device if device is not None else backend.get_default_device()):
        net = from_config(config)
        try:
            net.load_state_dict(section(arrays, "model"))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: its weights do not fit the model its config describes ({exc})") from None
        pre = config.get("preprocess", {})
        mean, std = pre.get("mean", CIFAR10_MEAN), pre.get("std", CIFAR10_STD)
        from .data.formats import DEFAULT_CLASSES
        # (CIFAR-10's names only for a 10-class network of RGB images: another data set's classes, a
        # grayscale one's digits among them, go by index)
        num_classes = int(config.get("kwargs", {}).get("num_classes", len(DEFAULT_CLASSES)))
        cifar_like = num_classes == len(DEFAULT_CLASSES) and len(mean) == 3
        classes = config.get("classes") or (DEFAULT_CLASSES if cifar_like else [str(i) for i in range(num_classes)])
        # built where the weights are: its .device is where predict runs ('sim' runs the kernels)
        return TrainedModel(net, classes, mean, std, config.get("train_args", {}).get("precision", "fp32"),
                            config, tta=recorded_tta(config))


def recorded_input_dim(config) -> tuple:
    """(channels, height, width) of the images a checkpoint's network takes, from its config: the
    channels those of its normalization (``preprocess``), the size its constructor's ``input_dim``,
    else the ``input_size`` Trainer.fit recorded, else 32x32 (CIFAR-10's)."""
    c = len(config.get("preprocess", {}).get("mean", CIFAR10_MEAN))
    input_dim = config.get("kwargs", {}).get("input_dim")
    h, w = tuple(input_dim)[1:] if input_dim is not None else tuple(config.get("input_size", INPUT_HW))
    return c, int(h), int(w)


def recorded_tta(config) -> int:
    """The test-time augmentation level a checkpoint's run evaluated at (its recipe's, or its
    ``--tta``), from the checkpoint's config; 0 where it does not say."""
    return int(config.get("train_args", {}).get("tta", 0) or 0)


def as_nchw(images, input_dim=(3, *INPUT_HW)) -> np.ndarray:
    """uint8 images as (N, C, H, W): from (N, H, W, C) (image files, ``.npy`` exports) or already so;
    ``input_dim`` is the (C, H, W) the model takes."""
    a = np.asarray(images) if not backend.is_cupy_array(images) else images
    if a.dtype != np.uint8:
        fix = ("for integer pixels 0-255 (a list of ints is int64) use np.asarray(images, dtype=np.uint8)"
               if a.dtype.kind in "iu" else "for float images in [0, 1] use (x * 255).round().astype(np.uint8)")
        raise TypeError(f"images must be uint8 pixels 0-255, got dtype {a.dtype}; {fix}")
    given = tuple(a.shape)  # (as the caller gave it, for the message)
    if a.ndim == 3:
        a = a[None]
    c, h, w = input_dim
    if a.ndim != 4 or c not in (a.shape[1], a.shape[3]):
        if a.ndim == 4 and c == 3 and 1 in (a.shape[1], a.shape[3]):
            axis = 1 if a.shape[1] == 1 else 3
            fix = f": for grayscale images repeat the channel, np.repeat(images, 3, axis={axis})"
        elif a.ndim == 4 and c == 3 and a.shape[3] == 4:
            fix = ": for RGBA images drop the alpha channel, images[..., :3]"
        elif a.ndim == 4 and c == 3 and a.shape[1] == 4:
            fix = ": for RGBA images drop the alpha channel, images[:, :3]"
        elif len(given) == 3 and given[1:] == (h, w) and c == 1:
            fix = ": for a batch of grayscale images (N, H, W) add the channel axis, images[:, None]"
        elif len(given) == 3 and given[1:] == (h, w):
            fix = (" (a 3-d array is one image): for a batch of grayscale images (N, H, W) use "
                   f"np.repeat(images[:, None], {c}, axis=1)")
        else:
            fix = "" if c == 3 else f" (the model takes {c}-channel images: as many as its mean and std have)"
        raise ValueError(f"images must be shaped (N, {h}, {w}, {c}) or (N, {c}, {h}, {w}), got {given}{fix}")
    if a.shape[1] != c:
        a = a.transpose(0, 3, 1, 2)
    if tuple(a.shape[2:]) != (h, w):
        raise ValueError(f"images are {a.shape[2]}x{a.shape[3]}; the model takes {h}x{w}: resize them (image files "
                         "given to `gpuconv predict` or load_images are resized), or, for a network built for "
                         f"{a.shape[2]}x{a.shape[3]} images, give TrainedModel input_size=({a.shape[2]}, {a.shape[3]}) "
                         "(load_model reads it from the config's kwargs['input_dim'], else from its input_size, which "
                         "Trainer.fit records)")
    xp = backend.get_array_module(a)
    return xp.ascontiguousarray(a)


def _as_rgb8(im, path):
    """An 8-bit RGB Pillow image of ``im``. 16-bit grayscale images (PNG's I;16) are scaled down
    (65535 -> 255; a PNG has no 32-bit pixels, so older Pillow's mode "I" of a PNG is one), where
    Pillow's own conversion clips every value above 255 to white; other
    integer and float modes ('I', 'F'), whose range the file does not say, are refused."""
    from PIL import Image
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):  # older Pillow: 16-bit PNGs as "I"
        gray = (np.asarray(im, dtype=np.uint32) * 255 + 32767) // 65535  # rounded to nearest
        rgb = Image.fromarray(gray.astype(np.uint8), mode="L").convert("RGB")
        try:  # the file's EXIF on the new image: its orientation, which _upright applies
            rgb.info["exif"] = im.getexif().tobytes()
        except Exception:  # (a block Pillow cannot parse: the rows as stored, as _upright leaves them)
            pass
        return rgb
    if im.mode in ("I", "F"):
        raise ValueError(f"{path} holds {'32-bit integer' if im.mode == 'I' else 'floating-point'} pixels (Pillow mode "
                         f"{im.mode!r}), whose range the file does not give: save it as an 8-bit image, or pass a .npy "
                         "array of uint8 images")
    return im.convert("RGB")


def _upright(im):
    """``im`` turned as its EXIF orientation says: a camera stores its sensor's rows and a tag that
    every viewer applies. An EXIF block Pillow cannot parse leaves the rows as stored."""
    from PIL import ImageOps
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # (Pillow raises SyntaxError, struct.error, ... for a damaged block)
        return im


def load_images(paths, input_dim=(3, *INPUT_HW)):
    """(uint8 images (N, C, H, W), [(source, index in source)]) from image files (turned upright as
    their EXIF orientation says, converted to RGB, or to grayscale for one channel, and resized to
    H x W) and ``.npy`` files of uint8 images (N, H, W, C) or (N, C, H, W). ``input_dim``: the
    (C, H, W) the model takes (a TrainedModel's ``input_dim``; CIFAR-10's by default). ``paths``: a
    list of paths, or one path."""
    from PIL import Image
    c, h, w = input_dim
    if isinstance(paths, (str, bytes, os.PathLike)):  # one file (iterating a str would give its characters)
        paths = [paths]
    out, sources = [], []
    for p in (pathlib.Path(q).expanduser() for q in paths):  # ('~/cat.png' from Python, as the shell gives it)
        if p.is_dir():
            raise IsADirectoryError(f"{p} is a directory: give the image files or .npy arrays in it (e.g. "
                                    f"{p / '*.png'}, which the shell expands)")
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist (give image files or .npy arrays of uint8 images)")
        if p.suffix.lower() == ".npy":
            try:
                with open(p, "rb") as f:  # (NumPy takes any other file for a pickle, and says to load it unsafely)
                    head = f.read(6)
                if head != b"\x93NUMPY":
                    raise ValueError(f"{'the file is empty' if not head else 'not a NumPy .npy file'}: give arrays "
                                     "saved with np.save(path, images), or image files")
                try:
                    arr = np.load(p, allow_pickle=False)
                except ValueError as exc:  # (NumPy's own words say to load it unsafely, allow_pickle=True)
                    if "allow_pickle" not in str(exc):
                        raise
                    raise TypeError("it holds an array of Python objects (images of several sizes saved as one "
                                    "list?), which is not unpickled (that can run code): give the image files "
                                    "(they are resized), or save images of one size as one uint8 array, "
                                    "np.save(path, np.stack(images).astype(np.uint8))") from None
                arr = as_nchw(arr, input_dim)
            except (TypeError, ValueError, OSError) as exc:  # (which of several files, as for an image file)
                raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"{p}: {exc}") from None
            out.append(arr)
            sources += [(str(p), i) for i in range(len(arr))]
            continue
        if c not in (1, 3):
            raise ValueError(f"{p}: an image file gives 1 (grayscale) or 3 (RGB) channels, and the model takes {c}: "
                             f"pass a .npy array of uint8 images shaped (N, {c}, {h}, {w}) instead")
        try:
            with Image.open(p) as im:
                rgb = _upright(_as_rgb8(im, p))
                if c == 1:
                    rgb = rgb.convert("L")  # (exact for a grayscale file: its RGB copy has R = G = B)
                if rgb.size != (w, h):
                    rgb = rgb.resize((w, h), Image.Resampling.BOX if min(rgb.size) > min(h, w)
                                     else Image.Resampling.BILINEAR)
                pixels = np.asarray(rgb, np.uint8)
                out.append(pixels[None, None] if c == 1 else pixels.transpose(2, 0, 1)[None])
        except OSError as exc:
            raise ValueError(f"{p} is not an image Pillow can read ({exc}); give PNG/JPEG files or .npy arrays") from None
        sources.append((str(p), 0))
    if not out:
        raise ValueError("no images given")
    return np.concatenate(out), sources
