"""Client algorithms with their server halves (what a client computes and sends, how the server
applies the aggregate): ``fedsgd`` and ``fedavg`` (McMahan et al. 2017), and the bundles that
change what is transmitted, ``frl`` (Federated Rank Learning, Mozaffari et al., USENIX Security
2023) and ``hyperfl`` (Guo et al., AAAI 2025).  The supermask and hypernetwork models and the
ranking kernels they need live beside them."""
from . import fedavg, frl  # noqa: F401  (registers the algorithms)
