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
  exact layout (``utils.data.legacy_pickle``) and converts each frame only when it is used (so a frame
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

import gzip
import hashlib
import io
import operator
import os
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.atomic import atomic_path
from utils.data.lazy_frames import JPEG_SOI, EpisodeError, LazyFrames
from utils.data.legacy_pickle import read_legacy

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

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_EPISODE_BYTES = 64 << 20  # a decompressed episode file; a real one is about 1.2 MB


@dataclass(frozen=True, eq=False)
class Episode:
    frames: Sequence[bytes]  # N JPEG byte strings, in order (a list, or a file's LazyFrames)
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


# ---- loading (the legacy format's reader is utils.data.legacy_pickle) ---------------------------------
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
    return LazyFrames(blob.numpy(), list(zip(offs, offs[1:])), path, text=False), cameras.numpy()


def _check_camera_count(cameras, n: int, path: str) -> None:
    if tuple(cameras.shape) != (n, len(CAMERA_FIELDS)):
        raise EpisodeError(f"{path}: cameras have shape {tuple(cameras.shape)}, expected ({n}, 5) for {n} frames")


def _validated(frames, cameras, path: str) -> Episode:
    """Check an episode's content and return it in canonical form: a list of bytes (or a file's
    LazyFrames, checked without reading its frames) + (N, 5) float32."""
    if not isinstance(frames, (list, tuple, LazyFrames)) or not frames:
        raise EpisodeError(f"{path}: episode has no frames")
    if isinstance(frames, LazyFrames):  # bytes by construction; checked without reading them
        bad = frames.first_non_jpeg
    elif not all(isinstance(f, bytes) for f in frames):
        raise EpisodeError(f"{path}: frames must be JPEG byte strings")
    else:
        bad = next((i for i, f in enumerate(frames) if not f.startswith(JPEG_SOI)), None)
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
    return Episode(frames=frames if isinstance(frames, LazyFrames) else list(frames), cameras=cameras, path=path)


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
        reader = _read_ours if raw[:4] == _ZIP_MAGIC else read_legacy
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
