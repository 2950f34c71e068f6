"""Gradient inversion attacks: an honest-but-curious server reconstructs a client's training
images (and labels) from one uploaded gradient or weight delta.

=======================  ======================================================================
``dlg``                  Deep Leakage from Gradients (Zhu et al. 2019): L2 matching, L-BFGS,
                         soft labels learned jointly
``idlg``                 iDLG (Zhao et al. 2020): DLG with labels read off the last layer
``inverting_gradients``  Inverting Gradients (Geiping et al. 2020): cosine matching + TV,
                         signed Adam, boxed, restarts
``fedavg_inversion``     multi-step FedAvg inversion (Geiping et al. 2020, Sec. 5): the client's
                         local SGD simulated, unrolled and differentiated, on the candidate
``sme``                  Surrogate Model Extension (Zhu, Yao & Blaschko 2023): a FedAvg delta
                         inverted at a learnable surrogate between the sent and returned weights
``gifd``                 GIFD-style search through a diffusion prior (Fang et al. 2023)
``hyperfl_inversion``    adaptive attack on HyperFL (Guo et al. 2025): the private embedding read
                         off the hypernetwork's first layer, then searched with the head and images
=======================  ======================================================================

Every attack has ``reconstruct(obs, num_images, labels, seed)`` and the batched
``reconstruct_many(observations, num_images, labels, seeds)``, which solves K targets as one
``torch.func.vmap``-ed computation with the same numbers as K separate calls
(:class:`~.common.BatchedInversion`; the Adam-based ones share :class:`~.common.AdamInversion`).
"""
from .common import InversionResult, observed_gradient
from .dlg import DeepLeakage, ImprovedDeepLeakage
from .generative import GenerativeInversion
from .hyperfl import HyperFLInversion, recover_embedding
from .inverting_gradients import InvertingGradients
from .labels import idlg_labels, label_counts, recover_labels
from .prior import DDIMSampler, DiffusionPrior, PriorConfig, load_or_train_prior
from .multistep import FedAvgInversion, LocalTraining, simulate_local_training
from .sme import SurrogateModelExtension

__all__ = [
    "DDIMSampler",
    "DeepLeakage",
    "DiffusionPrior",
    "FedAvgInversion",
    "GenerativeInversion",
    "HyperFLInversion",
    "ImprovedDeepLeakage",
    "InversionResult",
    "InvertingGradients",
    "LocalTraining",
    "PriorConfig",
    "SurrogateModelExtension",
    "idlg_labels",
    "label_counts",
    "load_or_train_prior",
    "observed_gradient",
    "recover_embedding",
    "recover_labels",
    "simulate_local_training",
]
