"""CS231n's ``ThreeLayerConvNet`` (``classifiers/cnn.py``) and ``Solver``.

Same signatures, defaults, dicts and histories as the assignment. Arrays stay on their device:
a model built with ``device='cuda'`` keeps its params as CuPy arrays, the Solver uploads the
data set to that device once, when it is constructed, and a training step then reads nothing
back (the losses are read back in one batch at each print and at each epoch's end).

Minibatches and accuracy subsets are drawn as the assignment draws them, ``np.random.choice``
from NumPy's global generator, on every device: a device run uploads its indices (``batch_size``
int64s a step) and, after the same ``np.random.seed``, takes the same minibatches as a CPU run.
(CuPy's ``cupy.random.choice`` would need cuRAND, which gpuconv's CUDA installs do not have.)
"""
from __future__ import annotations

import pickle
import types

import numpy as np

from ...backend import Device, device_of, get_array_module, get_default_device, is_cupy_array, to_device
from ...models._build import _input_dim
from ._basic import affine_backward, affine_forward, softmax_loss
from ._call import check_arrays
from . import optim
from ._optim import adam, rmsprop, sgd, sgd_momentum
from .layer_utils import affine_relu_backward, affine_relu_forward, conv_relu_pool_backward_to, conv_relu_pool_forward


UPDATE_RULES = {"sgd": sgd, "sgd_momentum": sgd_momentum, "rmsprop": rmsprop, "adam": adam}


