"""Imports every built-in component module so that its ``register`` decorators run."""
from .data import datasets, partitions, samples  # noqa: F401
from . import models  # noqa: F401
from .training import executors  # noqa: F401
from .interop.flower import executor as flower_executor  # noqa: F401  (registers `flower` without importing flwr)
from .algorithms import fedavg  # noqa: F401
from .defenses import aggregators  # noqa: F401
from . import attacks  # noqa: F401
from .defenses import secure_aggregation  # noqa: F401
from .defenses import quantization, sketching, sparsification, update_noise  # noqa: F401
from .defenses import dp, ldp_update, rqm  # noqa: F401
from .algorithms import frl  # noqa: F401
from .attacks import rank  # noqa: F401
from .algorithms import hyperfl  # noqa: F401
from .algorithms import diff2  # noqa: F401
from .lora import algorithms as lora_algorithms, data as lora_data, membership as lora_membership  # noqa: F401
