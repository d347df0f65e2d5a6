"""Assignment-style solutions of each edition (tests/cs231n_editions, plain NumPy student code)
run unchanged with gpuconv behind their layer modules, through ``redirect()``: every notebook
check passes, and every number equals the plain NumPy run's (float64: to ~1e-9; the float32
network's training curve: to 1e-4)."""
from __future__ import annotations

import contextlib
import pathlib
import shutil
import sys
import warnings

import numpy as np
import pytest

import gpuconv.compat.cs231n as G

HERE = pathlib.Path(__file__).parent / "cs231n_editions"
# An edition's files over those of the one it was changed from, and its edits to them: 2016's
# starter code is 2017's but for Adam's t, which starts from 0; 2025's is 2022's with the optim.py
# that assignment 2 ships written (in place; Adam's bias corrections in the step size).
BASES = {2016: (2017,), 2025: (2022,)}
EDITS = {2016: {"cs231n/optim.py": ("config.setdefault('t', 1)", "config.setdefault('t', 0)")}}


@contextlib.contextmanager
def student_package(tmp_path, year, redirect):
    """The edition's cs231n package importable as ``cs231n``, redirected to gpuconv or not."""
    root = tmp_path / f"e{year}-{'gpuconv' if redirect else 'numpy'}"
    shutil.copytree(HERE / "common", root)
    for layer in BASES.get(year, ()) + (year,):
        shutil.copytree(HERE / str(layer), root, dirs_exist_ok=True)
    for name, (old, new) in EDITS.get(year, {}).items():
        text = (root / name).read_text()
        assert text.count(old) == 1, f"{name}: the edit's text is not there once"
        (root / name).write_text(text.replace(old, new))
    saved = {k: v for k, v in sys.modules.items() if k == "cs231n" or k.startswith("cs231n.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(root))
    hook = G.redirect("cs231n", edition=year) if redirect else None
    try:
        import cs231n.checks
        yield cs231n.checks
    finally:
        if hook is not None:
            hook.remove()
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "cs231n" or k.startswith("cs231n.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """The assignment's data dict from the real subset, read by a student's own data_utils (which
    hard-codes 10,000 images per batch) with its batch reader pointed at gpuconv's, and a test_batch
    linked to data_batch_5 (the subset has none): the recipe the docs give."""
    from conftest import SUBSET as subset_dir
    assert (subset_dir / "data_batch_1").exists(), f"the CIFAR-10 subset is missing at {subset_dir}"
    root = tmp_path_factory.mktemp("cifar")
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]:
        (root / name).symlink_to(pathlib.Path(subset_dir) / name)
    (root / "test_batch").symlink_to(pathlib.Path(subset_dir) / "data_batch_5")
    with student_package(tmp_path_factory.mktemp("pkg"), 2019, redirect=False):
        import cs231n.data_utils as du
        with pytest.raises(ValueError, match="reshape"):
            du.load_CIFAR10(str(root))                     # 1,102 images do not reshape to 10,000
        du.load_CIFAR_batch = G.load_CIFAR_batch
        Xtr, ytr, Xte, yte = du.load_CIFAR10(str(root))
    assert Xtr.shape == (5170, 32, 32, 3) and Xte.shape == (1017, 32, 32, 3)
    mean = Xtr[:4000].mean(axis=0)
    chw = lambda a: (a - mean).transpose(0, 3, 1, 2).copy()  # noqa: E731
    return {"X_train": chw(Xtr[:4000]), "y_train": ytr[:4000], "X_val": chw(Xtr[4000:4100]), "y_val": ytr[4000:4100]}


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), value


def _run(checks, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"layers": checks.layer_checks(), "norm": checks.norm_checks(), "dropout": checks.dropout_checks(),
                "optim": checks.optim_checks(), "model": checks.model_checks(), "overfit": checks.overfit_checks(data)}


@pytest.mark.parametrize("year", [2016, 2017, 2019, 2022, 2025])
def test_edition_solutions_run_unchanged_on_gpuconv(year, tmp_path, cifar):
    with student_package(tmp_path, year, redirect=False) as checks:
        plain = _run(checks, cifar)
    with student_package(tmp_path, year, redirect=True) as checks:
        import cs231n.layer_utils
        import cs231n.layers
        import cs231n.solver
        # The layer modules are gpuconv's; the student's own Solver and helpers are still theirs.
        assert cs231n.layers.affine_forward.__module__.startswith("gpuconv.compat.cs231n")
        # (2016's starter has no conv - batch norm - ReLU sandwich: there it is a helper of the student's)
        assert cs231n.layer_utils.conv_bn_relu_forward.__module__.startswith(
            "cs231n.layer_utils" if year == 2016 else "gpuconv.compat.cs231n")
        assert cs231n.solver.Solver.__module__ == "cs231n.solver"
        import cs231n.optim                # the student's update rules too (they run on the host either way)
        assert cs231n.optim.adam.__module__ == "cs231n.optim"
        assert cs231n.layer_utils.affine_norm_relu_forward.__module__ == "cs231n.layer_utils"
        ours = _run(checks, cifar)

    # The notebooks' own thresholds hold on both runs: every gradient check ("err_*") passes.
    for run in (plain, ours):
        errors = {k: v for k, v in _flatten(run) if any(part.startswith("err_") for part in k.split("."))}
        # A conv bias before batch norm has gradient exactly 0 (the mean takes it away): its
        # "relative error" compares rounding noise with 0, so it is left out, as the notebook's is.
        layer_errors = {k: v for k, v in errors.items()
                        if not k.startswith("model.") and k != "layers.err_conv_bn_relu.2"}
        model_errors = {k: v for k, v in errors.items() if k.startswith("model.")}
        worst = max(layer_errors.items(), key=lambda kv: kv[1])
        assert len(layer_errors) > 20 and worst[1] < 1e-6, worst
        # Whole networks: the notebooks accept up to 1e-2 (ReLU kinks; biases before batch norm, whose
        # gradient is exactly 0).
        worst = max(model_errors.items(), key=lambda kv: kv[1])
        assert len(model_errors) > 5 and worst[1] < 1e-2, worst
        assert run["overfit"]["cnn_train_acc"][-1] >= 0.6 and run["overfit"]["fc_train_acc"][-1] >= 0.6
        for p in (0.25, 0.4, 0.7):
            x_mean, train_mean, test_mean, zeros = run["dropout"][f"p={p}"]
            dropped = p if year <= 2017 else 1 - p
            assert abs(zeros - dropped) < 0.01 and abs(train_mean - x_mean) < 0.1 and test_mean == x_mean
    assert plain["optim"]["adam_fresh_t"] == ours["optim"]["adam_fresh_t"] == (2 if year == 2017 else 1)
    assert ("err_ln" in ours["norm"] and "err_gn" in ours["norm"]) == (year >= 2019)

    # And every other number is the plain NumPy run's.
    mine, theirs = dict(_flatten(ours)), dict(_flatten(plain))
    assert mine.keys() == theirs.keys()
    for key, want in theirs.items():
        if any(part.startswith("err_") for part in key.split(".")):
            continue
        # The float32 network computes in float32 in both runs, with different summation orders.
        rtol, atol = (1e-4, 1e-6) if key.startswith("overfit.fc") else (1e-8, 1e-12)
        np.testing.assert_allclose(np.asarray(mine[key], dtype=float), np.asarray(want, dtype=float),
                                   rtol=rtol, atol=atol, err_msg=key)


def test_a_students_convnet_runs_on_the_device_unchanged(tmp_path):
    """The student's own classifiers/cnn.py (float32 weights, float64 images), redirected, under
    use_device('sim'): NumPy in and out, the kernels run, and loss and gradients equal the plain
    NumPy run's (the device computes in the promoted float64 too)."""
    from gpuconv import kernels

    def loss_and_grads():
        from cs231n.classifiers.cnn import ThreeLayerConvNet
        np.random.seed(1)
        model = ThreeLayerConvNet(input_dim=(3, 6, 6), num_filters=2, filter_size=3, hidden_dim=5, weight_scale=1e-1)
        X, y = np.random.randn(2, 3, 6, 6), np.array([3, 7])
        return model.loss(X, y)

    with student_package(tmp_path, 2019, redirect=False):
        want_loss, want = loss_and_grads()
    with student_package(tmp_path, 2019, redirect=True):
        with G.use_device("sim"), kernels.launch_log() as log:
            loss, grads = loss_and_grads()
    assert any(n.startswith("conv2d_forward") for n in log.names)
    assert type(loss) is type(want_loss) is np.float64 and abs(loss - want_loss) < 1e-12 * abs(want_loss)
    for k in want:
        assert type(grads[k]) is np.ndarray and grads[k].dtype == want[k].dtype == np.float64, k
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-9, atol=1e-15, err_msg=k)
