"""Maze episodes on disk: list, load safely, save, decode the views a sample uses, pose vectors.

An *episode* is one maze seen from N (300) cameras: N JPEG images (84 x 84 RGB) and an (N, 5) float32
array of camera poses ``x, y, z, yaw, pitch``.

Formats read by :func:`load_episode` (all of them also gzip-compressed, detected by magic bytes, and
refused if they decompress to more than 64 MiB):

* legacy: the original GEN tools' files (the GQN `mazes` episodes they wrote), a legacy (non-zip)
  ``torch.save`` stream: four pickles in a row - magic number, protocol version (1001), sys_info dict,
  then the object, a namedtuple ``Scene(frames, cameras)`` pickled from ``__main__`` (frames: object
  array or list of JPEG bytes; cameras: float32 (1, N, 5)). No tensors, so no storage section follows.
  It is read with a restricted unpickler that builds only that namedtuple, plain numeric or object
  arrays (rebuilt from checked shape/dtype/data, never by numpy's own unpickling), latin-1 bytes and
  plain containers; any other global is refused, so no code from a file ever runs. Files laid out
  byte for byte as the original tools wrote them are read by a faster, equivalent path that checks that
  exact layout (:func:`_read_legacy_fast`) and converts each frame only when it is used (so a frame
  whose text unpickling would refuse raises EpisodeError then); anything else goes to the restricted
  unpickler.
* ours (written by :func:`save_episode`): ``torch.save`` (zip) of a plain dict ``{"frames": uint8 tensor
  of all JPEG bytes concatenated, "frame_offsets": int64 (N + 1,), "cameras": float32 (N, 5)}``, read
  with ``torch.load(weights_only=True)`` once its zip records are known to be stored (not compressed);
  each tensor must be exactly its own storage, as save_episode writes it.

A frame is decoded only if its JPEG header declares at most 1024 x 1024 pixels.

Bad files raise :class:`EpisodeError`, whose message starts with the file's path.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import operator
import os
import pickle
import pickletools
import re
import zipfile
import zlib
from collections import namedtuple
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.atomic import atomic_path

__all__ = [
    "EpisodeError",
    "EPISODE_SUFFIXES",
    "Episode",
    "list_episodes",
    "load_episode",
    "save_episode",
    "decode_pixels",
    "decode_views",
    "to_unit",
    "pose_vectors",
    "episode_digests",
    "episode_info",
]

EPISODE_SUFFIXES = (".pt", ".pt.gz")
CAMERA_FIELDS = ("x", "y", "z", "yaw", "pitch")
POSE_SIZE = 7  # x, y, z, cos yaw, sin yaw, cos pitch, sin pitch

_JPEG_SOI = b"\xff\xd8"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save stream
_LEGACY_PROTOCOL = 1001
_MAX_EPISODE_BYTES = 64 << 20  # a decompressed episode file; a real one is about 1.2 MB


class EpisodeError(ValueError):
    """Bad episode file/dir; message always names the file."""


@dataclass(frozen=True, eq=False)
class Episode:
    frames: Sequence[bytes]  # N JPEG byte strings, in order (a list, or a file's _LazyFrames)
    cameras: np.ndarray  # (N, 5) float32: x, y, z, yaw, pitch
    path: str = field(default="")  # where it was read from ("" if built in memory); used in errors

    def __len__(self) -> int:
        return len(self.frames)


# ---- listing ---------------------------------------------------------------------------------------
def _is_episode_name(name: str) -> bool:
    return name.endswith(EPISODE_SUFFIXES) and not name.startswith(".")


def list_episodes(directory: str | os.PathLike) -> list[Path]:
    """Episode files directly in ``directory`` (names ending .pt / .pt.gz; hidden files and anything
    else ignored), sorted by name. EpisodeError if the directory is missing or holds no episode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EpisodeError(f"{directory}: " + ("not a directory" if directory.exists() else "no such episode directory"))
    paths = sorted(p for p in directory.iterdir() if _is_episode_name(p.name) and p.is_file())
    if not paths:
        raise EpisodeError(f"{directory}: holds no episode files (*{' or *'.join(EPISODE_SUFFIXES)})")
    return paths


