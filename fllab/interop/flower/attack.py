"""Server-position attacks on a capture of Flower traffic (:mod:`.capture`).

``attack_capture(capture, attack, ...)`` plays the curious server of the captured run: it rebuilds
each upload's :class:`fllab.types.UpdateObservation` from the capture alone (the weights sent, the
record received, the client's ``num-examples``, and the model and public hyper-parameters in the
capture's ``meta`` -- ``model``, ``input_shape``, ``num_classes`` and the fllab ``algorithm``
spec -- or given by the caller) and runs one fllab attack or detector on it:

* gradient inversion (``inverting_gradients``, ``dlg``, ...): the uploads of ``attack.round``
  (0-based), ``attack.targets`` of them in captured order (or the ``clients`` given);
* update-based membership inference (``update_cosine``, ``update_loss``, ...): the uploads of
  ``attack.target_clients`` (node ids or partition ids, as captured) over the captured rounds,
  scored on the ``candidates`` records the caller supplies;
* poisoning detection: a detecting aggregator (one exposing ``last_flagged``, e.g. ``mudhog``)
  run over every captured round; the flagged node ids per round.

Ground truth is optional.  With it -- the victims' batches (inversion), the candidates'
membership (membership), the malicious node ids (detection) -- the outcome carries the usual
scores (PSNR/SSIM/LPIPS/label accuracy; AUC and TPR at low FPR; detection precision/recall);
without it, the reconstructions, membership scores or flagged ids alone.
"""
from __future__ import annotations

import io
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ...errors import CapabilityError, ConfigError
from ...registry import AGGREGATORS, ALGORITHMS, ATTACKS, MODELS, load_plugins, split_spec
from ...seeding import derive_seed
from ...types import ModelHandle, PublicHyperParams, TensorData, UpdateKind, UpdateObservation
from .capture import Capture, read_capture

KIND_OF_UPLOAD = {"weights": UpdateKind.DELTA, "delta": UpdateKind.DELTA, "gradient": UpdateKind.GRADIENT}


def model_from_meta(meta: Mapping[str, Any]) -> ModelHandle:
    """The :class:`ModelHandle` the capture's ``meta`` names (``model``, ``input_shape``,
    ``num_classes``); ConfigError naming the missing key."""
    for key in ("model", "input_shape", "num_classes"):
        if key not in meta:
            raise ConfigError(f"the capture's meta has no {key!r}: pass the model to attack_capture (or --model)", f"meta.{key}")
    builder = MODELS.build(meta["model"], "meta.model")
    shape, classes = tuple(int(s) for s in meta["input_shape"]), int(meta["num_classes"])
    return ModelHandle(build=lambda: builder.build(shape, classes), input_shape=shape, num_classes=classes)


def hyper_for(capture: Capture, num_examples: int, overrides: Mapping[str, Any] | None) -> PublicHyperParams:
    """Public hyper-parameters of one upload: those the capture's ``meta.algorithm`` (a fllab
    algorithm spec; default ``fedsgd`` for gradient uploads, ``fedavg`` otherwise) announces for a
    client of ``num_examples`` examples, with ``overrides`` (field -> value) on top."""
    default = "fedsgd" if capture.upload == "gradient" else "fedavg"
    algorithm = ALGORITHMS.build(capture.meta.get("algorithm", default), "meta.algorithm")
    hyper = algorithm.public_hyper(num_examples)
    fields = set(PublicHyperParams.__dataclass_fields__)
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise ConfigError(f"unknown hyper-parameter {unknown[0]!r}; allowed: {', '.join(sorted(fields))}", "hyper")
    return replace(hyper, **dict(overrides or {}))