# ----------------------------------------------------------------------------- the model
class ThreeLayerConvNet:
    """conv - relu - 2x2 max pool - affine - relu - affine - softmax, on (N, C, H, W) inputs.

    Weights are drawn from ``np.random.randn`` (so ``np.random.seed`` reproduces the assignment's
    numbers) and scaled by ``weight_scale``; biases are zero. ``device`` (an addition: default the
    gpuconv default device, normally 'cpu') is where the params live: 'cuda' makes them CuPy
    arrays, and ``loss`` then expects CuPy inputs."""

    def __init__(self, input_dim=(3, 32, 32), num_filters=32, filter_size=7, hidden_dim=100,
                 num_classes=10, weight_scale=1e-3, reg=0.0, dtype=np.float32, *, device=None):
        if filter_size % 2 != 1:
            raise ValueError(f"filter_size must be odd so that padding (filter_size - 1) // 2 keeps the "
                             f"spatial size, got {filter_size}")
        c, h, w = _input_dim(input_dim)
        self.reg = reg
        self.dtype = dtype
        self.device = Device(device) if device is not None else get_default_device()
        shapes = {"W1": (num_filters, c, filter_size, filter_size), "W2": (num_filters * (h // 2) * (w // 2),
                  hidden_dim), "W3": (hidden_dim, num_classes)}
        self.params = {}
        for i, (name, shape) in enumerate(shapes.items(), start=1):
            self.params[name] = weight_scale * np.random.randn(*shape)
            self.params[f"b{i}"] = np.zeros(shape[0] if i == 1 else shape[1])
        upload = str(self.device) if self.device.is_cuda else "cpu"
        for k, v in self.params.items():
            self.params[k] = to_device(v.astype(dtype), upload)

    def loss(self, X, y=None):
        """Scores (N, num_classes) when ``y`` is None, else ``(loss, grads)`` with grads keyed as params."""
        p = self.params
        conv_param = {"stride": 1, "pad": (p["W1"].shape[2] - 1) // 2}
        pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
        X = X.astype(self.dtype, copy=False)  # in the model's dtype (the assignment's own model would promote)
        h1, cache1 = conv_relu_pool_forward(X, p["W1"], p["b1"], conv_param, pool_param)
        h2, cache2 = affine_relu_forward(h1, p["W2"], p["b2"])
        scores, cache3 = affine_forward(h2, p["W3"], p["b3"])
        if y is None:
            return scores
        loss, dscores = softmax_loss(scores, y)
        grads = {}
        dh2, grads["W3"], grads["b3"] = affine_backward(dscores, cache3)
        dh1, grads["W2"], grads["b2"] = affine_relu_backward(dh2, cache2)
        # Without the image gradient, which nothing uses: the op skips a third of the first
        # convolution's backward (3->32 7x7, batch 64: 41 -> 24 ms on one core).
        _, grads["W1"], grads["b1"] = conv_relu_pool_backward_to(dh1, cache1, need_dx=False)
        if self.reg:
            for name in ("W1", "W2", "W3"):
                loss = loss + 0.5 * self.reg * (p[name] * p[name]).sum()
                grads[name] = grads[name] + self.reg * p[name]
        return _host_float(loss), grads


def _host_float(v):
    return v if is_cupy_array(v) else float(v)


def _choice(n, size, like):
    """``np.random.choice(n, size)``, the assignment's draw from NumPy's global generator, on the
    device of ``like`` (uploaded for a CuPy array: a host-to-device copy, never a readback)."""
    idx = np.random.choice(n, size)
    return to_device(idx, device_of(like)) if is_cupy_array(like) else idx


# ----------------------------------------------------------------------------- the solver
def _check_data(data):
    """The arrays of ``data`` sampled by index together: one label per example, a training example
    at least (a minibatch indexes past the end of a shorter y_train, and NumPy's sampler refuses an
    empty X_train in its own words)."""
    for key in ("X_train", "y_train", "X_val", "y_val"):
        check_arrays(**{f"data[{key!r}]": data[key]})
    for split in ("train", "val"):
        x, y = data[f"X_{split}"], data[f"y_{split}"]
        if y.ndim != 1 or x.ndim < 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"data['y_{split}'] of shape {tuple(y.shape)} must hold one label per example of "
                             f"data['X_{split}'] (shape {tuple(x.shape)}): a 1-D array of {len(x) if x.ndim else 0}")
    if data["X_train"].shape[0] == 0:
        raise ValueError("data['X_train'] holds no examples: the Solver samples its minibatches from it")


class Solver:
    """Minibatch training of a CS231n-style model (``model.params`` dict, ``model.loss(X, y)``).

    ``data`` holds ``X_train``, ``y_train``, ``X_val``, ``y_val``. ``update_rule`` is the name of a
    function in the edition's ``optim`` (``sgd``, ``sgd_momentum``, ``rmsprop``, ``adam``, or one
    added to that module), or a callable with their signature;
    ``optim_config`` is copied per parameter; ``lr_decay`` multiplies each learning rate after
    every epoch. After ``train()``: ``loss_history`` (floats), ``train_acc_history``,
    ``val_acc_history``, ``best_val_acc``, ``best_params``, and ``model.params`` set to the best
    params (kept as they are if validation accuracy never rose above 0).

    Data on the host while the model's params are CuPy arrays are uploaded once, here; data on
    the GPU for a host model are refused (that would be a hidden copy back)."""

    UPDATE_RULES = UPDATE_RULES   # the edition's rules by name (the 2017 Solver has its own)
    OPTIM = optim                 # the edition's cs231n.optim: update_rule may name any function in it

    def __init__(self, model, data, update_rule="sgd", optim_config=None, lr_decay=1.0, batch_size=100,
                 num_epochs=10, num_train_samples=1000, num_val_samples=None, checkpoint_name=None,
                 print_every=10, verbose=True, **kwargs):
        self.model = model
        missing = [k for k in ("X_train", "y_train", "X_val", "y_val") if k not in data]
        if missing:
            raise KeyError(f"data is missing {missing}: pass a dict with X_train, y_train, X_val and y_val")
        _check_data(data)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1 (examples per minibatch), got {batch_size!r}")
        if kwargs:  # the assignment's error, for the assignment's **kwargs
            raise ValueError("Unrecognized arguments " + ", ".join(f'"{k}"' for k in kwargs) + ": the Solver takes "
                             "update_rule, optim_config, lr_decay, batch_size, num_epochs, num_train_samples, "
                             "num_val_samples, checkpoint_name, print_every and verbose (a learning rate goes in "
                             "optim_config={'learning_rate': ...})")
        on_gpu = any(is_cupy_array(v) for v in model.params.values())
        for key in ("X_train", "y_train", "X_val", "y_val"):
            arr = data[key]
            if on_gpu and not is_cupy_array(arr):
                arr = to_device(arr, device_of(next(iter(model.params.values()))))
            elif not on_gpu and is_cupy_array(arr):
                raise TypeError(f"data[{key!r}] is a cupy array but the model's params are numpy arrays: build "
                                f"the model on the GPU (device='cuda') or pass data[{key!r}].get()")
            setattr(self, key, arr)
        if isinstance(update_rule, str):
            update_rule = self._rule_named(update_rule)
        self.update_rule = update_rule
        self.optim_config = dict(optim_config or {})
        self.lr_decay = lr_decay
        self.batch_size = batch_size
        self.num_epochs = num_epochs
        self.num_train_samples = num_train_samples
        self.num_val_samples = num_val_samples
        self.checkpoint_name = checkpoint_name
        self.print_every = print_every
        self.verbose = verbose
        self._reset()

    def _rule_named(self, name):
        """The edition's rule of that name, else a function of the edition's ``optim`` module (the
        assignment takes any function of its ``cs231n.optim``, one a student added there too)."""
        if name in self.UPDATE_RULES:
            return self.UPDATE_RULES[name]
        rules = {n: f for n, f in vars(self.OPTIM).items()
                 if not n.startswith("_") and callable(f) and not isinstance(f, (type, types.ModuleType))}
        if name not in rules:
            known = sorted(set(self.UPDATE_RULES) | set(rules))
            raise ValueError(f"update_rule {name!r} is unknown: use one of {known} (the functions of "
                             f"{self.OPTIM.__name__}) or a callable rule(w, dw, config) -> (next_w, config)")
        return rules[name]

    def _reset(self):
        self.epoch = 0
        self.best_val_acc = 0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self._pending_losses = []
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}

    def _step(self):
        mask = _choice(self.X_train.shape[0], self.batch_size, self.X_train)
        loss, grads = self.model.loss(self.X_train[mask], self.y_train[mask])
        self._record_loss(loss)
        for p, w in self.model.params.items():
            next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p])
            self.model.params[p] = next_w
            self.optim_configs[p] = next_config

    def _record_loss(self, loss):
        if is_cupy_array(loss):
            self._pending_losses.append(loss)
        else:
            self.loss_history.append(float(loss))

    def _flush_losses(self):
        # One device-to-host copy for all losses since the last flush, not one per step.
        if self._pending_losses:
            xp = get_array_module(self._pending_losses[0])
            self.loss_history.extend(float(v) for v in xp.stack(self._pending_losses).get())
            self._pending_losses = []

    def _save_checkpoint(self):
        if self.checkpoint_name is None:
            return
        checkpoint = {"model": self.model, "update_rule": self.update_rule, "lr_decay": self.lr_decay,
                      "optim_config": self.optim_config, "batch_size": self.batch_size,
                      "num_train_samples": self.num_train_samples, "num_val_samples": self.num_val_samples,
                      "epoch": self.epoch, "loss_history": self.loss_history,
                      "train_acc_history": self.train_acc_history, "val_acc_history": self.val_acc_history}
        filename = f"{self.checkpoint_name}_epoch_{self.epoch}.pkl"
        if self.verbose:
            print(f'Saving checkpoint to "{filename}"')
        with open(filename, "wb") as f:
            pickle.dump(checkpoint, f)

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        """Accuracy (a float) of the model on X, y, on a random subset of ``num_samples`` if given."""
        xp = get_array_module(X, y)
        n = X.shape[0]
        if num_samples is not None and n > num_samples:
            mask = _choice(n, num_samples, X)
            n, X, y = num_samples, X[mask], y[mask]
        if n == 0:
            raise ValueError("check_accuracy got 0 examples: pass a non-empty X (e.g. a validation split)")
        y_pred = [xp.argmax(self.model.loss(X[i:i + batch_size]), axis=1) for i in range(0, n, batch_size)]
        return float((xp.concatenate(y_pred) == y).mean())

    def train(self):
        """Run ``num_epochs`` epochs of ``max(N // batch_size, 1)`` steps each."""
        num_train = self.X_train.shape[0]
        iterations_per_epoch = max(num_train // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch
        for t in range(num_iterations):
            self._step()
            if self.verbose and t % self.print_every == 0:
                self._flush_losses()
                print(f"(Iteration {t + 1} / {num_iterations}) loss: {self.loss_history[-1]:f}")
            epoch_end = (t + 1) % iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
                for config in self.optim_configs.values():
                    config["learning_rate"] *= self.lr_decay
            if t == 0 or t == num_iterations - 1 or epoch_end:
                self._flush_losses()
                train_acc = self.check_accuracy(self.X_train, self.y_train, num_samples=self.num_train_samples)
                val_acc = self.check_accuracy(self.X_val, self.y_val, num_samples=self.num_val_samples)
                self.train_acc_history.append(train_acc)
                self.val_acc_history.append(val_acc)
                self._save_checkpoint()
                if self.verbose:
                    print(f"(Epoch {self.epoch} / {self.num_epochs}) train acc: {train_acc:f}; "
                          f"val_acc: {val_acc:f}")
                if val_acc > self.best_val_acc:
                    self.best_val_acc = val_acc
                    self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        self._flush_losses()
        if self.best_params:
            self.model.params = self.best_params
