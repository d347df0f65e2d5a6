"""gpuconv.inference with models trained through the Python API on images other than CIFAR-10's."""
from __future__ import annotations

import numpy as np
import pytest

import gpuconv
from gpuconv import models
from gpuconv.data import DeviceLoader
from gpuconv.optim import SGD
from gpuconv.trainer import Trainer, evaluate


def _checkpoint(tmp_path, kwargs, mean, std, extra=None, n=16, drop_preprocess=False):
    """A one-epoch run of three_layer_convnet(**kwargs) on random images; (images, labels, checkpoint path)."""
    c, h, w = kwargs["input_dim"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    y = rng.integers(0, kwargs.get("num_classes", 10), n)
    net = models.three_layer_convnet(num_filters=4, filter_size=3, hidden_dim=8, **kwargs)
    config = {"constructor": "three_layer_convnet",
              "kwargs": dict(kwargs, num_filters=4, filter_size=3, hidden_dim=8),
              "preprocess": {"mean": list(mean), "std": list(std)}, **(extra or {})}
    if drop_preprocess:
        del config["preprocess"]
    trainer = Trainer(net, SGD(net.parameters(), lr=0.01), out_dir=tmp_path, progress=False, config=config)
    trainer.fit(DeviceLoader(x, y, 8, mean=mean, std=std), 1)
    return x, y, tmp_path / "checkpoint.npz"


@pytest.mark.parametrize("input_dim", [(1, 28, 28), (3, 64, 64)], ids=["mnist", "tiny-imagenet"])
def test_a_model_built_for_other_images_predicts_them(tmp_path, input_dim):
    mean, std = (33.0,) * input_dim[0], (78.0,) * input_dim[0]
    x, y, path = _checkpoint(tmp_path, {"input_dim": input_dim}, mean, std)
    model = gpuconv.load_model(path)
    assert model.input_size == input_dim[1:]
    probs = model.predict(x)
    assert probs.shape == (len(x), 10)
    np.testing.assert_allclose(model.predict(x.transpose(0, 2, 3, 1)), probs, rtol=1e-5)  # (N, H, W, C) too
    acc = evaluate(model.net, DeviceLoader(x, y, 8, shuffle=False, mean=mean, std=std))["accuracy"]
    assert float((model.predict_classes(x) == y).mean()) == acc
    with pytest.raises(ValueError, match=rf"the model takes {input_dim[1]}x{input_dim[2]}"):
        model.predict(np.zeros((1, input_dim[0], 32, 48), np.uint8))
    # built in Python: 32x32 unless told; the error names the assumption and the fix
    direct = gpuconv.inference.TrainedModel(model.net, model.classes, mean, std)
    with pytest.raises(ValueError, match=rf"the model takes 32x32.*input_size=\({input_dim[1]}, {input_dim[2]}\)"):
        direct.predict(x)
    direct = gpuconv.inference.TrainedModel(model.net, model.classes, mean, std, input_size=input_dim[1:])
    np.testing.assert_array_equal(direct.predict(x), probs)


def test_a_checkpoint_without_class_names_names_its_classes_by_index(tmp_path):
    """CIFAR-10's ten names are the fallback of a 10-class network only: a 100-class one (CIFAR-100)
    had ten names for 100 scores, and `gpuconv predict` failed on a label past the tenth."""
    x, _, path = _checkpoint(tmp_path, {"input_dim": (3, 32, 32), "num_classes": 100}, (120.0,) * 3, (60.0,) * 3)
    model = gpuconv.load_model(path)
    assert model.classes == [str(i) for i in range(100)]
    assert model.predict(x).shape == (len(x), 100)
    wrong = gpuconv.inference.TrainedModel(model.net, model.classes[:10], model.mean, model.std)
    with pytest.raises(ValueError, match="gives 100 class scores per image but classes has 10 names"):
        wrong.predict(x)


def test_a_run_config_without_its_normalization_records_the_loaders(tmp_path):
    """A config written by hand, without "preprocess": the checkpoint records the training
    loader's mean and std, and load_model predicts with them (it used CIFAR-10's)."""
    mean, std = (120.0, 115.0, 100.0), (50.0, 51.0, 52.0)
    x, _, path = _checkpoint(tmp_path, {"input_dim": (3, 32, 32)}, mean, std, drop_preprocess=True)
    model = gpuconv.load_model(path)
    assert tuple(model.mean) == mean and tuple(model.std) == std
    assert gpuconv.checkpoint.read_config(gpuconv.checkpoint.load_checkpoint(path))["preprocess"] == \
        {"mean": list(mean), "std": list(std)}


def test_image_files_and_arrays_are_made_the_size_and_channels_the_network_takes(tmp_path, capsys):
    """load_images (behind `gpuconv predict`) made every image 3x32x32, so the checkpoint of a
    network built for 28x28 grayscale images refused every image file and .npy array given."""
    import json

    from PIL import Image
    from gpuconv import cli
    from gpuconv.inference import load_images
    x, _, path = _checkpoint(tmp_path, {"input_dim": (1, 28, 28)}, (33.0,), (78.0,))
    Image.fromarray(x[0, 0]).save(tmp_path / "digit.png")  # grayscale, the network's size
    Image.fromarray(np.repeat(np.kron(x[1, 0], np.ones((2, 2), np.uint8))[..., None], 3, axis=2)).save(
        tmp_path / "big.png")  # RGB, twice the size: shrunk by area averaging
    np.save(tmp_path / "digits.npy", x[:3].transpose(0, 2, 3, 1))  # (N, H, W, C)
    capsys.readouterr()
    rc = cli.main(["predict", "--checkpoint", str(path), "--json", str(tmp_path / "digit.png"),
                   str(tmp_path / "digits.npy")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert len(json.loads(out)["predictions"]) == 4
    model = gpuconv.load_model(path)
    assert model.input_dim == (1, 28, 28)
    images, sources = load_images([tmp_path / "digit.png", tmp_path / "big.png", tmp_path / "digits.npy"],
                                  model.input_dim)
    assert images.shape == (5, 1, 28, 28) and len(sources) == 5
    np.testing.assert_array_equal(images, x[[0, 1, 0, 1, 2]])
    with pytest.raises(ValueError, match=r"1 \(grayscale\) or 3 \(RGB\) channels, and the model takes 4.*\.npy"):
        load_images([tmp_path / "digit.png"], (4, 28, 28))
    assert load_images([tmp_path / "digit.png"])[0].shape == (1, 3, 32, 32)  # CIFAR-10's without a model


def test_image_paths_with_a_tilde_are_in_the_home_directory(tmp_path, monkeypatch):
    """load_images(['~/digits.npy']) from Python said the file did not exist: '~' was taken literally."""
    from gpuconv.inference import load_images
    monkeypatch.setenv("HOME", str(tmp_path))
    np.save(tmp_path / "digits.npy", np.zeros((2, 32, 32, 3), np.uint8))
    images, sources = load_images(["~/digits.npy"])
    assert images.shape == (2, 3, 32, 32) and sources[0] == (str(tmp_path / "digits.npy"), 0)


def test_one_image_path_is_one_image(tmp_path):
    """load_images("cat.png") iterated the string's characters and said '/' was a directory."""
    from PIL import Image
    from gpuconv.inference import load_images
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(x).save(tmp_path / "cat.png")
    for path in (str(tmp_path / "cat.png"), tmp_path / "cat.png"):
        images, sources = load_images(path)
        np.testing.assert_array_equal(images, x.transpose(2, 0, 1)[None])
        assert sources == [(str(tmp_path / "cat.png"), 0)]


@pytest.mark.parametrize("shape, input_dim, match", [
    # a grayscale batch was reported as the (1, 2, 32, 32) it had been reshaped to
    ((2, 32, 32), (3, 32, 32), r"got \(2, 32, 32\) \(a 3-d array is one image\).*np\.repeat\(images\[:, None\], 3, axis=1\)"),
    ((2, 28, 28), (1, 28, 28), r"got \(2, 28, 28\): .* images\[:, None\]"),
    ((2, 1, 32, 32), (3, 32, 32), r"got \(2, 1, 32, 32\): for grayscale .*np\.repeat\(images, 3, axis=1\)"),
    ((2, 32, 32, 1), (3, 32, 32), r"np\.repeat\(images, 3, axis=3\)"),
    ((2, 32, 32, 4), (3, 32, 32), r"got \(2, 32, 32, 4\): for RGBA .*images\[\.\.\., :3\]"),
    ((2, 4, 32, 32), (3, 32, 32), r"images\[:, :3\]"),
    ((2, 5, 32, 32), (3, 32, 32), r"got \(2, 5, 32, 32\)$"),
])
def test_images_of_other_channels_are_refused_with_the_fix(shape, input_dim, match):
    """Grayscale and RGBA arrays were refused without saying how to make RGB ones."""
    from gpuconv.inference import as_nchw
    with pytest.raises(ValueError, match=match):
        as_nchw(np.zeros(shape, np.uint8), input_dim)


def test_precision_auto_is_resolved_for_the_models_device(tmp_path):
    """`gpuconv predict --precision auto` resolves 'auto' for its device; model.predict(...,
    precision='auto'), TrainedModel(precision='auto') and evaluate(precision='auto') refused it
    with an error that listed 'auto' among the choices."""
    x, y, path = _checkpoint(tmp_path, {"input_dim": (3, 32, 32)}, (120.0,) * 3, (60.0,) * 3, n=8)
    model = gpuconv.load_model(path)
    np.testing.assert_array_equal(model.predict(x, precision="auto"), model.predict(x, precision="fp32"))
    direct = gpuconv.inference.TrainedModel(model.net, model.classes, model.mean, model.std, precision="auto")
    assert direct.precision == "fp32"  # on the CPU
    loader = DeviceLoader(x, y, 8, shuffle=False, mean=model.mean, std=model.std)
    auto, fp32 = evaluate(model.net, loader, precision="auto"), evaluate(model.net, loader, precision="fp32")
    assert (auto["loss"], auto["accuracy"]) == (fp32["loss"], fp32["accuracy"])
    with pytest.raises(ValueError, match="precision='fp8'"):
        model.predict(x, precision="fp8")


class _OnGpu(np.ndarray):
    """A NumPy array the backend takes for a CuPy one (with cupy faked below)."""

    def get(self):
        return np.asarray(self).view(np.ndarray).copy()


def test_images_on_the_gpu_are_predicted(monkeypatch):
    """TrainedModel.logits takes CuPy images (as_nchw keeps them on their device): the loader it
    builds got NumPy labels beside them, a DeviceMismatchError naming arrays the caller never gave.
    Here a NumPy subclass stands for CuPy, the model on the host (the images are read back once)."""
    import contextlib
    import types

    from gpuconv import backend as B
    net = models.three_layer_convnet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=8)
    model = gpuconv.inference.TrainedModel(net, [str(i) for i in range(10)], (120.0,) * 3, (60.0,) * 3,
                                           input_size=(8, 8))
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    want = model.logits(x)
    fake = types.SimpleNamespace(ndarray=_OnGpu, zeros=lambda *a, **k: np.zeros(*a, **k).view(_OnGpu),
                                 ascontiguousarray=lambda a: np.ascontiguousarray(a).view(_OnGpu))
    monkeypatch.setattr(B, "cupy_module", lambda: fake)
    monkeypatch.setattr(B, "array_device_context", lambda arrays: contextlib.nullcontext())
    monkeypatch.setattr(B, "device_id", lambda a: 0)
    got = model.logits(x.view(_OnGpu))
    assert type(got) is np.ndarray
    np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not gpuconv.backend.cuda_available(), reason=f"no GPU: {gpuconv.backend.cuda_status()}")
def test_cupy_images_are_predicted_on_the_gpu():
    """A model on the GPU predicts CuPy uint8 images as it predicts their host copy."""
    from gpuconv import backend as B
    cp = B.cupy_module()
    with gpuconv.default_device("cuda"):
        net = models.three_layer_convnet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=8)
        model = gpuconv.inference.TrainedModel(net, [str(i) for i in range(10)], (120.0,) * 3, (60.0,) * 3,
                                               input_size=(8, 8))
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    want = model.logits(x)
    got = model.logits(cp.asarray(x))
    assert type(got) is np.ndarray
    np.testing.assert_array_equal(got, want)


