"""Which way is "better" for each metric, and what each metric means.

Reports are read from the defender's (evaluator's) side: a run is better when the model is more
useful, the attacks succeed less and the run costs less.  So a reconstruction PSNR is *lower is
better* (a worse reconstruction means more privacy), while LPIPS (a perceptual distance) is
*higher is better*.  Pareto fronts and the arrows shown next to metric names come from here.
"""
from __future__ import annotations

from fnmatch import fnmatchcase

#: metric name (or ``fnmatch`` glob) -> True when a higher value is better for the defender.
HIGHER_IS_BETTER: dict[str, bool] = {
    "utility.accuracy": True,
    "utility.loss": False,
    "utility.baseline_accuracy": True,
    "inversion.psnr": False,
    "inversion.ssim": False,
    "inversion.lpips": True,
    "inversion.label_accuracy": False,
    "inversion.psnr_random_guess": False,
    "membership.auc": False,
    "membership.tpr_*": False,
    "privacy.epsilon": False,
    "privacy.delta": False,
    "privacy.epsilon_per_round": False,
    "privacy.epsilon_lower_bound": False,
    "privacy.epsilon_lower_bound_one_run": False,
    "poisoning.backdoor_success_rate": False,
    "poisoning.accuracy_drop": False,
    "poisoning.accuracy_drop_vs_undefended": False,
    "poisoning.detection_precision": True,
    "poisoning.detection_recall": True,
    "run.seconds": False,
    "membership.*.auc": False,
    "membership.*.tpr_*": False,
    "lora.aggregation_error": False,
    "run.upload_bytes": False,
    "dp.clipped_fraction": False,
}

#: one-line meanings shown in the summary tables of a report.
DESCRIPTIONS: dict[str, str] = {
    "utility.accuracy": "test accuracy of the final global model",
    "utility.loss": "test loss of the final global model",
    "utility.baseline_accuracy": "test accuracy of the same scenario without attackers (the accuracy-drop baseline)",
    "inversion.psnr": "peak signal-to-noise ratio of reconstructions vs. originals (dB)",
    "inversion.ssim": "structural similarity of reconstructions vs. originals",
    "inversion.lpips": "perceptual distance of reconstructions from originals",
    "inversion.label_accuracy": "fraction of victim labels the attacker recovered",
    "inversion.psnr_random_guess": "PSNR of a no-information guess (uniform noise) against the same originals: the baseline an attack must beat (dB)",
    "membership.auc": "area under the ROC curve of the membership attack (0.5 = guessing)",
    "membership.tpr_at_0.001_fpr": "true-positive rate of the membership attack at 0.1% false positives",
    "membership.tpr_at_0.01_fpr": "true-positive rate of the membership attack at 1% false positives",
    "privacy.epsilon": "differential-privacy budget spent (accountant upper bound)",
    "privacy.delta": "differential-privacy failure probability",
    "privacy.epsilon_per_round": "local-DP budget of one client's report in one round (ldp_update)",
    "privacy.epsilon_lower_bound": "empirical epsilon lower bound from the membership attack (Jagielski et al. 2020)",
    "privacy.epsilon_lower_bound_one_run": "empirical epsilon lower bound from the one-run canary audit (Steinke et al. 2023)",
    "poisoning.backdoor_success_rate": "fraction of triggered test inputs classified as the target",
    "poisoning.accuracy_drop": "clean accuracy lost to the poisoning attack",
    "poisoning.accuracy_drop_vs_undefended": "accuracy below the clean, undefended model's (what attack and defense cost together)",
    "poisoning.detection_precision": "precision of the server's malicious-client detection",
    "poisoning.detection_recall": "recall of the server's malicious-client detection",
    "run.seconds": "wall-clock time of the run (s)",
    "lora.aggregation_error": "largest per-round ||mean(B_k A_k) - mean(B_k) mean(A_k)||_F over the clients' LoRA factors",
    "run.upload_bytes": "bytes a client uploads per round (mean)",
    "dp.clipped_fraction": "fraction of per-sample gradients DP-SGD's clipping shrank (mean over client rounds)",
    "membership.aggregate.auc": "LiRA/RMIA AUC against the aggregate LoRA adapters",
    "membership.assembled.auc": "LiRA/RMIA AUC against the client model the server assembles from its uploads",
    "membership.oracle.auc": "LiRA/RMIA AUC against the true client model (upper bound)",
}

#: audited epsilon lower bounds (metric -> how it was obtained), shown beside the accounted
#: ``privacy.epsilon``; each holds with 95% confidence, at the accounted delta (1e-5 without DP).
AUDITED_EPSILONS: dict[str, str] = {
    "privacy.epsilon_lower_bound": "membership attack (Jagielski et al. 2020)",
    "privacy.epsilon_lower_bound_one_run": "one-run canaries (Steinke et al. 2023)",
}

#: what each attack family does, in one sentence, for the attack sections of a report.
FAMILY_BLURBS: dict[str, str] = {
    "inversion": "A curious server reconstructs a client's training inputs from the update it sent. "
    "Lower PSNR/SSIM and higher LPIPS mean better privacy.",
    "poisoning": "Malicious clients send crafted updates to implant a backdoor or degrade the model. "
    "A lower backdoor success rate and a smaller accuracy drop mean better robustness.",
    "membership": "An attacker guesses whether a record was in a client's training data. "
    "An AUC near 0.5 and low TPR at low FPR mean better privacy.",
    "audit": "An auditor inserts a random half of its canaries into a client's data and guesses which ones the "
    "final model saw. The right guesses give an epsilon lower bound that must stay below the accounted epsilon.",
}


#: units shown on axes and colour bars
UNITS: dict[str, str] = {"inversion.psnr": "dB", "inversion.psnr_random_guess": "dB", "run.seconds": "s"}

#: metric -> the no-information reference it is read against (drawn as a line beside it, never
#: plotted as a trade-off of its own)
REFERENCES: dict[str, str] = {"inversion.psnr": "inversion.psnr_random_guess"}
REFERENCE_LABELS: dict[str, str] = {"inversion.psnr_random_guess": "random guess"}


def with_unit(metric: str) -> str:
    """``inversion.psnr [dB]``; the bare name for a metric without a unit."""
    unit = UNITS.get(metric)
    return f"{metric} [{unit}]" if unit else metric


def known_direction(metric: str) -> bool | None:
    """True/False when the metric's better direction is known, None when it is not."""
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    for pattern, higher in HIGHER_IS_BETTER.items():
        if fnmatchcase(metric, pattern):
            return higher
    return None


def higher_is_better(metric: str) -> bool:
    """Better direction used for Pareto fronts; unknown metrics are assumed higher-is-better."""
    known = known_direction(metric)
    return True if known is None else known


def arrow(metric: str) -> str:
    """``↑`` or ``↓`` for the better direction, ``↑?`` when it is only assumed."""
    known = known_direction(metric)
    if known is None:
        return "↑?"
    return "↑" if known else "↓"


def direction_phrase(metric: str) -> str:
    """Human wording of the better direction, flagging assumptions (used in axis labels, captions)."""
    known = known_direction(metric)
    if known is None:
        return "direction unknown, assumed higher is better"
    return "higher is better" if known else "lower is better"


def qualified(metric: str, family: str | None) -> str:
    """Dotted name for a metric an attack reported bare (``psnr`` in an inversion attack -> ``inversion.psnr``)."""
    if "." in metric or not family:
        return metric
    return f"{family}.{metric}"
