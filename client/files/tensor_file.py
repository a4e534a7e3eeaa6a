"""safetensors bytes written deterministically: the same tensors and metadata give the same bytes.

``safetensors.numpy.save`` keeps ``__metadata__`` in a Rust hash map whose order changes from one
process to the next, so two identical runs wrote different vector files and no digest of one could
be compared with another. This writer emits the same format (8-byte little-endian header length,
a JSON header with sorted keys, padded with spaces to 8 bytes, then the tensors' bytes in name
order); ``safetensors.numpy.load`` reads it back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

_DTYPES = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
}


def tensor_bytes(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors file holding ``tensors`` (little-endian, C order) and string ``metadata``."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(key): str(value) for key, value in sorted(metadata.items())}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {array.dtype} is not supported")
        blob = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        header[name] = {
            "dtype": _DTYPES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs)
