"""A training step captured once as a CUDA graph and replayed: no Python, no launches per step.

A step of the CIFAR networks in bf16 is some 70-90 gpuconv kernel launches, plus CuPy's own
elementwise operations between them, which a GPU runs faster than Python can submit them (benchmarks/profile_step.py measures both), so the GPU waits on
the host. The step is already device-resident (no readback, no synchronization, a memory pool
that stops growing), which is what CUDA stream capture needs: the whole step is recorded once
into a graph, and each later step is a handful of launches: two copies of the batch into the
graph's input buffers, one fill per parameter group writing its learning rate, one per dropout
layer writing its mask key, and the graph.

    step = StepGraph.for_optimizer(lambda x, y: amp.training_step(model, opt, x, y, "bf16"), opt)
    loss, logits = step(x, y)    # step 1 runs eagerly; step 2 is captured, then every step replays

What a replay does not do is run Python, so everything a step decides on the host is frozen at
the capture: the caller keeps per-step values on the device (the learning rates: ``before``
writes them, outside the graph, before every step; ``opt.lr_written_by_owner`` keeps the
optimizer from writing them inside it; a graph of :meth:`StepGraph.for_optimizer` writes each
training dropout layer's next mask key as well, drawn from the layer's own generator, which the
layer's forward then reads on the device: the masks of the eager steps; fp16's loss scale and
its overflow skip are decided on the device, the scaler updating its arrays in place), and calls :meth:`StepGraph.reset` whenever the step's
structure changes (an epoch's callback): the next call runs eagerly and captures again. A graph
of :meth:`StepGraph.for_optimizer` is given :meth:`StepGraph.release` instead, before the change
(a parameter frozen or thawed, a hyperparameter), which it refuses while it holds them; its next
call captures anew. A batch of another shape or layout does that by itself, as does another
choice of kernel variants (``kernels.set_variant``, autotuning turned on or off, a table loaded:
:func:`gpuconv.kernels.choices`) or of the precision mode. The
Trainer refuses what a graph would silently freeze, when built and at each epoch's start:
optimizers other than SGD, Muon, Adam and AdamW (and a Chain of them; Adam's step count lives on the device,
incremented in place by the step); and while the graph holds the optimizer and the model (from its first call until
:meth:`StepGraph.release`), a change to a number a kernel takes by value (a hyperparameter, batch
norm's momentum and eps, Conv2d's and ConvTranspose2d's geometry (stride, padding, dilation,
groups, output_padding), ChannelShuffle's groups, Narrow's slice, Scale's factor, LPPool2d's norm_type, LeakyReLU's
negative_slope, dropout's rate, the Trainer's label smoothing), to which parameters train (``requires_grad``), to the layers themselves (one appended,
replaced or set as an attribute) or the optimizer's groups (``add_param_group``),
or a state loaded into them (``load_state_dict``, the Trainer's ``load_checkpoint``) or the model
moved or cast (``to()``, ``astype()``): every replay reads and writes the arrays of its capture.

Memory: the captured step allocates from a pool of its own, kept with the graph, so that no
array outside the graph is ever given memory the graph writes into; the blocks CuPy's default
pool caches for no array (the eager step's) are released first, so the two pools do not add
up. Arrays allocated before the capture (parameters, optimizer state, the input buffers) are the
graph's fixed inputs; the outputs returned are the graph's own arrays, rewritten by every replay
(copy what must outlive the next step). The graph's pool lives as long as the StepGraph: a reset
(every graphed epoch's start) and the StepGraph's end hand its cached blocks back to the GPU, as
does each capture (the arrays of the capture before, a gradient, freed since). A pool merely
dropped would keep them: since CuPy 14.1 a pool's cached blocks and their arena hold one another,
out of reach of the pool and of the garbage collector, so each capture's step would stay
allocated for the rest of the process. A capture that finds the GPU full raises CuPy's
OutOfMemoryError: the pool's own answer, freeing its cached blocks and trying again, would free
blocks the kernels captured before write into.

On 'sim' and the CPU there are no graphs: the same calls run the step every time, through the
same input buffers and the same ``before`` and key writes (so the simulator tests what the graph
path relies on: a replay that missed a learning-rate or a key write would show).
"""
from __future__ import annotations

import weakref

from . import backend, kernels, layout

__all__ = ["StepGraph", "REPLAYED_WAY_OUT"]

