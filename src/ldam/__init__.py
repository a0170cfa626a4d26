"""ldam: Langevin Dynamics Activation Maximization for PyTorch.

Sample the inputs that drive a neuron, ``x ~ p(x) ∝ exp((f(x) − Σ λ_i R_i(x)) / T)``,
with Langevin dynamics, and average the samples so the pixels that matter stand out.

    >>> res = ldam.sample(model, "fc3:0-9", input_shape=(1, 28, 28), regularizers=[ldam.L2(1.0)])
"""

from .burnin import AutoBurnIn, BurnIn, FixedBurnIn
from .callbacks import Callback, GifRecorder, ProgressBar
from .discriminator import ConvCritic, CriticTraining, Discriminator, MLPCritic, RealImages
from .device import resolve_device
from .energy import L2, Box, Energy, Regularizer, TotalVariation
from .errors import (
    CheckpointError,
    CriticWarning,
    DataError,
    DeviceError,
    DivergenceError,
    LdamError,
    NonFiniteActivationError,
    PrecisionNote,
    ShapeError,
    TargetError,
)
from .monitor import Monitor
from .results import Result
from .sampler import Sampler, StepInfo, sample
from .comparison import Comparison, UnitComparison, compare
from .parameterization import Generator, Parameterization, Spectral
from .samplers import HMC, MALA, PMALA, PSGLD, SGLD, Ascent, Method, Metropolis, Paper
from .schedules import CyclicAnnealing, PolynomialDecay
from .targets import Target, probe_layers, resolve
from .transforms import Jitter, Rotate, Scale, Transform

__version__ = "0.1.0"

__all__ = [
    "sample", "Sampler", "StepInfo", "Result", "Monitor", "compare", "Comparison", "UnitComparison",
    "Target", "resolve", "probe_layers",
    "Regularizer", "L2", "TotalVariation", "Box", "Energy",
    "Discriminator", "CriticTraining", "RealImages", "ConvCritic", "MLPCritic",
    "Method", "SGLD", "Metropolis", "MALA", "PMALA", "HMC", "PSGLD", "Paper", "Ascent",
    "Parameterization", "Spectral", "Generator", "Transform", "Jitter", "Scale", "Rotate",
    "PolynomialDecay", "CyclicAnnealing",
    "BurnIn", "FixedBurnIn", "AutoBurnIn",
    "Callback", "ProgressBar", "GifRecorder",
    "LdamError", "TargetError", "ShapeError", "DivergenceError", "NonFiniteActivationError",
    "DataError", "CheckpointError", "CriticWarning", "PrecisionNote", "DeviceError", "resolve_device",
]