def observation(capture: Capture, r: int, pos: int, model: ModelHandle, hyper: Mapping[str, Any] | None) -> UpdateObservation:
    cr = capture.round(r)
    return UpdateObservation(
        round=r, client_id=cr.client_ids[pos], model=model, global_params=cr.sent.clone(), update=cr.updates[pos].clone(),
        kind=KIND_OF_UPLOAD[capture.upload], hyper=hyper_for(capture, cr.num_examples[pos], hyper),
    )


def seed_id(cr: Any, pos: int) -> int:
    """The id an attack seeds its randomness with for upload ``pos``: fllab's client id when the
    reply reported one (:class:`.FllabClient` does), else the node id -- so that an attack on the
    capture of a fllab client reproduces the engine's attack on the same client and seed."""
    from .client import CLIENT_ID_KEY

    return int(cr.metrics[pos].get(CLIENT_ID_KEY, cr.client_ids[pos]))


def _positions(ids: Sequence[int], wanted: Sequence[int] | None, k: int) -> list[int]:
    if wanted is None:
        return list(range(min(k, len(ids))))
    missing = [c for c in wanted if c not in ids]
    if missing:
        raise ConfigError(f"client {missing[0]} did not upload in this round (clients {list(ids)})", "clients")
    return [list(ids).index(c) for c in wanted]


# ----------------------------------------------------------------------------- families
def invert(attack: Any, capture: Capture, model: ModelHandle, *, hyper=None, clients=None, truth=None, seed: int = 0, **_: Any):
    """Reconstruct the chosen uploads of round ``attack.params.round``; score them when ``truth``
    (client id -> :class:`TensorData` of the batch it used) is given."""
    from ...training.drivers.inversion import score_inversion
    from ...training.drivers import AttackOutcome
    from ...report.images import image_grid_png

    p = attack.params
    cr = capture.round(p.round)
    picks = _positions(cr.client_ids, clients, p.targets)
    obs = [observation(capture, p.round, i, model, hyper) for i in picks]
    num_images = obs[0].hyper.batch_size
    truths = None
    if truth is not None:
        missing = [o.client_id for o in obs if o.client_id not in truth]
        if missing:
            raise ConfigError(f"no ground truth for client {missing[0]}", "truth")
        truths = [truth[o.client_id] for o in obs]
    labels = [t.y for t in truths] if (truths is not None and p.labels == "known") else None
    if p.labels == "known" and labels is None:
        raise ConfigError(f"{attack.registry_name}.labels = known needs the ground truth", "truth")
    seeds = [derive_seed(seed, "attack", attack.registry_name, seed_id(cr, i)) for i in picks]
    recs = attack.reconstruct_many(obs, num_images, labels, seeds)
    if truths is not None:
        return score_inversion(attack, obs, recs, truths)
    files, rows = {}, []
    for o, rec in zip(obs, recs):
        files[f"client{o.client_id}_reconstruction.png"] = image_grid_png([rec.x.detach().cpu()], ["reconstruction"])
        buf = io.BytesIO()
        np.savez(buf, x=rec.x.detach().cpu().numpy(), y=rec.y.cpu().numpy())
        files[f"client{o.client_id}_reconstruction.npz"] = buf.getvalue()
        rows.append({"client": o.client_id, "round": o.round, "images": int(rec.x.shape[0])})
    return AttackOutcome("inversion", {}, rows, files)


