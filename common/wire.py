"""The wire format of vectors and scores, converted in exactly one place.

Vectors travel as packed little-endian float32. Nothing from the wire is
ever deserialised into objects: bytes become a numpy array of a length the
receiver states in advance, or they are refused.
"""

from __future__ import annotations

import numpy as np

from cbpt.common.errors import CbptError

WIRE_DTYPE = np.dtype("<f4")


class WireFormatError(CbptError, ValueError):
    """Packed bytes whose length does not match the shape the receiver expects."""


def pack_floats(array: np.ndarray) -> bytes:
    """Pack any float array as row-major little-endian float32 bytes."""
    return np.ascontiguousarray(array, dtype=WIRE_DTYPE).tobytes()


def unpack_floats(data: bytes, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Unpack bytes into a float32 array of exactly ``shape``, naming ``field`` on mismatch."""
    expected = int(np.prod(shape, dtype=np.int64)) * WIRE_DTYPE.itemsize
    if len(data) != expected:
        dims = " x ".join(str(s) for s in shape) or "scalar"
        raise WireFormatError(f"{field}: {len(data)} bytes, expected {expected} ({dims} float32)")
    return np.frombuffer(data, dtype=WIRE_DTYPE).reshape(shape).astype(np.float32, copy=True)