# ---- loading ---------------------------------------------------------------------------------------
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
# latin-1 bytes, exactly as unpickling would) only when the frame is used (_LazyFrames): a sample uses
# 9 of 300 frames, and checking all 300 cost twice the rest of a sample's loading and decoding
# (docs/benchmarks.md). So a payload that unpickling would refuse (not UTF-8, or a code point above 255)
# raises EpisodeError when its frame is used, as an undecodable JPEG does, and the training loader
# replaces that episode (utils.data.hotel.HotelSteps).
_UTF8_SOI = "\xff\xd8".encode("utf-8")  # a JPEG's first two bytes as the pickle's text holds them


class _LazyFrames(Sequence):
    """An episode file's JPEG frames, each cut from the file's bytes only when it is used (a sample uses
    9 of 300). A legacy file holds them as the pickle's UTF-8 text (``text=True``), converted as unpickling
    would; a frame unpickling would refuse raises EpisodeError when it is used. Otherwise behaves as the
    list of bytes the file holds."""

    __slots__ = ("_raw", "_spans", "_path", "_text", "first_non_jpeg")
    __hash__ = None

    def __init__(self, raw, spans: list[tuple[int, int]], path: str, text: bool):
        # raw: the file's bytes, or a uint8 array (kept as is, not as a memoryview, so an Episode pickles)
        self._raw, self._spans, self._path, self._text = raw, spans, path, text
        soi, view = (_UTF8_SOI if text else _JPEG_SOI), memoryview(raw)
        # index of the first frame that does not start with a JPEG's FFD8 marker, or None
        self.first_non_jpeg = next((i for i, (start, end) in enumerate(spans)
                                    if view[start:min(end, start + len(soi))] != soi), None)

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # an int in range, or IndexError
        start, end = self._spans[index]
        frame = memoryview(self._raw)[start:end]
        if not self._text:
            return frame.tobytes()
        try:
            return str(frame, "utf-8").encode("latin-1")
        except UnicodeError as e:
            raise EpisodeError(f"{self._path}: frame {index}: corrupt episode file ({type(e).__name__}: {e})") from None

    def __eq__(self, other):
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented


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
    frames = _LazyFrames(raw, spans[:-1], path, text=True)
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


def _read_legacy(raw: bytes, path: str):
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


def _read_ours(raw: bytes, path: str):
    # torch.save stores every record uncompressed; a compressed record could inflate to gigabytes inside
    # torch.load, so records must be stored and, in all, no larger than the file.
    records = zipfile.ZipFile(io.BytesIO(raw)).infolist()
    if any(r.compress_type != zipfile.ZIP_STORED or r.compress_size != r.file_size for r in records) \
            or sum(r.file_size for r in records) > len(raw):
        raise EpisodeError(f"{path}: corrupt episode file (compressed or oversized zip records)")
    data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not {"frames", "frame_offsets", "cameras"} <= data.keys():
        raise EpisodeError(f"{path}: not an episode: expected a dict with frames, frame_offsets, cameras")
    blob, offsets, cameras = data["frames"], data["frame_offsets"], data["cameras"]
    if not all(isinstance(t, torch.Tensor) for t in (blob, offsets, cameras)):
        raise EpisodeError(f"{path}: frames, frame_offsets and cameras must be tensors")
    # A tensor's shape and strides come from the pickle: a stride-0 (expanded) tensor of a few stored bytes
    # can claim billions of elements, which tolist() or contiguous() would then make. save_episode writes
    # each tensor as exactly its own storage, so require that before touching any.
    if not all(t.is_contiguous() and t.storage_offset() == 0
               and t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in (blob, offsets, cameras)):
        raise EpisodeError(f"{path}: corrupt episode file (a tensor does not fill its storage)")
    if blob.dtype != torch.uint8 or blob.dim() != 1 or offsets.dtype != torch.int64 or offsets.dim() != 1:
        raise EpisodeError(f"{path}: frames must be 1-D uint8 and frame_offsets 1-D int64")
    _check_camera_count(cameras, max(len(offsets) - 1, 0), path)
    offs = offsets.tolist()
    if not offs or offs[0] != 0 or offs[-1] != blob.numel() or any(a > b for a, b in zip(offs, offs[1:])):
        raise EpisodeError(f"{path}: frame_offsets do not split the frame bytes (corrupt file)")
    return _LazyFrames(blob.numpy(), list(zip(offs, offs[1:])), path, text=False), cameras.numpy()


