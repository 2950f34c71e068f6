"""Server-side aggregation rules: registered classes over pure tensor kernels (:mod:`.kernels`).

Protocol shared by every aggregator in ``fllab.registry.AGGREGATORS``::

    agg = AGGREGATORS.build({"name": "krum", "f": 10})
    agg.check(n)                                   # ValueError if the rule cannot work with n updates
    out = agg(updates, weights=None, client_ids=None)   # (n, d) -> (d,)

* ``updates``: the round's flattened client updates stacked as an (n, d) tensor;
* ``weights``: optional (n,) client weights (dataset sizes); only ``mean``, ``geometric_median``
  and ``norm_clipping`` use them, the other robust rules ignore them (a Byzantine client could
  inflate its weight);
* ``client_ids``: optional length-n sequence of the clients' ids.  Stateless rules ignore it;
  stateful rules key their per-client state on it (``mudhog``, and ``monna``'s trusted client);
  ``centered_clipping`` keeps a global state (the previous aggregate) and needs no ids.  Without
  ids, row positions stand for ids.
* ``check(n)`` raises ``ValueError`` with one line naming the parameter and the allowed range,
  e.g. ``krum needs n > 2f + 2 (f=10, n=20): lower f to at most 8``; the engine calls it before
  training.
* A detector (``mudhog``) also exposes ``last_flagged: tuple[int, ...] | None`` after each call:
  the ids it excluded as malicious, None while it has no verdict yet (warm-up).  The engine
  scores it as ``poisoning.detection_precision`` / ``poisoning.detection_recall``.

Pre-aggregators (``nnm``, ``bucketing``, ``arc``) compose with any aggregator through their
``then`` parameter: ``{name: nnm, f: 10, then: {name: krum, f: 10}}``.  They hand the inner
aggregator a buffer they reuse every round, so an aggregator must not keep a reference to its
``updates`` after returning (copy what you keep).

Each rule declares, for ``fllab describe`` (:mod:`fllab.description`), its ``threat_model`` in one
sentence and, when it has an ``f``, its ``feasibility`` rule on (n, f) (:class:`.base.Feasibility`,
the same object its ``check(n)`` enforces); an ``f`` a scenario leaves unset is the number of
malicious clients its poisoning attacks declare (:mod:`.byzantine`, ByzFL's default).

Rows whose squared norm is not finite (NaN, infinity, overflow) are dropped before a robust rule
runs, and the rule's ``f`` shrinks by their number (see :mod:`.base`).
"""
from . import basic, byzantine, mudhog, preaggregators, robust  # noqa: F401
