"""CIFAR-10 for gpuconv: reading (directory, tarball, binary release), download with an MD5
check, augmentation that runs on any array module, and a device-resident loader.

    cifar = load_cifar10("~/data")            # or $GPUCONV_DATA, ~/.cache/gpuconv, download
    train = DeviceLoader(cifar.train.images, cifar.train.labels, 512, augment=True)
    for x, y in train: ...                    # float32 (512, 3, 32, 32), int64 (512,) on the device
"""
from .augment import CIFAR10_MEAN, CIFAR10_STD, crop_flip, cutout, normalize, random_crop, random_cutout, random_flip
from .cifar10 import CIFAR10, Split, default_cache_dir, find_data_dir, load_cifar10, read_cifar10, train_val_split
from .download import CIFAR10_MD5, CIFAR10_URL, download_cifar10
from .errors import CorruptDataError, DataError, DataNotFoundError, DownloadError, UnsafePickleError
from .loader import DeviceLoader
from .safe_pickle import RestrictedUnpickler, load_pickle

__all__ = [
    "CIFAR10", "CIFAR10_MD5", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_URL", "CorruptDataError",
    "DataError", "DataNotFoundError", "DeviceLoader", "DownloadError", "RestrictedUnpickler", "Split",
    "UnsafePickleError", "crop_flip", "cutout", "default_cache_dir", "download_cifar10", "find_data_dir",
    "load_cifar10", "load_pickle", "normalize", "random_crop", "random_cutout", "random_flip", "read_cifar10",
    "train_val_split",
]