def infer_membership(attack: Any, capture: Capture, model: ModelHandle, *, hyper=None, candidates: TensorData | None = None,
                     is_member: torch.Tensor | None = None, seed: int = 0, **_: Any):
    """Score ``candidates`` against the captured uploads of ``attack.params.target_clients``."""
    from ...metrics.membership import membership_metrics
    from ...rundir import SCORES, scores_csv
    from ...training.drivers import AttackOutcome

    p = attack.params
    if p.position != "server":
        raise CapabilityError(f"{attack.registry_name} attacks from the {p.position} position; a capture holds the server's view", "attack")
    if candidates is None:
        raise ConfigError(f"{attack.registry_name} needs the candidate records to score (candidates)", "candidates")
    scores = []
    for cid in p.target_clients:
        observed = [observation(capture, cr.round, cr.client_ids.index(cid), model, hyper) for cr in capture.rounds
                    if cid in cr.client_ids and (p.rounds is None or cr.round in p.rounds)]
        if not observed:
            raise ConfigError(f"client {cid} never uploaded in the captured rounds", "target_clients")
        scores.append(attack.score_rounds(observed, candidates, derive_seed(seed, "attack", attack.registry_name)))
    score = torch.stack(scores).mean(0).detach().double().cpu()  # the same candidates, each target's view averaged
    metrics = membership_metrics(score, is_member) if is_member is not None else {}
    files = {SCORES: scores_csv(score, is_member if is_member is not None else torch.zeros(len(score), dtype=torch.bool))}
    return AttackOutcome("membership", metrics, [{"candidates": len(score), "targets": list(p.target_clients)}], files)


def detect(detector: Any, capture: Capture, *, malicious: Sequence[int] | None = None, **_: Any):
    """Run a detecting aggregator over every captured round; with the malicious node ids, score
    it as the engine does (pooled precision and recall)."""
    from ...training.drivers import AttackOutcome
    from ...training.server import DetectionTally

    tally, rows = DetectionTally(), []
    for cr in capture.rounds:
        try:
            detector.check(len(cr.client_ids))
        except ValueError as err:
            raise ConfigError(f"{err} (round {cr.round} has {len(cr.client_ids)} uploads)", "detector") from None
        detector(cr.updates, torch.tensor([float(n) for n in cr.num_examples]), client_ids=list(cr.client_ids))
        flagged = detector.last_flagged
        rows.append({"round": cr.round, "flagged": None if flagged is None else [int(c) for c in flagged]})
        if flagged is not None and malicious is not None:
            tally.add({int(c) for c in flagged}, set(cr.client_ids) & {int(m) for m in malicious})
    return AttackOutcome("detection", tally.metrics() if malicious is not None else {}, rows, {})


FAMILIES: dict[str, Callable[..., Any]] = {"inversion": invert, "membership": infer_membership}


def attack_capture(capture: Capture | str, attack: Any, *, model: ModelHandle | None = None, **kwargs: Any):
    """Run one server-position attack (an attack spec) or detector (a detecting aggregator spec)
    on a capture (a :class:`Capture` or its path).  Returns a
    :class:`fllab.training.drivers.AttackOutcome` (``metrics`` empty without ground truth).

    Keywords: ``hyper`` (public hyper-parameter overrides), ``seed``; inversion: ``clients``,
    ``truth`` ({client id: TensorData}); membership: ``candidates`` (TensorData), ``is_member``;
    detection: ``malicious`` (node ids).  ConfigError (one line) for anything that does not fit.
    """
    load_plugins()
    cap = capture if isinstance(capture, Capture) else read_capture(capture)
    name, _ = split_spec(attack, "attack")
    if name in AGGREGATORS:
        detector = AGGREGATORS.build(attack, "attack")
        if not hasattr(detector, "last_flagged"):
            raise ConfigError(f"aggregator {name} does not detect (no last_flagged); detectors: mudhog", "attack")
        return detect(detector, cap, **kwargs)
    built = ATTACKS.build(attack, "attack")
    run = FAMILIES.get(built.family)
    if run is None:
        raise CapabilityError(f"{name} is a {built.family} attack; a capture supports {', '.join(FAMILIES)} attacks and detecting aggregators", "attack")
    kind = KIND_OF_UPLOAD[cap.upload].value
    if kind not in built.needs:
        raise CapabilityError(f"{name} needs a {' or '.join(sorted(built.needs))} update; the capture holds a {kind}", "attack")
    if not cap.rounds:
        raise ConfigError("the capture holds no round", "capture")
    return run(built, cap, model if model is not None else model_from_meta(cap.meta), **kwargs)