def test_a_network_without_input_dim_predicts_the_size_it_trained_on(tmp_path):
    """airbench94 takes no input_dim, and 28x28 grayscale images pool to 1x1 in it as 32x32 ones do:
    Trainer.fit records the training images' size, and load_model predicts at it (it took 32x32 and
    refused every 28x28 image)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, 12).astype(np.uint8)
    kwargs = {"widths": [4, 4, 4], "in_channels": 1}
    net = models.airbench94(**kwargs)
    trainer = Trainer(net, SGD(net.parameters(), lr=0.01), out_dir=tmp_path, progress=False,
                      config={"constructor": "airbench94", "kwargs": kwargs})
    loader = DeviceLoader(x, y, 5, shuffle=False, mean=(30.0,), std=(70.0,))
    trainer.fit(loader, 1)
    model = gpuconv.load_model(tmp_path / "checkpoint.npz")
    assert model.input_dim == (1, 28, 28)
    acc = evaluate(model.net, loader)["accuracy"]
    assert float((model.predict_classes(x) == y).mean()) == acc
    assert float((model.predict_classes(x.transpose(0, 2, 3, 1)) == y).mean()) == acc  # (N, H, W, 1) too


def test_a_grayscale_network_of_ten_classes_names_them_by_index(tmp_path):
    """CIFAR-10's names are the fallback of a 10-class RGB network: an MNIST-like one's digits were
    labelled 'airplane', 'automobile', ... by load_model and `gpuconv predict`."""
    _, _, path = _checkpoint(tmp_path, {"input_dim": (1, 28, 28)}, (33.0,), (78.0,))
    assert gpuconv.load_model(path).classes == [str(i) for i in range(10)]


def test_calling_the_model_while_another_thread_predicts_in_bf16_waits_for_it():
    """A bf16 predict puts bfloat16 compute copies on the shared parameters for its block; a
    float32 ``model(x)`` from another thread meanwhile met them (a dtype error). It waits its turn
    and gets the float32 answer."""
    import threading
    from gpuconv import amp
    from gpuconv.inference import TrainedModel
    with gpuconv.default_device("cpu"):
        net = models.seed_net()
        model = TrainedModel(net, [str(i) for i in range(10)], precision="bf16")
        x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
        want = model(x)
        inside, done, got = threading.Event(), threading.Event(), []

        def predicting():  # as predict holds its autocast block
            with amp.autocast(net, "bf16", backward=False):
                inside.set()
                done.wait(0.2)

        def calling():
            try:
                got.append(model(x))
            except Exception as exc:  # noqa: BLE001  (reported below)
                got.append(exc)
            done.set()
        other = threading.Thread(target=predicting)
        other.start()
        inside.wait(5)
        calling()
        other.join()
    assert len(got) == 1 and not isinstance(got[0], Exception), got
    np.testing.assert_array_equal(got[0], want)