_CUDA_ERROR_MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation (CuPy's runtime module names it to Cython alone)

# What an error refusing a change to a value a captured step took by value says after "cannot change while".
REPLAYED_WAY_OUT = ("a captured training step (a CUDA graph, gpuconv.graphs) replays it with the value it was "
                    "captured with; set it before training or in the Trainer's epoch_start (a new capture "
                    "follows), or train without --cuda-graph (a StepGraph of one's own: release() it first)")


class StepGraph:
    """``fn(x, y)`` (device arrays in, a tuple of device arrays out) as a replayed CUDA graph."""

    def __init__(self, fn, before=None):
        self.fn, self.before = fn, before
        self.optimizer = None    # for_optimizer's: its learning rates written by this graph while in use
        self.model = None        # for_optimizer's: its layers' numbers held with the optimizer
        self._dropouts = []      # for_optimizer's: the model's dropout layers, their keys written while held
        self.captures = 0        # graphs captured so far (a test and a log can see re-captures)
        self.replays = 0
        self._pool = None        # the captures' memory pool (CuPy's), made at the first capture
        self._pool_gpus = set()  # the GPUs it allocated on
        self.reset()

    @classmethod
    def for_optimizer(cls, fn, optimizer, model=None):
        """The graph of a step ``fn`` that updates with ``optimizer`` (one whose per-step learning
        rates live on the device, ``device_lrs``: SGD, Muon, Adam, AdamW, a Chain of them): from the graph's
        first call on, the optimizer no longer writes them inside the step (nor takes another
        hyperparameter), the graph writes them before each call. The layers of ``model`` are held
        with it: a number their kernels take by value (batch norm's momentum and eps, the convolutions'
        geometry, Scale's factor, LPPool2d's norm_type, LeakyReLU's negative_slope) is refused a change
        until :meth:`release`. Its dropout layers
        read their mask keys from the device meanwhile, each written before every call with the
        next key of the layer's own generator (:meth:`gpuconv.layers.Dropout.write_key`), so the
        masks are those of the eager steps."""
        graph = cls(fn, before=optimizer.write_lrs)
        graph.optimizer, graph.model = optimizer, model
        return graph

    def _write_keys(self, xp):
        """After ``before``, each held training dropout layer's next mask key, written into its
        array of ``xp`` (the batch's) by a launched fill: no transfer, outside the graph."""
        for layer in self._dropouts:
            if layer.training and layer.p > 0:
                layer.write_key(xp)

    @property
    def holds(self):
        """Whether the graph holds its optimizer (and model) now: between its first call and :meth:`release`."""
        return self.optimizer is not None and self.optimizer.lr_written_by_owner

    def _hold_model(self, held):
        if self.model is not None:
            from .layers import Dropout
            self._dropouts = [m for m in self.model.modules() if isinstance(m, Dropout)] if held else []
            for layer in self.model.modules():
                layer._held_by_graph = held
                if isinstance(layer, Dropout):
                    layer.key_on_device(held)  # (its keys written by _write_keys while held)
            for p in self.model.parameters():  # which of them train is the step's structure
                p._held_by_graph = held

    def release(self):
        """Give the optimizer and the model back: its step writes its learning rates again and their
        hyperparameters may change; the next call takes them again and captures anew. The trainer
        releases before each epoch's callback and at the end of every fit, so an optimizer and a
        model outlive their graph intact."""
        if self.optimizer is not None:
            self.optimizer.lr_written_by_owner = False
            self._hold_model(False)

    def reset(self):
        """Drop the graph: the next call runs eagerly, the one after captures anew. The memory its
        capture allocated and no array holds now goes back to the GPU."""
        self._key = self._graph = self._outputs = self._inputs = None
        self._eager_done = False
        if self._pool is not None:
            _free_blocks(backend.cupy_module().cuda, self._pool, self._pool_gpus)

    @staticmethod
    def _signature(x, y):
        """What a capture is valid for: the batch's shapes, dtypes, layouts and GPU, and the host's
        choice of kernels (a replay keeps the variants of its capture)."""
        return (tuple((a.shape, str(a.dtype), a.strides, backend.device_id(a) if backend.is_cupy_array(a) else None)
                      for a in (x, y)), kernels.choices())

    def __call__(self, x, y):
        if self.optimizer is not None and not self.optimizer.lr_written_by_owner:  # released since
            self.reset()
            self.optimizer.lr_written_by_owner = True
            self._hold_model(True)
        key = self._signature(x, y)
        if key != self._key:
            self.reset()
            self._key = key
        # The batch's GPU current (a no-op on the host): CuPy makes the input buffers, the capture's
        # stream and the learning rates' writes on the current device, whatever the batch's.
        with backend.array_device_context((x,)):
            return self._step(x, y)

    def _step(self, x, y):
        if self.before is not None:
            self.before()
        if self._dropouts:
            self._write_keys(backend.get_array_module(x))
        if not self._eager_done:  # the first step: the optimizer's state, the kernels' modules, the pools
            self._eager_done = True
            return self.fn(x, y)
        if self._inputs is None:
            xp = backend.get_array_module(x)
            self._inputs = tuple(layout.empty_like(a) if getattr(a, "ndim", 0) == 4 else xp.empty_like(a)
                                 for a in (x, y))
        for buf, a in zip(self._inputs, (x, y)):
            backend.get_array_module(a).copyto(buf, a)
        if not backend.is_cupy_array(x):
            return self.fn(*self._inputs)  # no graphs on the host: the step itself, on the same buffers
        if self._graph is None:
            self._capture()
        self._graph.launch(stream=backend.cupy_module().cuda.get_current_stream())
        self.replays += 1
        return self._outputs

    def _capture(self):
        cp = backend.cupy_module()
        caller = cp.cuda.get_current_stream()
        stream = cp.cuda.Stream(non_blocking=True)
        stream.wait_event(caller.record())  # the input copies and the learning rates come first
        # The eager step's freed blocks, cached by CuPy's default pool, go back to the device: the
        # capture allocates the step anew from a pool of its own, which would otherwise add a
        # second step's memory to the peak that eager training reached. Only blocks no array holds
        # are freed (the graph's fixed inputs are live arrays); on the batch's device.
        cp.get_default_memory_pool().free_all_blocks()
        if self._pool is None:
            self._pool = cp.cuda.MemoryPool(_capture_malloc(cp.cuda))
            # (the pool's blocks go back when this StepGraph goes; at the process's exit the driver takes them)
            weakref.finalize(self, _free_blocks, cp.cuda, self._pool, self._pool_gpus).atexit = False
        else:  # what an earlier capture's arrays left since its reset (a gradient the eager step replaced)
            _free_blocks(cp.cuda, self._pool, self._pool_gpus)
        self._pool_gpus.add(cp.cuda.Device().id)
        _capturing.append(self)
        try:
            with cp.cuda.using_allocator(self._pool.malloc), stream:
                stream.begin_capture()
                try:
                    outputs = self.fn(*self._inputs)
                finally:
                    graph = stream.end_capture()
        finally:
            _capturing.pop()
            while not _capturing and _deferred:  # what another graph's end left to free meanwhile
                _free_blocks(*_deferred.pop())
        self._graph, self._outputs = graph, outputs
        self.captures += 1


# The StepGraphs capturing now (in this process), and the frees of graphs that went meanwhile: a
# graph collected by the garbage collector during another's capture (a Trainer and its graph
# refer to one another, so the collector, which may run at any allocation, ends them) would
# cudaFree inside that capture, which CUDA may refuse (the capture then invalid) or take as a
# synchronization; its blocks go back once no capture runs.
_capturing: list = []
_deferred: list = []


def _free_blocks(cuda, pool, gpus):
    """Hand the blocks ``pool`` (a ``cuda.MemoryPool``, ``cuda`` CuPy's) caches for no array back to
    each of ``gpus`` (CuPy frees those of the current device's pool alone); during a capture, once
    it has ended."""
    if _capturing:
        _deferred.append((cuda, pool, gpus))
        return
    for gpu in sorted(gpus):
        with cuda.Device(gpu):
            pool.free_all_blocks()


def _capture_malloc(cuda):
    """The allocator under a capture's pool (``cuda``: CuPy's): cudaMalloc, and where the GPU is
    full CuPy's OutOfMemoryError at once. CuPy's pool answers a failed cudaMalloc by freeing the
    blocks it caches and trying again (cupy/cuda/memory.pyx, SingleDeviceMemoryPool._try_malloc):
    during a capture those are blocks that kernels captured before it write into, and a
    cudaFree there either invalidates the capture (its error then hides the out-of-memory) or
    gives them back to the GPU, where arrays outside the graph would get them and every replay
    would overwrite them. An out-of-memory error passes through the pool untouched."""
    def malloc(size):
        try:
            return cuda.MemoryPointer(cuda.Memory(size), 0)
        except cuda.runtime.CUDARuntimeError as exc:
            if exc.status != _CUDA_ERROR_MEMORY_ALLOCATION:
                raise
        raise cuda.memory.OutOfMemoryError(size, -1)
    return malloc
