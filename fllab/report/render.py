"""Run report: ``build_report(run_dir)`` turns a run directory into ``report.md`` and ``report.html``.

Nothing is re-trained: every number and figure comes from the files the engine wrote (see
:mod:`fllab.rundir`).  Markdown links figures written to ``run_dir/figures/``; the HTML
embeds every image as a data URI and carries its own CSS, so it is one self-contained file.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plots
from .directions import AUDITED_EPSILONS, FAMILY_BLURBS
from .output import IMAGE_SUFFIXES, FigureRef, existing_figure, save_figure, slug, write_report
from ..rundir import ARTEFACTS, RECONSTRUCTION, ROUNDS, RunData, load_run
from .threat import parse_config, threat_summary
from ..io import read_jsonl
from .tables import Table, as_number, flatten, fmt, metrics_table, records_table

_FAMILY_ORDER = ["utility", "inversion", "membership", "poisoning", "privacy"]
_GOOD_STATUS = {"ok", "completed", "complete", "success", "succeeded", "finished", "done"}
_BAD_STATUS = {"failed", "failure", "error", "crashed"}


@dataclass
class AttackSection:
    """One attack's part of the report."""

    name: str
    family: str | None
    blurb: str
    metrics: Table | None
    table: Table | None
    figures: list[FigureRef] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return f"attack-{slug(self.name)}"


def status_class(status: str) -> str:
    """CSS class of the status badge: ``ok``, ``bad`` or ``warn`` (running, interrupted, unknown)."""
    lowered = status.lower()
    return "ok" if lowered in _GOOD_STATUS else "bad" if lowered in _BAD_STATUS else "warn"


def summary_table(metrics: dict[str, Any]) -> Table:
    """Summary metrics ordered by family (the part before the first dot): utility first, run cost last."""
    def rank(name: str) -> int:
        family = name.split(".", 1)[0]
        return _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else len(_FAMILY_ORDER) + (family == "run")

    return metrics_table({name: metrics[name] for name in sorted(metrics, key=rank)})


def rounds_table(rounds: list[dict[str, Any]]) -> Table:
    """Per-round records with the sampled client list shown as a count."""
    records = [{k: (len(v) if k == "clients" and isinstance(v, list) else v) for k, v in r.items()} for r in rounds]
    table = records_table(records)
    table.headers = ["clients sampled" if h == "clients" else h for h in table.headers]
    return table