def _check_camera_count(cameras, n: int, path: str) -> None:
    if tuple(cameras.shape) != (n, len(CAMERA_FIELDS)):
        raise EpisodeError(f"{path}: cameras have shape {tuple(cameras.shape)}, expected ({n}, 5) for {n} frames")


def _validated(frames, cameras, path: str) -> Episode:
    """Check an episode's content and return it in canonical form: a list of bytes (or a file's
    _LazyFrames, checked without reading its frames) + (N, 5) float32."""
    if not isinstance(frames, (list, tuple, _LazyFrames)) or not frames:
        raise EpisodeError(f"{path}: episode has no frames")
    if isinstance(frames, _LazyFrames):  # bytes by construction; checked without reading them
        bad = frames.first_non_jpeg
    elif not all(isinstance(f, bytes) for f in frames):
        raise EpisodeError(f"{path}: frames must be JPEG byte strings")
    else:
        bad = next((i for i, f in enumerate(frames) if not f.startswith(_JPEG_SOI)), None)
    if bad is not None:
        raise EpisodeError(f"{path}: frame {bad} is not a JPEG (no FFD8 start-of-image marker)")
    if not isinstance(cameras, np.ndarray) or cameras.dtype.kind not in "fiu":
        raise EpisodeError(f"{path}: cameras must be a numeric array")
    if cameras.ndim == 3 and cameras.shape[0] == 1:  # legacy files keep a leading batch axis
        cameras = cameras[0]
    _check_camera_count(cameras, len(frames), path)
    cameras = np.ascontiguousarray(cameras, dtype=np.float32)
    if not np.isfinite(cameras).all():
        raise EpisodeError(f"{path}: cameras hold non-finite values")
    return Episode(frames=frames if isinstance(frames, _LazyFrames) else list(frames), cameras=cameras, path=path)


def _gunzip(raw: bytes, path: str) -> bytes:
    """gzip.decompress (every member; zero padding after them ignored), refusing an output larger than
    _MAX_EPISODE_BYTES before making it: a few kB of gzip can inflate to gigabytes."""
    members, size = [], 0
    while raw:
        inflate = zlib.decompressobj(wbits=31)  # gzip framing; checks each member's CRC and length
        members.append(inflate.decompress(raw, _MAX_EPISODE_BYTES + 1 - size))
        size += len(members[-1])
        if size > _MAX_EPISODE_BYTES:
            raise EpisodeError(f"{path}: corrupt episode file (decompresses to more than "
                               f"{_MAX_EPISODE_BYTES >> 20} MiB; an episode is about 1.2 MB)")
        if not inflate.eof:
            raise EpisodeError(f"{path}: truncated or corrupt file (gzip data ends early)")
        raw = inflate.unused_data.lstrip(b"\0")
    return b"".join(members)


