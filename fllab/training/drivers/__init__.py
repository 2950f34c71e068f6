"""Drivers: the trusted code that puts each attack family to work from its position
(:mod:`.base` holds what they share).  :data:`DRIVERS` maps a family to its driver; an attack of
a family without one is refused when it registers (:data:`fllab.hooks.FAMILY_HOOKS`)."""
from .base import AttackOutcome, Driver, DriverContext, FinalState, RoundView, Truth, Upload
from .inversion import InversionDriver
from .membership import CanaryAuditDriver, MembershipDriver
from .poisoning import PoisoningDriver

DRIVERS: dict[str, type] = {
    "poisoning": PoisoningDriver,
    "inversion": InversionDriver,
    "membership": MembershipDriver,
    "audit": CanaryAuditDriver,
}

__all__ = [
    "AttackOutcome", "CanaryAuditDriver", "DRIVERS", "Driver", "DriverContext", "FinalState", "InversionDriver",
    "MembershipDriver", "PoisoningDriver", "RoundView", "Truth", "Upload",
]
