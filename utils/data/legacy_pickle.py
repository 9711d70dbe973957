"""The original GEN tools' episode files: a legacy (non-zip) ``torch.save`` stream of four pickles (magic number,
protocol version 1001, sys_info, then a namedtuple ``Scene(frames, cameras)`` pickled from ``__main__``), read
without ever running code from the file. :func:`read_legacy` is the only entry point; utils.data.episodes
dispatches to it and validates what it returns.
"""
from __future__ import annotations

import functools
import io
import math
import pickle
import pickletools
import re
from collections import namedtuple

import numpy as np

from utils.data.lazy_frames import EpisodeError, LazyFrames

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save stream
_LEGACY_PROTOCOL = 1001

# The legacy reader is a pickle.Unpickler whose find_class admits only the names below, each mapped to an
# inert stand-in: pickle data never reaches numpy's own reconstruction, because numpy trusts its pickles
# (a crafted dtype state can turn raw bytes into object pointers). Arrays are rebuilt here from checked
# (shape, dtype, data) instead.
# The stand-ins are shared by every file, so none may be changed by one: a pickle's GLOBAL then BUILD sets
# attributes on the object GLOBAL gave (a class's namedtuple accessors, a function's __defaults__), which
# would change how every later file reads. Classes are _Sealed, functions wrapped in _SealedFunction.
class _Sealed(type):
    """Metaclass of the classes find_class hands out: their attributes cannot be set."""

    def __setattr__(cls, name, value):
        raise pickle.UnpicklingError(f"refused to set {name!r} on {cls.__name__} (the file may be malicious)")


class _SealedFunction:
    """A function find_class hands out, whose attributes cannot be set."""

    __slots__ = ("_function",)

    def __init__(self, function):
        object.__setattr__(self, "_function", function)

    def __call__(self, *args, **kwargs):
        return self._function(*args, **kwargs)

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError(f"refused to set {name!r} on a function (the file may be malicious)")


class _LegacyScene(namedtuple("Scene", ["frames", "cameras"]), metaclass=_Sealed):
    """Stands in for the original __main__.Scene."""

    __slots__ = ()


_NUMERIC_DTYPE = re.compile(r"[fiu][1248]|b1")  # the dtype codes numpy pickles for plain numbers
_OBJECT_DTYPE = "O8"


class _PickledDtype(metaclass=_Sealed):
    """numpy.dtype(code, align, copy) followed by BUILD(state), kept as data."""

    def __init__(self, code, align=False, copy=False):
        if not isinstance(code, str) or not (code == _OBJECT_DTYPE or _NUMERIC_DTYPE.fullmatch(code)):
            raise pickle.UnpicklingError(f"dtype {code!r} is not episode data")
        self.code, self.byteorder = code, "="

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("malformed dtype state")
        if any(part is not None for part in state[2:5]):
            raise pickle.UnpicklingError("structured or subarray dtypes are not episode data")
        self.byteorder = state[1]


class _PickledArray:
    """numpy's _reconstruct(ndarray, (0,), b"b") followed by BUILD(state); ``value`` is the result:
    a list for an object array, a fresh numpy array for a numeric one."""

    def __setstate__(self, state):
        # numpy's array state: (version, shape, dtype, is_fortran_order, data)
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("malformed array state")
        _, shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise pickle.UnpicklingError("malformed array shape")
        if not isinstance(dtype, _PickledDtype):
            raise pickle.UnpicklingError("array without a dtype")
        size = math.prod(shape)
        if dtype.code == _OBJECT_DTYPE:
            if len(shape) != 1 or not isinstance(data, list) or len(data) != size:
                raise pickle.UnpicklingError("object arrays must be 1-D lists of items")
            self.value = data
        else:
            numeric = np.dtype(dtype.byteorder.replace("|", "=") + dtype.code)
            if not isinstance(data, bytes) or len(data) != size * numeric.itemsize:
                raise pickle.UnpicklingError("array data does not match its shape and dtype")
            self.value = np.frombuffer(data, numeric).reshape(shape, order="F" if fortran else "C").copy()


_NDARRAY = object()  # numpy.ndarray appears only as _reconstruct's first argument; it is never called


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct admitted only for numpy.ndarray")
    return _PickledArray()


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles store bytes as _codecs.encode(str, "latin1"); admit exactly that use.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError("_codecs.encode is admitted only as encode(str, 'latin1')")
    return text.encode("latin-1")


def _empty_bytes(*args):
    # Protocol 2 pickles b"" (e.g. the data of an empty array) as bytes(); admit only that call.
    if args:
        raise pickle.UnpicklingError("bytes() is admitted only without arguments")
    return b""