def load_episode(path: str | os.PathLike) -> Episode:
    """Read one episode file in any supported format (see module docstring); never runs code from it.

    Nothing is decoded: each frame's JPEG bytes are cut from the file when the frame is used. Raises
    EpisodeError naming the file on a missing, truncated or corrupt file, a refused pickle global, wrong
    camera count, or non-JPEG frames. A damaged frame inside an intact file (undecodable JPEG, or a
    legacy frame's corrupt text) raises EpisodeError only when that frame is used.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise EpisodeError(f"{name}: cannot read: {e.strerror or e}") from None
    try:
        if raw[:2] == _GZIP_MAGIC:
            raw = _gunzip(raw, name)
        reader = _read_ours if raw[:4] == _ZIP_MAGIC else _read_legacy
        frames, cameras = reader(raw, name)
    except EpisodeError:
        raise
    except (EOFError, zlib.error) as e:
        raise EpisodeError(f"{name}: truncated or corrupt file ({type(e).__name__}: {e})") from None
    except Exception as e:  # anything a damaged pickle/zip makes the restricted readers raise
        raise EpisodeError(f"{name}: corrupt episode file ({type(e).__name__}: {e})") from None
    return _validated(frames, cameras, name)


# ---- saving ----------------------------------------------------------------------------------------
def save_episode(path: str | os.PathLike, frames: Sequence[bytes], cameras: np.ndarray) -> None:
    """Write an episode in our format (see module docstring); gzip it if ``path`` ends with .gz.

    Atomic: readers see the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    episode = _validated(list(frames), np.asarray(cameras), str(path))
    sizes = np.fromiter((len(f) for f in episode.frames), dtype=np.int64, count=len(episode))
    offsets = np.zeros(len(episode) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    record = {
        "frames": torch.frombuffer(bytearray(b"".join(episode.frames)), dtype=torch.uint8),
        "frame_offsets": torch.from_numpy(offsets),
        "cameras": torch.from_numpy(episode.cameras.copy()),
    }
    buffer = io.BytesIO()
    torch.save(record, buffer)
    data = buffer.getvalue()
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: same content, same bytes
    with atomic_path(path) as temp:
        temp.write_bytes(data)


# ---- decoding --------------------------------------------------------------------------------------
# A JPEG's frame header may declare up to 65535 x 65535 pixels, and libjpeg allocates for that size
# whatever data follows (20000 x 20000: 3 GB). Episode frames are 84 x 84; anything over this is refused.
_MAX_JPEG_SIDE = 1024
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame; not DHT, JPG, DAC


def _jpeg_size(data) -> tuple[int, int] | None:
    """(height, width) declared by a JPEG's frame header, found by walking the marker segments after its
    start marker; None if the walk meets anything else first (libjpeg skips junk between segments, so it
    could find a header this walk did not: such a JPEG is refused)."""
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in _SOF_MARKERS:  # FF Cn, length (2), precision (1), height (2), width (2)
            return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
        if marker == 0xFF:  # fill byte before a marker
            at += 1
        elif marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            at += 2
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came first
            return None
        else:
            at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return None


def _decode_jpeg(data):
    """torchvision.io.decode_jpeg to RGB uint8 (3, H, W); ``data`` a uint8 tensor or a list of them.
    RuntimeError, as for undecodable data, if a frame header is missing or larger than _MAX_JPEG_SIDE.

    torchvision is imported on first use: listing, loading, saving and converting do not need it.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    for tensor in data if isinstance(data, list) else [data]:
        size = _jpeg_size(memoryview(tensor.numpy()))
        if size is None:
            raise RuntimeError("no JPEG frame header before the image data")
        if max(size) > _MAX_JPEG_SIDE:
            raise RuntimeError(f"frame header declares {size[0]} x {size[1]} pixels, more than {_MAX_JPEG_SIDE} "
                               "per side")
    return decode_jpeg(data, mode=ImageReadMode.RGB)


def decode_views(episode: Episode, indices: Iterable[int], img_size: int) -> torch.Tensor:
    """Decode just the chosen views: (len(indices), 3, img_size, img_size) float32 in [0, 1]."""
    return to_unit(decode_pixels(episode, indices, img_size))


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], on the pixels' device."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels.float().div_(255.0)


def decode_pixels(episode: Episode, indices: Iterable[int], img_size: int) -> torch.Tensor:
    """Decode just the chosen views: (len(indices), 3, img_size, img_size) uint8.

    Resizing (84 -> img_size) is bilinear with antialiasing, skipped when the size already matches.
    """
    n = len(episode.frames)
    idx = [operator.index(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    for i in idx:
        if not 0 <= i < n:
            raise IndexError(f"{episode.path or 'episode'}: view index {i} out of range for {n} views")
    if not idx:
        return torch.zeros(0, 3, img_size, img_size, dtype=torch.uint8)
    data = [torch.frombuffer(bytearray(episode.frames[i]), dtype=torch.uint8) for i in idx]
    try:
        images = _decode_jpeg(data)
    except RuntimeError:
        for i, d in zip(idx, data):  # find which view is at fault, for the message
            try:
                _decode_jpeg(d)
            except RuntimeError as e:
                raise EpisodeError(f"{episode.path or '<episode>'}: view {i}: undecodable JPEG ({e})") from None
        raise
    if len({tuple(im.shape) for im in images}) != 1:
        raise EpisodeError(f"{episode.path or '<episode>'}: views {idx} differ in size")
    # decode_jpeg's (3, H, W) results are views of (H, W, 3) memory: stack them as such (no transpose)
    views = torch.stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2)  # (V, 3, H, W) uint8
    if views.shape[-2:] != (img_size, img_size):
        # uint8 channels-last in and out: torch's fast antialiased kernel; an 8-bit source loses nothing
        views = F.interpolate(views, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    return views.contiguous()


def pose_vectors(cameras) -> torch.Tensor:
    """Camera poses (..., 5) = x, y, z, yaw, pitch -> model pose vectors (..., 7) float32 =
    ``[x, y, z, cos(yaw), sin(yaw), cos(pitch), sin(pitch)]``.

    This is the order of the original GEN code. DeepMind's GQN reader puts sin before cos
    (``[x, y, z, sin yaw, cos yaw, sin pitch, cos pitch]``); do not mix the two.
    """
    cams = torch.as_tensor(cameras, dtype=torch.float32)
    if cams.shape[-1:] != (len(CAMERA_FIELDS),):
        raise ValueError(f"cameras must have shape (..., 5), got {tuple(cams.shape)}")
    x, y, z, yaw, pitch = cams.unbind(-1)
    return torch.stack([x, y, z, yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()], dim=-1)  # (..., 7)


# ---- inspection ------------------------------------------------------------------------------------
def episode_digests(episode: Episode) -> tuple[str, str]:
    """(frames_sha256, cameras_sha256): sha256 of the concatenated JPEG bytes, in order, and of the
    float32 cameras in C order (the same bytes whether hashed as (N, 5) or (1, N, 5))."""
    frames = hashlib.sha256()
    for f in episode.frames:
        frames.update(f)
    cameras = hashlib.sha256(np.ascontiguousarray(episode.cameras, dtype="<f4").tobytes())
    return frames.hexdigest(), cameras.hexdigest()


def episode_info(path: str | os.PathLike) -> dict:
    """The ``info`` record of one episode file: path, frames, height, width, x/y/yaw ranges, sha256s."""
    episode = load_episode(path)
    try:  # the image size is read from the first view alone
        image = _decode_jpeg(torch.frombuffer(bytearray(episode.frames[0]), dtype=torch.uint8))
    except RuntimeError as e:
        raise EpisodeError(f"{episode.path}: view 0: undecodable JPEG ({e})") from None
    frames_sha, cameras_sha = episode_digests(episode)
    cams = episode.cameras

    def span(column: int) -> list[float]:
        return [float(cams[:, column].min()), float(cams[:, column].max())]

    return {
        "path": episode.path,
        "frames": len(episode),
        "height": int(image.shape[-2]),
        "width": int(image.shape[-1]),
        "x_range": span(CAMERA_FIELDS.index("x")),
        "y_range": span(CAMERA_FIELDS.index("y")),
        "yaw_range": span(CAMERA_FIELDS.index("yaw")),
        "frames_sha256": frames_sha,
        "cameras_sha256": cameras_sha,
    }
