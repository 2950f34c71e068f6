"""fllab's client-side update defenses as Flower client mods.

``defense_mod(spec)`` turns a registered defense with ``transform(update, gen)`` (``clip_noise``,
``topk``, ``quantize``, ``sign``, ``sketch``, ``rqm``, ``dp_fedavg``'s client clipping) into a
Flower mod: ``ClientApp(mods=[defense_mod("topk")])``.  On a training message the mod lets the
ClientApp train, reads the reply's record as fllab's flat update (``reply - received`` for a
``weights`` upload, :mod:`.arrays`), applies the defense, and writes the result back in the same
keys, shapes and form.  Other messages pass through.

Randomness is fllab's: the generator of client ``c`` in round ``r`` (``c`` the node's
``partition-id`` when its node config has one, else its node id; ``r = server-round - 1``) is
seeded with ``derive_seed(derive_seed(seed, "client", c, r), "defense", name)``, the seed the
engine gives the same defense of the same client in a scenario with root seed ``seed``.

Refusals: a defense that does not transform uploads (``dp_sgd``: use :class:`.FllabClient`;
``secure_aggregation``, a server view: use :class:`.FllabStrategy`) or whose ``needs`` exclude the
upload kind is a ConfigError when the mod is built; a reply holding integer arrays (a ranking, as
Federated Rank Learning sends) comes back as Flower's ``MOD_FAILED_PRECONDITION`` error reply
with one line naming the defense.
"""
from __future__ import annotations

from logging import ERROR
from typing import Any

import torch
from flwr.app import Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode
from flwr.supercore import log

from ...errors import CapabilityError, ConfigError
from ...registry import DEFENSES, load_plugins
from ...seeding import derive_seed
from .arrays import UPLOADS, as_reply, as_update, flat_to_record, record_to_flat

#: fllab's update kind for each upload form (what a defense's ``needs`` is checked against).
KIND_OF_UPLOAD = {"weights": "delta", "delta": "delta", "gradient": "gradient", "ranking": "ranking"}


def client_round(msg: Message, context: Context) -> tuple[int, int]:
    """(client id, 0-based round) of a training message, as fllab numbers them."""
    cid = int(context.node_config.get("partition-id", context.node_id))
    config = next(iter(msg.content.config_records.values()), {})
    return cid, int(config.get("server-round", 1)) - 1


def failed(msg: Message, reason: str) -> Message:
    """Flower's error reply for a mod whose precondition does not hold."""
    log(ERROR, reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def defense_mod(spec: Any, *, upload: str = "weights", seed: int = 0) -> Mod:
    """A Flower client mod applying the fllab defense ``spec`` (``"topk"`` or
    ``{"name": "topk", "fraction": 0.1}``) to what the client uploads (module docstring).
    ``upload``: what the reply's record holds (``weights``, ``delta`` or ``gradient``);
    ``seed``: the root seed of the defense's randomness."""
    load_plugins()
    defense = DEFENSES.build(spec, "mod")
    name = defense.registry_name
    if not hasattr(defense, "transform"):
        where = "fllab.interop.flower.FllabClient" if hasattr(defense, "wrap_trainer") else "fllab.interop.flower.FllabStrategy"
        raise ConfigError(f"{name} does not transform a client's upload; use {where}", "mod")
    if upload not in KIND_OF_UPLOAD:
        raise ConfigError(f"upload must be one of {', '.join(UPLOADS)}; got {upload!r}", "upload")
    kind = KIND_OF_UPLOAD[upload]
    needs = getattr(defense, "needs", None)
    if needs is not None and kind not in needs:
        raise CapabilityError(f"{name} works on {' or '.join(sorted(needs))} updates; this upload is a {kind}", "mod")

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type.split(".")[0] != MessageType.TRAIN:
            return call_next(msg, context)
        received = next(iter(msg.content.array_records.values()))
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        key, record = next(iter(reply.content.array_records.items()))
        try:
            sent = record_to_flat(received)
            update = as_update(record_to_flat(record), sent, upload)
        except ValueError as err:
            return failed(msg, f"fllab mod {name}: {err}")
        cid, rnd = client_round(msg, context)
        gen = torch.Generator(device="cpu").manual_seed(derive_seed(derive_seed(seed, "client", cid, rnd), "defense", name))
        reply.content.array_records[key] = flat_to_record(as_reply(defense.transform(update, gen), sent, upload), record)
        return reply

    mod.__name__ = f"fllab_{name}_mod"
    mod.__qualname__ = mod.__name__
    return mod
