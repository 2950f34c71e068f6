"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is: two zero bytes, a type code, the number of dimensions ``d``, ``d`` big-endian
uint32 sizes, then the values in C order, big-endian.  Files may be gzip-compressed; the reader
looks at the magic bytes rather than the file name.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from ..limits import memory_limit
from .integrity import DataIntegrityError

IDX_TYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def read_bytes_maybe_gzip(path: str | os.PathLike) -> bytes:
    """A file's contents, gunzipped when it starts with the gzip magic bytes.  Inflation stops at
    the size the IDX header announces (and at :func:`fllab.limits.memory_limit`), so a gzip bomb
    is refused after reading its header instead of filling the memory."""
    raw = Path(path).read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    inflater = zlib.decompressobj(wbits=31)
    pending = raw

    def inflate(n: int) -> bytes:
        nonlocal pending
        out = b""
        while len(out) < n and pending:
            out += inflater.decompress(pending, n - len(out))
            pending = inflater.unconsumed_tail
        return out

    try:
        head = inflate(4)
        head += inflate(4 * head[3]) if len(head) == 4 else b""
        if len(head) < 4 or len(head) < 4 + 4 * head[3] or head[2] not in IDX_TYPES:
            if not inflater.eof and not pending:
                raise DataIntegrityError(f"{path}: truncated or corrupt gzip data (the stream ends early)")
            return head + inflate(1 << 16)  # not a (whole) IDX header: parse_idx names the problem
        shape = np.frombuffer(head, dtype=">u4", count=head[3], offset=4)
        body = int(np.prod(shape.astype(np.float64))) * np.dtype(IDX_TYPES[head[2]]).itemsize
        if body > memory_limit():
            raise DataIntegrityError(f"{path}: IDX header announces {body:,} bytes, more than the memory limit; not an image file fllab reads")
        data = head + inflate(body + 1)
    except zlib.error as err:
        raise DataIntegrityError(f"{path}: truncated or corrupt gzip data ({err})") from None
    if len(data) > len(head) + body:
        raise DataIntegrityError(f"{path}: gzip data inflates past the {body:,} bytes its IDX header announces")
    if not inflater.eof and len(data) < len(head) + body:
        raise DataIntegrityError(f"{path}: truncated or corrupt gzip data (the stream ends early)")
    return data


def parse_idx(buf: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes into an array of native byte order (read-only view for uint8 data)."""
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise DataIntegrityError(f"{source}: not an IDX file (bad magic number)")
    code, ndim = buf[2], buf[3]
    if code not in IDX_TYPES:
        raise DataIntegrityError(f"{source}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataIntegrityError(f"{source}: IDX header truncated")
    shape = tuple(int(s) for s in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) - header != expected:
        raise DataIntegrityError(f"{source}: IDX header announces shape {shape} ({expected} bytes), file holds {len(buf) - header}")
    values = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a numpy array."""
    return parse_idx(read_bytes_maybe_gzip(path), str(path))