def partition_section(partition: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Partition summary sentence, client x class table and figure."""
    clients = partition.get("clients") or []
    num_classes = int(partition.get("num_classes") or max((len(c.get("labels", [])) for c in clients), default=0))
    names = [str(n) for n in partition.get("class_names") or []]
    names = names if len(names) == num_classes else [str(c) for c in range(num_classes)]
    # extra per-client facts (e.g. "malicious" in poisoning runs), only where some client has one
    extras = list(dict.fromkeys(k for c in clients for k, v in c.items() if k not in ("client", "size", "labels") and v))
    records = []
    for i, client in enumerate(clients):
        labels = list(client.get("labels", []))
        record = {"client": client.get("client", i), "size": client.get("size", sum(labels))}
        record.update({key: client.get(key) for key in extras})
        record.update({names[c]: labels[c] if c < len(labels) else 0 for c in range(num_classes)})
        records.append(record)
    table = records_table(records)
    sizes = [r["size"] for r in records]
    present = [sum(1 for count in c.get("labels", []) if count) for c in clients]
    summary = (
        f"{len(clients)} clients over {num_classes} classes; client size min {fmt(min(sizes))}, "
        f"median {fmt(float(statistics.median(sizes)))}, max {fmt(max(sizes))}; "
        f"on average {fmt(statistics.fmean(present))} of {num_classes} classes per client."
    ) if clients else "No clients recorded."
    figure = None
    if clients and num_classes:
        figure = save_figure(
            run_dir, "partition", plots.partition_figure({**partition, "num_classes": num_classes}),
            "Data partition",
            "Top: examples per client, stacked by class. Bottom: share of each class within each client "
            "(darker = larger share); a non-IID partition shows as uneven columns."
            + (" Malicious clients have red labels." if any(c.get("malicious") for c in clients) else ""),
        )
    return {"summary": summary, "table": table, "figure": figure}


def _images(folder: Path) -> list[Path]:
    """Images directly in ``folder``, the reconstruction grid first, then by name."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda p: (p.name != RECONSTRUCTION, p.name))


def _attack_figures(run: RunData, name: str) -> list[FigureRef]:
    """Every image in ``artefacts/<name>/``, titled by ``figures.json`` where it names them."""
    listed = {f.rel: f for f in run.figures}
    figures = []
    for path in _images(run.path / ARTEFACTS / name):
        rel = path.relative_to(run.path).as_posix()
        if rel in listed:
            entry = listed[rel]
            figures.append(existing_figure(path, rel, entry.title, entry.caption))
        elif path.name == RECONSTRUCTION:
            figures.append(existing_figure(path, rel, f"{name}: reconstructions",
                                           "Originals beside the attacker's reconstructions."))
        else:
            figures.append(existing_figure(path, rel, f"{name}: {path.stem.replace('_', ' ')}"))
    return figures


def roc_figure(run: RunData, name: str) -> FigureRef | None:
    """Log-log ROC of the scores an attack saved (``artefacts/<name>/scores.csv``), if any."""
    scores = run.scores.get(name)
    if scores is None or scores.is_member.all() or not scores.is_member.any():
        return None
    png = plots.roc_figure([(name, scores.score, scores.is_member)], f"{name}: ROC (log-log)")
    return save_figure(run.path, f"roc-{name}", png, f"{name}: ROC curve",
                       "True- against false-positive rate over every threshold of the saved per-record scores, "
                       "both axes logarithmic (the low-FPR corner is what matters); the dotted diagonal is guessing.")


def score_histogram(run: RunData, name: str) -> FigureRef | None:
    """Histogram of the member and non-member scores an attack saved, if it saved both kinds."""
    scores = run.scores.get(name)
    if scores is None or scores.is_member.all() or not scores.is_member.any():
        return None
    png = plots.score_histogram_figure(scores.score, scores.is_member, f"{name}: score distributions")
    return save_figure(run.path, f"scores-{name}", png, f"{name}: member and non-member scores",
                       "Densities of the attack's per-record scores on shared bins: the further apart the two "
                       "histograms, the better the attack tells members from non-members; overlapping ones mean guessing.")


def privacy_section(run: RunData) -> dict[str, Any] | None:
    """The accounted epsilon beside every audited lower bound (per attack, from ``attacks.json``,
    else from the summary), with what the pair says about the run; None when there is neither."""
    metrics = run.metrics
    audits: list[tuple[str, str, Any]] = []  # (metric, source, value)
    for name, entry in run.attacks.items():
        found = entry.get("metrics") or {}
        audits += [(metric, name, found[metric]) for metric in AUDITED_EPSILONS if metric in found]
    if not audits:
        audits = [(metric, "summary", metrics[metric]) for metric in AUDITED_EPSILONS if metric in metrics]
    accounted = as_number(metrics.get("privacy.epsilon"))
    if accounted is None and not audits:
        return None
    rows = [{"epsilon": "accounted (upper bound)", "value": accounted if accounted is not None else float("inf"),
             "from": f"DP accountant at δ = {fmt(metrics.get('privacy.delta'))}" if accounted is not None
             else "no DP defense accounts for this run"}]
    rows += [{"epsilon": f"audited lower bound: {AUDITED_EPSILONS[metric]}", "value": value, "from": source}
             for metric, source, value in audits]
    best = max((as_number(v) for _, _, v in audits if as_number(v) is not None), default=None)
    if best is None:
        verdict = "No audit ran: the accounted epsilon is the only figure."
    elif accounted is None and best <= 0:
        verdict = ("Without DP accounting the guarantee is ε = ∞; the audits found no leakage they could prove "
                   "(lower bound 0), which is no evidence of privacy.")
    elif accounted is None:
        verdict = (f"Without DP accounting the guarantee is ε = ∞; the audits show the run leaks at least ε ≥ {fmt(best)} "
                   "(95% confidence).")
    elif best > accounted:
        verdict = (f"An audited lower bound ({fmt(best)}) exceeds the accounted epsilon ({fmt(accounted)}): the accounting "
                   "does not describe what ran, or the audit's 5% chance of error struck.")
    else:
        verdict = (f"The run's true epsilon lies between the best audited lower bound {fmt(best)} and the accounted "
                   f"{fmt(accounted)}; the gap is what the accountant may over-estimate or the audits miss.")
    return {"table": records_table(rows), "verdict": verdict}


#: summary metrics a poisoning attack's section shows (the attack acts in training, so its results
#: are the run's): the clean accuracy, the no-attack twin's, the drop, the backdoor and detection.
POISONING_METRICS = ("utility.accuracy", "utility.baseline_accuracy", "poisoning.accuracy_drop",
                     "poisoning.backdoor_success_rate", "poisoning.detection_precision", "poisoning.detection_recall")


def poisoning_section(run: RunData, name: str, params: dict[str, Any], malicious: list[str]) -> AttackSection:
    """A poisoning attack's section: its parameters, which clients it controlled, and what it did
    to the model (the run's poisoning metrics beside the no-attack twin's accuracy)."""
    metrics = {m: run.metrics[m] for m in POISONING_METRICS if m in run.metrics}
    metrics.update({m: v for m, v in run.metrics.items() if m.startswith("poisoning.") and m not in metrics})
    rows = [{"parameter": k, "value": v} for k, v in params.items()]
    if malicious:
        rows.append({"parameter": "malicious clients", "value": ", ".join(malicious)})
    return AttackSection(
        name=name, family="poisoning", blurb=FAMILY_BLURBS["poisoning"],
        metrics=metrics_table(metrics, "poisoning") if metrics else None,
        table=records_table(rows) if rows else None,
    )


def attack_sections(run: RunData, threat: dict[str, Any] | None = None) -> list[AttackSection]:
    """Poisoning attacks of the config (their results are the run's metrics), attacks from
    ``attacks.json``, and any attack that only left images in ``artefacts/<name>/``."""
    names = list(run.attacks)
    artefacts = run.path / ARTEFACTS
    if artefacts.is_dir():
        names += sorted(d.name for d in artefacts.iterdir() if d.name not in run.attacks and _images(d))
    sections = []
    for name, family, params in threat["attacks"] if threat else []:
        if name in run.attacks or family != "poisoning":
            continue
        sections.append(poisoning_section(run, name, params, threat["malicious"]))
    for name in names:
        entry = run.attacks.get(name) or {}
        family = entry.get("family")
        metrics = entry.get("metrics") or {}
        rows = [r for r in entry.get("table") or [] if isinstance(r, dict)]
        sections.append(AttackSection(
            name=name,
            family=family,
            blurb=FAMILY_BLURBS.get(family or "", ""),
            metrics=metrics_table(metrics, family) if metrics else None,
            table=records_table(rows) if rows else None,
            figures=[f for f in (roc_figure(run, name), score_histogram(run, name)) if f is not None]
            + _attack_figures(run, name),
        ))
    return sections


def _meta(run: RunData) -> list[tuple[str, str]]:
    meta = [("seed", fmt(run.summary.get("seed")))]
    if run.rounds:
        meta.append(("rounds", fmt(len(run.rounds))))
    if run.partition and run.partition.get("clients"):
        meta.append(("clients", fmt(len(run.partition["clients"]))))
    if "run.seconds" in run.metrics:
        meta.append(("duration", f"{fmt(run.metrics['run.seconds'])} s"))
    if run.env.get("device"):
        meta.append(("device", fmt(run.env["device"])))
    return meta


def baseline_link(run: RunData) -> dict[str, str] | None:
    """Where the no-attack twin's results are, relative to this run (``summary.json``'s
    ``baseline``, written by the runner for ``evaluation.baseline``): its directory, and the file
    the HTML and Markdown reports link to (the twin's own report when it has one, its
    ``summary.json`` otherwise: twins are trained without reports).  None when there is no twin or
    the path is not a plain relative one."""
    raw = run.summary.get("baseline")
    if not isinstance(raw, str) or not raw or raw.startswith(("/", "\\")) or ":" in raw:
        return None
    if any(p in ("", ".") for p in raw.split("/")) or not (run.path / raw / "summary.json").is_file():
        return None
    has = {kind: (run.path / raw / f"report.{kind}").is_file() for kind in ("html", "md")}
    return {"dir": raw, **{kind: f"{raw}/{f'report.{kind}' if has[kind] else 'summary.json'}" for kind in has}}


def cell_title(run: RunData) -> str | None:
    """``<sweep> · k=v, ... · seed s`` for a sweep cell (``<sweep>/cells/<id>/``, listed in the
    sweep's ``cells.json``); None for a run that is no sweep cell."""
    listing = run.path.parent.parent / "cells.json"
    if run.path.parent.name != "cells" or not listing.is_file():
        return None
    try:
        cells = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = next((c for c in cells if isinstance(c, dict) and c.get("cell") == run.path.name), None)
    if entry is None:
        return None
    values = ", ".join(f"{k}={fmt(v)}" for k, v in (entry.get("values") or {}).items())
    return " · ".join(part for part in (run.name, values, f"seed {entry.get('seed')}") if part)


def report_context(run: RunData) -> dict[str, Any]:
    """Everything the run templates show; writes the generated figures as a side effect."""
    threat = threat_summary(parse_config(run.config_text), run.attacks, run.partition)
    baseline = baseline_link(run)
    reference = read_jsonl(run.path / baseline["dir"] / ROUNDS) if baseline else []
    curves_png = plots.curves_figure(run.rounds, reference=reference, reference_label="no attack (twin)")
    curves = None if curves_png is None else save_figure(
        run.path, "curves", curves_png, "Training curves",
        "Accuracy points appear only on rounds that evaluated the global model."
        + (" The dashed line is the same scenario and seed without attackers." if reference else ""))
    attacks = attack_sections(run, threat)
    shown = {f.rel for a in attacks for f in a.figures}
    other_figures = [existing_figure(f.path, f.rel, f.title, f.caption) for f in run.figures if f.rel not in shown]
    partition = partition_section(run.partition, run.path) if run.partition else None
    privacy = privacy_section(run)
    toc = [("summary", "Summary")]
    toc += [("privacy", "Privacy: accounted vs audited")] if privacy else []
    toc += [("training", "Training")] if run.rounds else []
    toc += [("partition", "Data partition")] if partition else []
    toc += [(a.anchor, f"Attack: {a.name}") for a in attacks]
    toc += [("figures", "Other figures")] if other_figures else []
    toc += [("artefacts", "Artefacts")] if run.artefact_files else []
    toc += [("configuration", "Configuration")] if run.config_text is not None else []
    toc += [("environment", "Environment")] if run.env else []
    status = str(run.summary.get("status") or "unknown")
    return {
        "title": cell_title(run) or run.name,
        "threat": threat,
        "status": status,
        "status_class": status_class(status),
        "meta": _meta(run),
        "toc": toc,
        "summary": summary_table(run.metrics) if run.metrics else None,
        "baseline": baseline,
        "privacy": privacy,
        "curves": curves,
        "rounds": rounds_table(run.rounds) if run.rounds else None,
        "partition": partition,
        "attacks": attacks,
        "other_figures": other_figures,
        "artefacts": run.artefact_files,
        "config_text": run.config_text,
        "env": records_table([{"key": k, "value": v} for k, v in flatten(run.env).items()]) if run.env else None,
    }


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (and ``figures/*.png``) into ``run_dir``; return both paths."""
    run = load_run(run_dir)
    return write_report(run.path, "run", report_context(run))
