"""``gpuconv.optim.lr_scheduler``: the schedules of PyTorch's ``torch.optim.lr_scheduler`` that
gpuconv has, under PyTorch's names (:mod:`gpuconv.optim` holds them and gpuconv's own):
``from gpuconv.optim import lr_scheduler; lr_scheduler.StepLR(opt, 30)`` and ``from
gpuconv.optim.lr_scheduler import OneCycleLR`` port as written. gpuconv's own schedules (CosineLR,
TriangularLR) stay in gpuconv.optim, where PyTorch has no such names."""
from .schedules import CosineAnnealingLR, LambdaLR, MultiStepLR, OneCycleLR, StepLR

__all__ = ["StepLR", "MultiStepLR", "CosineAnnealingLR", "LambdaLR", "OneCycleLR"]