_ALLOWED_GLOBALS = {
    ("__main__", "Scene"): _LegacyScene,
    ("numpy.core.multiarray", "_reconstruct"): _SealedFunction(_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _SealedFunction(_reconstruct),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _PickledDtype,
    ("_codecs", "encode"): _SealedFunction(_latin1_encode),
    ("__builtin__", "bytes"): _SealedFunction(_empty_bytes),
    ("builtins", "bytes"): _SealedFunction(_empty_bytes),
}


class _EpisodeUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise EpisodeError(
                f"{self._path}: refused to load global {module}.{name}: an episode file holds only the "
                "Scene namedtuple, numpy arrays and plain containers (the file may be malicious)"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("holds torch storages, which a legacy episode never does")


def _array_value(obj, path: str, what: str):
    if isinstance(obj, _PickledArray):
        if not hasattr(obj, "value"):
            raise EpisodeError(f"{path}: {what} array has no data (corrupt file)")
        return obj.value
    return obj


# Fast path. The original tools wrote every episode with the same pickler, so their files are, byte for
# byte, one fixed skeleton around N + 1 BINUNICODE payloads (4-byte length, UTF-8): the N JPEGs, then the
# camera floats, each stored as _codecs.encode(str, "latin1"). _read_legacy_fast checks that skeleton
# exactly - every opcode and memo index, so what the file means is known without running the pickle
# machine. Anything else (other writers, crafted or damaged files) gives None and the restricted
# unpickler decides, so its refusals and errors are unchanged. A frame's payload is converted (UTF-8 ->
# latin-1 bytes, exactly as unpickling would) only when the frame is used (LazyFrames): a sample uses
# 9 of 300 frames, and checking all 300 cost twice the rest of a sample's loading and decoding
# (docs/benchmarks.md). So a payload that unpickling would refuse (not UTF-8, or a code point above 255)
# raises EpisodeError when its frame is used, as an undecodable JPEG does, and the training loader
# replaces that episode (utils.data.hotel.HotelSteps).
def _put(i: int) -> bytes:  # BINPUT / LONG_BINPUT i: the pickler memoises every object as 0, 1, 2, ...
    return b"q" + bytes([i]) if i < 256 else b"r" + i.to_bytes(4, "little")


def _int(v: int) -> bytes:  # BININT1 / BININT2
    return b"K" + bytes([v]) if v < 256 else b"M" + v.to_bytes(2, "little")


_SKELETON_HEAD = (  # magic, protocol, sys_info pickles; Scene pickle up to the frames' shape (memo 0-10)
    b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.\x80\x02}q\x00(X\x10\x00\x00\x00protocol_versionq"
    b"\x01M\xe9\x03X\r\x00\x00\x00little_endianq\x02\x88X\n\x00\x00\x00type_sizesq\x03}q\x04(X\x05\x00\x00\x00shortq"
    b"\x05K\x02X\x03\x00\x00\x00intq\x06K\x04X\x04\x00\x00\x00longq\x07K\x04uu."
    b"\x80\x02c__main__\nScene\nq\x00cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85q"
    b"\x03c_codecs\nencode\nq\x04X\x01\x00\x00\x00bq\x05X\x06\x00\x00\x00latin1q\x06\x86q\x07Rq\x08\x87q\tRq\n(K\x01"
)


@functools.lru_cache(maxsize=4)
def _legacy_skeleton(n: int) -> tuple[bytes, ...]:
    """The n + 2 byte strings around the n + 1 payloads of a legacy file with n frames, as the original
    tools wrote it: Scene(frames=object array of n bytes, cameras=float32 (1, n, 5))."""
    parts = [  # frames: shape (n,), dtype O8, MARK (memo 11-18); then "h\x04X": get encode, BINUNICODE
        _SKELETON_HEAD + _int(n) + b"\x85q\x0bcnumpy\ndtype\nq\x0cX\x02\x00\x00\x00O8q\rK\x00K\x01\x87q\x0eRq\x0f"
        b"(K\x03X\x01\x00\x00\x00|q\x10NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tq\x11b\x89]q\x12(h\x04X"
    ]
    m = 19  # each frame: its str (memo m), encode's args (str, "latin1" = memo 6) (m + 1), the bytes (m + 2)
    for _ in range(n):
        parts.append(_put(m) + b"h\x06\x86" + _put(m + 1) + b"R" + _put(m + 2) + b"h\x04X")
        m += 3
    parts[-1] = parts[-1][:-3] + (  # APPENDS, BUILD the frames; cameras: shape (1, n, 5), dtype <f4
        b"et" + _put(m) + b"bh\x01h\x02K\x00\x85" + _put(m + 1) + b"h\x08\x87" + _put(m + 2) + b"R" + _put(m + 3)
        + b"(K\x01K\x01" + _int(n) + b"K\x05\x87" + _put(m + 4) + b"h\x0cX\x02\x00\x00\x00f4" + _put(m + 5)
        + b"K\x00K\x01\x87" + _put(m + 6) + b"R" + _put(m + 7) + b"(K\x03X\x01\x00\x00\x00<" + _put(m + 8)
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t" + _put(m + 9) + b"b\x89h\x04X"
    )
    parts.append(  # the cameras' bytes, BUILD the cameras, Scene(frames, cameras) by NEWOBJ, STOP
        _put(m + 10) + b"h\x06\x86" + _put(m + 11) + b"R" + _put(m + 12) + b"t" + _put(m + 13) + b"b\x86"
        + _put(m + 14) + b"\x81" + _put(m + 15) + b"."
    )
    return tuple(parts)


def _read_legacy_fast(raw: bytes, path: str):
    """(frames, cameras) of a legacy file laid out exactly as the original tools wrote it, else None."""
    at = len(_SKELETON_HEAD)
    if not raw.startswith(_SKELETON_HEAD) or raw[at:at + 1] not in (b"K", b"M"):
        return None
    n = int.from_bytes(raw[at + 1:at + (2 if raw[at:at + 1] == b"K" else 3)], "little")
    if not 2 <= n <= 1000:  # the pickler lays out 0 or 1 items, or more than 1000, differently
        return None
    skeleton, spans, pos = _legacy_skeleton(n), [], 0
    for part in skeleton[:-1]:
        if not raw.startswith(part, pos):
            return None
        pos += len(part) + 4
        end = pos + int.from_bytes(raw[pos - 4:pos], "little")
        if end > len(raw):
            return None
        spans.append((pos, end))
        pos = end
    if not raw.startswith(skeleton[-1], pos):
        return None
    try:
        cameras = str(memoryview(raw)[slice(*spans[-1])], "utf-8").encode("latin-1")
    except UnicodeError:
        return None  # the unpickler reports it
    if len(cameras) != n * 5 * 4:
        return None
    frames = LazyFrames(raw, spans[:-1], path, text=True)
    if frames.first_non_jpeg is not None:
        return None  # not a JPEG, or text that unpickling refuses: the unpickler says which
    return frames, np.frombuffer(cameras, dtype="<f4").reshape(1, n, 5).copy()


# Opcodes the restricted unpickler must never act on. A memo index is bounded by the number of opcodes
# before it (picklers number memo entries 0, 1, 2, ...), but CPython's unpickler grows its memo to twice
# any index it is given: one damaged byte in a BINPUT can ask for tens of GB and minutes of zero-filling.
# Protocol 5's out-of-band buffers appear in no episode.
_MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})
_BUFFER_OPCODES = frozenset({"BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"})


