"""Read TFRecord files and decode ``tf.train.Example`` records without TensorFlow or protobuf.

TFRecord framing (one record)::

    uint64  length                      little endian
    uint32  masked_crc32c(length bytes)
    byte    data[length]                here: a serialised tf.train.Example
    uint32  masked_crc32c(data)

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8  (mod 2**32)`` and CRC32C the
Castagnoli CRC (reflected polynomial 0x82F63B78, init and final xor 0xFFFFFFFF).

The subset of protobuf needed for ``tf.train.Example``::

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }     # map entry: key = 1, value = 2
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                             Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }   # packed or not, both accepted
    Int64List { repeated int64 value = 1 [packed = true]; }

A field that appears more than once is merged as protobuf merges it: a Feature's list seen again is
extended (a list of another kind replaces it: ``kind`` is a oneof), a map entry's value seen twice is
merged likewise, and of two entries with the same key the last wins.
"""

from __future__ import annotations

import os
import struct
from typing import Callable, Iterator

import numpy as np

__all__ = [
    "TFRecordError",
    "crc32c",
    "masked_crc32c",
    "iter_records",
    "parse_example",
]

_CRC32C_POLY = 0x82F63B78  # Castagnoli polynomial, bit-reflected
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


class TFRecordError(ValueError):
    """Corrupt or truncated TFRecord file, or an undecodable Example; the message names file and record."""


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)

# Long inputs are cut into K lanes of _LANE bytes whose CRCs numpy computes side by side (one table
# lookup per byte for all lanes at once); the lanes are then chained in order. CRC without the init/final
# xor is linear over GF(2): crc(s, A || B) = crc(s, A) advanced through len(B) zero bytes, xor crc(0, B).
# "Advance through _LANE zero bytes" is a fixed linear map of the 32-bit state, tabulated per state byte.
_LANE = 1024
_advance_tables: list[list[int]] | None = None


def _lane_advance_tables() -> list[list[int]]:
    global _advance_tables
    if _advance_tables is None:
        state = np.uint32(1) << np.arange(32, dtype=np.uint32)  # the 32 basis states
        for _ in range(_LANE):
            state = _TABLE_NP[state & 0xFF] ^ (state >> 8)
        images = [int(v) for v in state]  # image of bit i after _LANE zero bytes
        tables = []
        for byte in range(4):
            table = []
            for value in range(256):
                acc = 0
                for bit in range(8):
                    if value >> bit & 1:
                        acc ^= images[8 * byte + bit]
                table.append(acc)
            tables.append(table)
        _advance_tables = tables
    return _advance_tables


