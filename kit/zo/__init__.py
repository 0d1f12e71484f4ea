"""Zeroth-order core: seeded perturbations z(seed) and the two-point estimator. Pure PyTorch, no Lightning."""

from kit.zo.estimator import ZOStep, zo_step
from kit.zo.perturb import Perturber

__all__ = ["Perturber", "ZOStep", "zo_step"]