def _check_opcodes(raw: bytes, path: str, pickles: int) -> None:
    """Scan the first ``pickles`` pickles of ``raw`` without running them; raise EpisodeError on an
    out-of-range memo index, a buffer opcode, or a stream the scan cannot parse."""
    stream = io.BytesIO(raw)
    try:
        for _ in range(pickles):
            if stream.tell() == len(raw):
                return  # fewer pickles than that: the unpickler stops where this scan did, and says so
            for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
                if opcode.name in _BUFFER_OPCODES:
                    raise EpisodeError(f"{path}: corrupt episode file (pickle opcode {opcode.name})")
                if opcode.name in _MEMO_OPCODES and not 0 <= arg <= count:
                    raise EpisodeError(f"{path}: corrupt episode file (pickle memo index {arg} out of range)")
    except EpisodeError:
        raise
    except Exception as e:
        # Refused, not left to the unpickler: it accepts some opcodes the scan cannot parse (INT "0x1"), and
        # what follows them would then reach it unchecked (e.g. a memo index asking for gigabytes).
        raise EpisodeError(f"{path}: truncated or corrupt file ({type(e).__name__}: {e})") from None


def read_legacy(raw: bytes, path: str):
    """(frames, cameras) of a legacy episode file's bytes; EpisodeError naming ``path`` if it is not one."""
    fast = _read_legacy_fast(raw, path)
    if fast is not None:
        return fast
    _check_opcodes(raw, path, pickles=4)
    stream = io.BytesIO(raw)
    magic = _EpisodeUnpickler(stream, path).load()
    if magic != _LEGACY_MAGIC:
        raise EpisodeError(f"{path}: not an episode file (neither legacy torch.save, zip nor gzip)")
    protocol = _EpisodeUnpickler(stream, path).load()
    if protocol != _LEGACY_PROTOCOL:
        raise EpisodeError(f"{path}: unsupported legacy torch.save protocol {protocol!r}")
    _EpisodeUnpickler(stream, path).load()  # sys_info: endianness and type sizes, unused
    scene = _EpisodeUnpickler(stream, path).load()
    if not isinstance(scene, _LegacyScene):
        raise EpisodeError(f"{path}: holds a {type(scene).__name__}, not a Scene(frames, cameras)")
    return _array_value(scene.frames, path, "frames"), _array_value(scene.cameras, path, "cameras")