def _crc_bytewise(data, crc: int) -> int:
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``; pass a previous result as ``crc`` to continue it."""
    state = crc ^ _U32
    view = memoryview(data).cast("B")
    lanes = len(view) // _LANE
    if lanes >= 4:
        z0, z1, z2, z3 = _lane_advance_tables()
        block = np.frombuffer(view, dtype=np.uint8, count=lanes * _LANE)
        block = block.reshape(lanes, _LANE).T.copy()  # (_LANE, lanes): row j = byte j of every lane
        lane_crc = np.zeros(lanes, dtype=np.uint32)
        for row in block:
            lane_crc = _TABLE_NP[(lane_crc ^ row) & 0xFF] ^ (lane_crc >> 8)
        for c in lane_crc.tolist():
            state = z0[state & 0xFF] ^ z1[(state >> 8) & 0xFF] ^ z2[(state >> 16) & 0xFF] ^ z3[state >> 24] ^ c
        view = view[lanes * _LANE:]
    return _crc_bytewise(view, state) ^ _U32


def masked_crc32c(data) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


def iter_records(
    path: str | os.PathLike, verify: bool = True, select: Callable[[int], bool] | None = None,
    damaged: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, payload)`` for each record of a TFRecord file, one record in memory at a time.

    ``select(index) -> False`` skips a record without reading its payload (its length CRC is still
    checked, so the framing stays trustworthy). With ``verify`` both CRCs are checked. Any corruption or
    truncation raises TFRecordError naming the file and the record index; the file is not read further.
    Except, given ``damaged``: a payload whose CRC fails under an intact header is reported to it (the
    same message) and skipped, since the next record's place is still known.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(f"{path}: record {index}: truncated header ({len(header)} of 12 bytes)")
            length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
            if verify and masked_crc32c(length_bytes) != length_crc:
                raise TFRecordError(f"{path}: record {index}: length CRC mismatch (corrupt header)")
            (length,) = struct.unpack("<Q", length_bytes)
            if length + 4 > size - f.tell():  # checked before reading: a corrupt length may be up to 2**64 - 1
                raise TFRecordError(f"{path}: record {index}: truncated (file ends inside the record)")
            if select is not None and not select(index):
                f.seek(length + 4, os.SEEK_CUR)
                index += 1
                continue
            payload = f.read(length)
            footer = f.read(4)
            if len(payload) < length or len(footer) < 4:
                raise TFRecordError(f"{path}: record {index}: truncated (file ends inside the record)")
            if verify and masked_crc32c(payload) != struct.unpack("<I", footer)[0]:
                message = f"{path}: record {index}: data CRC mismatch (corrupt payload)"
                if damaged is None:
                    raise TFRecordError(message)
                damaged(message)
            else:
                yield index, payload
            index += 1


# ---- protobuf wire format ------------------------------------------------------------------------
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class _ProtoError(ValueError):
    pass


def _read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos  # protobuf keeps the low 64 bits of a 10-byte varint
        shift += 7
        if shift >= 70:
            raise _ProtoError("varint longer than 10 bytes")


def _fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """Yield (field number, wire type, value): an int for varint/fixed fields, a (start, stop) span for
    length-delimited ones."""
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos, end)
            if pos + size > end:
                raise _ProtoError("length-delimited field runs past its message")
            value, pos = (pos, pos + size), pos + size
        elif wire in (_FIXED64, _FIXED32):
            width = 8 if wire == _FIXED64 else 4
            if pos + width > end:
                raise _ProtoError("truncated fixed-width field")
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        else:
            raise _ProtoError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: memoryview, spans: list[tuple[int, int]]):
    """The Feature whose serialised parts are ``spans``, merged as protobuf merges: a list kind seen again
    appends to its values; a different kind replaces it (a oneof). None if no kind is set."""
    number, items = None, []
    for span in spans:
        for kind, wire, list_span in _fields(buf, *span):
            if wire != _LEN or kind not in (1, 2, 3):
                continue
            if kind != number:
                number, items = kind, []
            _append_list_values(buf, kind, list_span, items)
    if number is None:
        return None
    if number == 1:
        return items
    dtype = np.float32 if number == 2 else np.int64
    return np.concatenate(items).astype(dtype, copy=False) if items else np.zeros(0, dtype)


def _append_list_values(buf: memoryview, number: int, span: tuple[int, int], items: list) -> None:
    """Append the values of one BytesList (number 1), FloatList (2) or Int64List (3) to ``items``:
    bytes, or numpy arrays to concatenate."""
    for inner, inner_wire, v in _fields(buf, *span):
        if inner != 1:
            continue
        if number == 1 and inner_wire == _LEN:  # BytesList
            items.append(bytes(buf[v[0]:v[1]]))
        elif number == 2 and inner_wire == _LEN:  # FloatList, packed
            if (v[1] - v[0]) % 4:
                raise _ProtoError("packed float list length is not a multiple of 4")
            items.append(np.frombuffer(buf[v[0]:v[1]], dtype="<f4"))
        elif number == 2 and inner_wire == _FIXED32:  # FloatList, one float per field
            items.append(np.array([v], dtype="<u4").view("<f4"))
        elif number == 3 and inner_wire == _LEN:  # Int64List, packed varints
            pos, stop, ints = v[0], v[1], []
            while pos < stop:
                x, pos = _read_varint(buf, pos, stop)
                ints.append(_signed64(x))
            items.append(np.array(ints, dtype=np.int64))
        elif number == 3 and inner_wire == _VARINT:
            items.append(np.array([_signed64(v)], dtype=np.int64))
        else:
            raise _ProtoError(f"unexpected wire type {inner_wire} in feature list")


def parse_example(payload: bytes | memoryview) -> dict[str, list[bytes] | np.ndarray]:
    """Decode a serialised ``tf.train.Example`` into {name: list of bytes | float32 array | int64 array}.

    Raises ValueError on malformed input (callers add the file and record to the message).
    """
    buf = memoryview(payload).cast("B")
    features: dict[str, list[bytes] | np.ndarray] = {}
    try:
        for number, wire, span in _fields(buf, 0, len(buf)):
            if number != 1 or wire != _LEN:
                continue
            for entry_number, entry_wire, entry_span in _fields(buf, *span):  # Features
                if entry_number != 1 or entry_wire != _LEN:
                    continue
                key, value_spans = "", []
                for n, w, v in _fields(buf, *entry_span):  # map entry
                    if n == 1 and w == _LEN:
                        key = bytes(buf[v[0]:v[1]]).decode("utf-8")
                    elif n == 2 and w == _LEN:
                        value_spans.append(v)  # a value seen twice in one entry is merged, as protobuf does
                feature = _parse_feature(buf, value_spans)
                features[key] = feature if feature is not None else []  # a repeated key: the last entry wins
    except (_ProtoError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed tf.train.Example: {e}") from None
    return features
