"""Drop-in APIs of other code bases, running on gpuconv.ops.

``gpuconv.compat.cs231n``: the CS231n assignment's layer functions, update rules, gradient
checks, ``ThreeLayerConvNet``, ``Solver`` and ``load_CIFAR10``.
"""
