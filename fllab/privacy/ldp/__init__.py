"""Local differential privacy: frequency oracles, numeric mechanisms and the LDP auditor.

* :mod:`.oracles` -- GRR, SS, SUE, OUE, BLH, OLH, THE, SHE (pure) and AGRR, GM, AGM
  (approximate), vectorised, each with its unbiased frequency estimator (registry ``ORACLES``).
* :mod:`.numeric` -- per-coordinate mechanisms for values in [-1, 1] (Duchi et al.; the
  piecewise mechanism of Wang et al.) used by the ``ldp_update`` client defense.
* :mod:`.audit` / :mod:`.attacks` / :mod:`.bounds` -- LDP-Auditor (Arcolezi & Gambs 2024) with
  the paper's attacks and optimal tests; :func:`audit_blackbox` for any randomizer callable.
* :mod:`.grid` -- ``fllab audit-ldp``: a scenario of mechanisms x epsilons x domain sizes.
"""
from .attacks import ATTACKS, TESTS, distinguishing_test
from .audit import AuditResult, audit_mechanism
from .blackbox import audit_blackbox
from .checks import LDPArgumentError
from .numeric import NUMERIC, duchi, piecewise
from .oracles import ORACLES, FrequencyOracle, make_oracle

__all__ = [
    "ATTACKS",
    "AuditResult",
    "FrequencyOracle",
    "LDPArgumentError",
    "NUMERIC",
    "ORACLES",
    "TESTS",
    "audit_blackbox",
    "audit_mechanism",
    "distinguishing_test",
    "duchi",
    "make_oracle",
    "piecewise",
]
