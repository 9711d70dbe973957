"""Episode files: listing, safe loading (legacy pickles, gzip, our format), saving, decoding, poses, info."""

import copy as copy_module
import gzip
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from collections import namedtuple

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image

import utils.data.episodes as dataset
from utils.data import legacy_pickle
from utils.data import files
from tests.conftest import REPO_ROOT
from utils.data.episodes import (
    EPISODE_SUFFIXES,
    Episode,
    EpisodeError,
    decode_views,
    episode_digests,
    episode_info,
    list_episodes,
    load_episode,
    pose_vectors,
    save_episode,
)
from utils.data.hotel import view_indices

# Tests of the real episodes take their folder from the real_mazes fixture (tests/conftest.py).
MANIFEST = "tfrecord/0000-of-sample.manifest.json"  # in that folder
INFO_KEYS = ["path", "frames", "height", "width", "x_range", "y_range", "yaw_range", "frames_sha256", "cameras_sha256"]


# ---- helpers -----------------------------------------------------------------------------------------
def jpeg(color=(200, 30, 60), size=84) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def tiny_episode(n=4):
    frames = [jpeg((40 * i % 256, 100, 255 - 40 * i % 256)) for i in range(n)]
    cameras = np.stack([np.linspace(-0.3, 0.2, n), np.linspace(0.1, -0.2, n), np.zeros(n),
                        np.linspace(-3, 3, n), np.zeros(n)], axis=1).astype(np.float32)  # (n, 5)
    return frames, cameras


def legacy_bytes(*objects, protocol=2) -> bytes:
    """The legacy torch.save stream layout: magic, protocol version, sys_info, object, storage keys."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    header = [0x1950A86A20F9469CFC6C, 1001, sys_info]
    return b"".join(pickle.dumps(o, protocol=protocol) for o in [*header, *objects, []])


@pytest.fixture
def main_scene(monkeypatch):
    """A Scene namedtuple that pickles as __main__.Scene, like the original tools' files."""
    scene = namedtuple("Scene", ["frames", "cameras"])
    scene.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "Scene", scene, raising=False)
    return scene


def write_legacy(path, scene_cls, frames, cameras):
    frames_array = np.empty(len(frames), dtype=object)
    frames_array[:] = frames
    path.write_bytes(legacy_bytes(scene_cls(frames_array, cameras)))
    return path


class Payload:
    """Unpickling this runs `touch MARKER`: what a malicious episode file would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---- listing -----------------------------------------------------------------------------------------
def test_list_episodes_filters_and_sorts(tmp_path):
    for name in ["b.pt.gz", "a.pt", "c.png", "notes.txt", ".a.pt.1234.tmp", ".hidden.pt", "x.pt.bak"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.pt").mkdir()
    assert list_episodes(tmp_path) == [tmp_path / "a.pt", tmp_path / "b.pt.gz"]
    assert EPISODE_SUFFIXES == (".pt", ".pt.gz")


def test_list_episodes_missing_or_empty(tmp_path):
    with pytest.raises(EpisodeError, match="nope"):
        list_episodes(tmp_path / "nope")
    (tmp_path / "map.png").write_bytes(b"x")
    with pytest.raises(EpisodeError, match=str(tmp_path)):
        list_episodes(tmp_path)


# ---- the shared real episodes --------------------------------------------------------------------------
def test_list_shared_train(real_mazes):
    paths = list_episodes(real_mazes / "train")
    assert len(paths) == 31 and paths == sorted(paths) and all(p.suffix == ".pt" for p in paths)


def test_load_shared_episode_values(real_mazes):
    episode = load_episode(real_mazes / "train" / "0.pt")
    assert isinstance(episode, Episode) and episode.path == str(real_mazes / "train" / "0.pt")
    assert len(episode) == len(episode.frames) == 300
    assert all(isinstance(f, bytes) and f[:2] == b"\xff\xd8" for f in episode.frames)
    assert episode.cameras.shape == (300, 5) and episode.cameras.dtype == np.float32
    x, y, z, yaw, pitch = episode.cameras.T
    assert (x >= -0.4).all() and (x <= 0.3).all() and (y >= -0.4).all() and (y <= 0.3).all()
    assert (z == 0).all() and (pitch == 0).all() and (np.abs(yaw) <= np.pi).all()


def test_info_sha256_matches_manifest(real_mazes):
    manifest = json.loads((real_mazes / MANIFEST).read_text())
    for entry in manifest:
        info = episode_info(real_mazes / "train" / entry["source"])
        assert list(info) == INFO_KEYS
        assert (info["frames"], info["height"], info["width"]) == (entry["n_frames"], 84, 84)
        assert info["frames_sha256"] == entry["frames_sha256"]
        assert info["cameras_sha256"] == entry["cameras_sha256"]


def test_legacy_gzip_and_gzip_detected_by_magic(real_mazes, tmp_path):
    raw = (real_mazes / "train" / "1.pt").read_bytes()
    reference = load_episode(real_mazes / "train" / "1.pt")
    for name in ["1.pt.gz", "misnamed.pt"]:  # gzip is recognised by its bytes, whatever the name
        (tmp_path / name).write_bytes(gzip.compress(raw))
        episode = load_episode(tmp_path / name)
        assert episode.frames == reference.frames
        np.testing.assert_array_equal(episode.cameras, reference.cameras)


def pickle_globals(data: bytes) -> set:
    """The globals a (multi-pickle) stream refers to, read with pickletools (nothing is executed)."""
    stream, found = io.BytesIO(data), set()
    while stream.tell() < len(data):
        for op, arg, _ in pickletools.genops(stream):
            if op.name == "GLOBAL":
                found.add(arg.replace("numpy._core.", "numpy.core."))
    return found


def test_our_legacy_writer_matches_real_files(real_mazes, tmp_path, main_scene):
    """The test helper writes what the original tools wrote (so the synthetic cases below are realistic)."""
    real = load_episode(real_mazes / "train" / "2.pt")
    copy = write_legacy(tmp_path / "2.pt", main_scene, real.frames, real.cameras[None])  # (1, 300, 5)
    expected = {"__main__ Scene", "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype", "_codecs encode"}
    real_globals = pickle_globals((real_mazes / "train" / "2.pt").read_bytes())
    assert real_globals == pickle_globals(copy.read_bytes()) == expected
    again = load_episode(copy)
    assert again.frames == real.frames and np.array_equal(again.cameras, real.cameras)


def restricted_only(raw: bytes, path: str, monkeypatch):
    """What the restricted unpickler alone makes of a legacy stream (the fast path switched off)."""
    with monkeypatch.context() as m:
        m.setattr(legacy_pickle, "_read_legacy_fast", lambda raw, path: None)
        return legacy_pickle.read_legacy(raw, path)


def test_legacy_fast_path_identical_to_restricted_unpickler(real_mazes, monkeypatch):
    """Every shared file takes the fast path, with byte-identical frames and identical cameras."""
    for path in list_episodes(real_mazes / "train"):
        raw = path.read_bytes()
        fast = legacy_pickle._read_legacy_fast(raw, str(path))
        assert fast is not None, f"{path} did not take the fast path"
        frames, cameras = restricted_only(raw, str(path), monkeypatch)
        assert fast[0] == list(frames) and all(type(f) is bytes for f in fast[0])
        assert fast[1].dtype == cameras.dtype and fast[1].shape == cameras.shape == (1, 300, 5)
        assert fast[1].tobytes() == cameras.tobytes() and fast[1].flags.writeable


def frame_text(raw: bytes, frame: int) -> int:
    """Where frame ``frame``'s UTF-8 payload starts in a legacy file (after BINUNICODE and its length)."""
    at = -1
    for _ in range(frame + 1):
        at = raw.index(b"h\x04X", at + 1)
    return at + 7


@pytest.mark.parametrize("change", ["refused global", "memo index", "cameras length", "cameras not latin-1"])
def test_legacy_fast_path_leaves_anything_else_to_the_unpickler(real_mazes, tmp_path, monkeypatch, change):
    """A file that differs from the original layout in any way is read (or refused) by the restricted
    unpickler exactly as without the fast path, with an error naming the file."""
    raw = (real_mazes / "train" / "3.pt").read_bytes()
    first = frame_text(raw, 0)
    cameras = raw.rindex(b"h\x04X") + 7  # the cameras' UTF-8 payload
    if change == "refused global":  # same layout, but the codec call is now os.system's
        data = raw.replace(b"c_codecs\nencode\n", b"cposix\nsystem\n", 1)
    elif change == "memo index":  # the first frame's str memoised under the encode global's index
        at = raw.index(b"q\x13h\x06", first)
        data = raw[:at] + b"q\x04" + raw[at + 2:]
    elif change == "cameras not latin-1":  # U+0100 (valid UTF-8) at the start of the cameras' text
        data = raw[:cameras] + b"\xc4\x80" + raw[cameras + 2:]
    else:  # the cameras' payload one float short: change its length and drop 4 of its bytes
        at = cameras - 4
        size = int.from_bytes(raw[at:at + 4], "little")
        data = raw[:at] + (size - 4).to_bytes(4, "little") + raw[at + 4:at + 4 + size - 4] + raw[at + 4 + size:]
    assert legacy_pickle._read_legacy_fast(data, "changed.pt") is None
    path = tmp_path / "changed.pt"
    path.write_bytes(data)
    with pytest.raises(EpisodeError) as err:
        load_episode(path)
    assert str(err.value).startswith(str(path))
    monkeypatch.setattr(legacy_pickle, "_read_legacy_fast", lambda raw, path: None)
    with pytest.raises(EpisodeError) as expected:
        load_episode(path)
    assert str(err.value) == str(expected.value)
    if change == "refused global":
        assert "refused to load global posix.system" in str(err.value)


@pytest.mark.parametrize("text", [b"\xc4\x80", b"\xc3\xc3"], ids=["code point 256", "not UTF-8"])
def test_a_legacy_frame_whose_text_unpickling_refuses_is_refused_when_used(real_mazes, tmp_path, monkeypatch, text):
    """The fast path converts a frame only when it is used: a frame the unpickler would refuse raises
    EpisodeError naming the file and the frame then, and the other frames read as they always did."""
    raw = (real_mazes / "train" / "3.pt").read_bytes()
    at = frame_text(raw, 1) + 4  # after frame 1's JPEG start marker (4 bytes of text): a new character
    path = tmp_path / "changed.pt"
    path.write_bytes(raw[:at] + text + raw[at + 2:])
    episode = load_episode(path)  # the layout is the original's: the fast path reads it
    with pytest.raises(EpisodeError, match=rf"^{path}: frame 1: corrupt episode file \(Unicode"):
        episode.frames[1]
    with pytest.raises(EpisodeError, match=rf"^{path}: frame 1: "):
        decode_views(episode, [0, 1], 16)
    original = load_episode(real_mazes / "train" / "3.pt")
    assert episode.frames[0] == original.frames[0] and episode.frames[2:] == original.frames[2:]
    assert np.array_equal(episode.cameras, original.cameras)
    monkeypatch.setattr(legacy_pickle, "_read_legacy_fast", lambda raw, path: None)
    with pytest.raises(EpisodeError, match="Unicode"):  # the unpickler refuses the whole file
        load_episode(path)


# ---- security ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["as the episode", "as the magic number", "inside the frames", "gzipped"])
def test_malicious_pickle_refused_and_not_run(tmp_path, main_scene, where):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    if where == "as the episode":
        data = legacy_bytes(Payload(marker))
    elif where == "as the magic number":
        data = pickle.dumps(Payload(marker), protocol=2)
    elif where == "inside the frames":
        data = legacy_bytes(main_scene([jpeg(), Payload(marker)], np.zeros((1, 2, 5), np.float32)))
    else:
        path = tmp_path / "evil.pt.gz"
        data = gzip.compress(legacy_bytes(Payload(marker)))
    path.write_bytes(data)
    with pytest.raises(EpisodeError, match=r"refused.*(posix|os)\.system") as err:
        load_episode(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_malicious_zip_refused_and_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"frames": Payload(marker)}, path)  # a zip-format torch.save carrying the payload
    with pytest.raises(EpisodeError, match="evil.pt"):
        load_episode(path)
    assert not marker.exists()


class ForgedObjectDtype:
    """Pickles as numpy.dtype("O8") whose state clears the object flags."""

    def __reduce__(self):
        return np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0)


class ForgedObjectArray:
    """Pickles as an object array whose 'data' is raw bytes: in numpy's own unpickling these bytes would
    become object pointers (a crash at best)."""

    def __reduce__(self):
        reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
        return reconstruct, (np.ndarray, (1,), b"b"), (1, (1,), ForgedObjectDtype(), False, b"\x41" * 8)


class CalledNdarray:
    """Pickles as a call numpy.ndarray((1,), dtype("O8"), buffer) - the same trick through the constructor."""

    def __reduce__(self):
        return np.ndarray, ((1,), np.dtype("O"), b"\x41" * 8)


@pytest.mark.parametrize("forged", [ForgedObjectArray, CalledNdarray])
def test_forged_numpy_state_refused(tmp_path, main_scene, forged):
    path = tmp_path / "forged.pt"
    path.write_bytes(legacy_bytes(main_scene(forged(), np.zeros((1, 1, 5), np.float32))))
    with pytest.raises(EpisodeError, match="forged.pt"):
        load_episode(path)


def test_refuses_other_globals_and_codecs_misuse(tmp_path, main_scene):
    path = tmp_path / "odd.pt"
    path.write_bytes(legacy_bytes(main_scene([jpeg()], torch.zeros(1, 5))))  # a tensor is not episode data
    with pytest.raises(EpisodeError, match="odd.pt"):
        load_episode(path)


# ---- corrupt or invalid files ----------------------------------------------------------------------------
def test_corrupt_and_truncated_files(tmp_path, main_scene):
    frames, cameras = tiny_episode()
    good_legacy = write_legacy(tmp_path / "legacy.pt", main_scene, frames, cameras[None]).read_bytes()
    save_episode(tmp_path / "ours.pt", frames, cameras)
    save_episode(tmp_path / "ours.pt.gz", frames, cameras)
    cases = {
        "empty.pt": b"",
        "garbage.pt": os.urandom(4096),
        "text.pt": b"hello, I am not an episode\n",
        "legacy_truncated.pt": good_legacy[: len(good_legacy) // 2],
        "legacy_header_only.pt": good_legacy[:60],
        "ours_truncated.pt": (tmp_path / "ours.pt").read_bytes()[:-300],
        "gz_truncated.pt.gz": (tmp_path / "ours.pt.gz").read_bytes()[:-100],
        "gz_garbage.pt.gz": b"\x1f\x8b" + os.urandom(200),
        "wrong_object.pt": legacy_bytes({"frames": frames}),
    }
    assert load_episode(tmp_path / "legacy.pt").frames == frames
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EpisodeError) as err:
            load_episode(tmp_path / name)
        assert str(tmp_path / name) in str(err.value), name
    with pytest.raises(EpisodeError, match="missing.pt"):
        load_episode(tmp_path / "missing.pt")


def test_wrong_camera_count_and_bad_values(tmp_path, main_scene):
    frames, cameras = tiny_episode(4)
    for name, cams, pattern in [
        ("short.pt", cameras[None, :3], r"shape \(3, 5\), expected \(4, 5\)"),
        ("wide.pt", np.zeros((4, 6), np.float32), "expected"),
        ("nan.pt", np.where(np.eye(4, 5, dtype=bool), np.nan, cameras).astype(np.float32), "non-finite"),
    ]:
        path = write_legacy(tmp_path / name, main_scene, frames, cams)
        with pytest.raises(EpisodeError, match=pattern) as err:
            load_episode(path)
        assert str(path) in str(err.value)
    with pytest.raises(EpisodeError, match="ours.pt"):
        save_episode(tmp_path / "ours.pt", frames, cameras[:3])
    assert not (tmp_path / "ours.pt").exists()


def test_not_jpeg_and_no_frames(tmp_path, main_scene):
    frames, cameras = tiny_episode(4)
    frames[2] = b"GIF89a" + frames[2][2:]
    with pytest.raises(EpisodeError, match="frame 2 is not a JPEG"):
        load_episode(write_legacy(tmp_path / "gif.pt", main_scene, frames, cameras))
    with pytest.raises(EpisodeError, match="no frames"):
        load_episode(write_legacy(tmp_path / "none.pt", main_scene, [], np.zeros((0, 5), np.float32)))


def test_undecodable_jpeg_names_file_and_view(tmp_path):
    frames, cameras = tiny_episode(4)
    frames[1] = b"\xff\xd8" + b"\x00" * 200  # JPEG start marker, garbage after it
    save_episode(tmp_path / "bad.pt", frames, cameras)
    episode = load_episode(tmp_path / "bad.pt")  # loading decodes nothing, so it succeeds
    assert decode_views(episode, [0, 2, 3], 16).shape == (3, 3, 16, 16)
    with pytest.raises(EpisodeError, match=r"bad\.pt: view 1: undecodable JPEG"):
        decode_views(episode, [0, 1], 16)


# ---- our format ------------------------------------------------------------------------------------------
def test_a_save_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    frames, cameras = tiny_episode(5)
    path = tmp_path / "ep.pt"
    save_episode(path, frames, cameras)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_episode(path, frames[:3], cameras[:3])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ep.pt"]


@pytest.mark.parametrize("name", ["ep.pt", "ep.pt.gz"])
def test_save_load_round_trip(tmp_path, name):
    frames, cameras = tiny_episode(5)
    path = tmp_path / name
    save_episode(path, frames, cameras)
    save_episode(path, frames, cameras)  # overwriting is fine (atomic replace)
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary files left behind
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    episode = load_episode(path)
    assert episode.frames == frames and episode.path == str(path)
    assert episode.cameras.dtype == np.float32 and np.array_equal(episode.cameras, cameras)
    raw = path.read_bytes()
    record = torch.load(io.BytesIO(gzip.decompress(raw) if name.endswith(".gz") else raw), weights_only=True)
    assert set(record) == {"frames", "frame_offsets", "cameras"}
    assert record["frames"].dtype == torch.uint8 and record["frame_offsets"].dtype == torch.int64
    assert record["frame_offsets"].tolist() == [0, *np.cumsum([len(f) for f in frames]).tolist()]
    assert record["cameras"].dtype == torch.float32 and record["cameras"].shape == (5, 5)


def test_shared_episode_survives_our_format(real_mazes, tmp_path):
    real = load_episode(real_mazes / "train" / "3.pt")
    save_episode(tmp_path / "3.pt.gz", real.frames, real.cameras)
    again = load_episode(tmp_path / "3.pt.gz")
    assert again.frames == real.frames and np.array_equal(again.cameras, real.cameras)


# ---- decoding --------------------------------------------------------------------------------------------
def test_decode_only_requested_views(tmp_path, monkeypatch):
    frames, cameras = tiny_episode(6)
    save_episode(tmp_path / "ep.pt", frames, cameras)
    calls = []
    real_decode = torchvision.io.decode_jpeg

    def spy(data, *args, **kwargs):
        calls.append([bytes(t.numpy()) for t in (data if isinstance(data, list) else [data])])
        return real_decode(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", spy)
    episode = load_episode(tmp_path / "ep.pt")
    assert calls == []  # loading decodes nothing
    views = decode_views(episode, [4, 0, 2], 32)
    assert calls == [[frames[4], frames[0], frames[2]]]
    assert views.shape == (3, 3, 32, 32)


def test_decode_views_values():
    frames, cameras = tiny_episode(3)
    episode = Episode(frames, cameras)
    full = decode_views(episode, [1], 84)  # no resize: exactly the decoded pixels / 255
    expected = torch.from_numpy(np.array(Image.open(io.BytesIO(frames[1])).convert("RGB"))).permute(2, 0, 1)
    assert full.dtype == torch.float32 and full.shape == (1, 3, 84, 84)
    assert torch.equal(full[0], expected.float() / 255)
    small = decode_views(episode, np.array([1, 1]), 16)  # numpy indices, repeats allowed
    assert small.shape == (2, 3, 16, 16) and 0 <= small.min() and small.max() <= 1
    assert torch.allclose(small.mean(dim=(2, 3)), full.mean(dim=(2, 3)).expand(2, 3), atol=2 / 255)
    assert decode_views(episode, [], 16).shape == (0, 3, 16, 16)
    with pytest.raises(IndexError):
        decode_views(episode, [3], 16)


def test_a_training_batch_carries_uint8_pixels_and_the_model_gets_decode_views_floats():
    """Loader workers pass uint8 (a quarter of the bytes); model_inputs makes the same floats decode_views
    would have."""
    from utils.data.hotel import HotelSteps
    steps = HotelSteps(REPO_ROOT / "data_samples" / "train", img_size=32, batch_size=4,
                       grids=[1], context_views=3, seed=0)
    batch = steps[5]
    assert batch.context_frames.dtype == batch.query_frames.dtype == torch.uint8
    context, _, query, *_ = batch.model_inputs(torch.device("cpu"))
    assert context.dtype == query.dtype == torch.float32
    assert torch.equal(context, batch.context_frames.float() / 255) and torch.equal(query, batch.query_frames / 255)
    plan = steps.plan(5)
    episode = load_episode(steps.paths[int(plan.episodes[0, 0])])
    indices = view_indices(plan.views[0, 0].tolist(), len(episode.frames))
    assert torch.equal(query[0, 0], decode_views(episode, indices, 32)[-1])
    assert torch.equal(context[0], decode_views(episode, indices[:-1], 32))



def test_planned_views_are_distinct_frames_drawn_uniformly_and_prefixes_keep_theirs():
    """As DeepMind's reader draws them: without replacement, so the query is never one of the context views."""
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3, 5)  # how often each of 5 frames is drawn as view 0, view 1, the query
    for _ in range(6000):
        fractions = torch.rand(3, generator=g).tolist()
        indices = view_indices(fractions, 5)
        assert len(set(indices)) == 3
        counts[torch.arange(3), torch.tensor(indices)] += 1
    assert (counts / 6000 - 0.2).abs().max() < 0.02, counts
    for _ in range(50):
        fractions = torch.rand(9, generator=g).tolist()
        full = view_indices(fractions, 300)
        assert len(set(full)) == 9
        assert view_indices(fractions[:3] + fractions[-1:], 300) == full[:3] + full[-1:]
    few = view_indices(torch.rand(6, generator=g).tolist(), 4)  # fewer frames than views: rounds of all 4
    assert sorted([few[-1], *few[:3]]) == [0, 1, 2, 3]

def distinct_episode(i: int, n: int = 4):
    """Episode i of a test folder: frames and cameras unlike any other i's, so a batch shows which it used."""
    frames = [jpeg(((60 * i + 40 * j) % 256, (90 * i) % 256, 255 - 40 * j)) for j in range(n)]
    return frames, tiny_episode(n)[1] + np.float32(0.01 * i)


def damaged_folder(folder, damage: str, frames=range(4)):
    """Episodes a, c, e intact and b with ``frames`` damaged (4 frames each); returns b's path."""
    for i, name in enumerate("ace"):
        save_episode(folder / f"{name}.pt", *distinct_episode(2 * i))
    damaged = folder / "b.pt"
    good, cameras = distinct_episode(1)
    if damage == "undecodable JPEG":
        save_episode(damaged, [b"\xff\xd8" + bytes(200) if j in frames else f for j, f in enumerate(good)], cameras)
    else:
        damaged.write_bytes(original_layout(good, cameras))
        for frame in frames:
            corrupt_frame_text(damaged, frame)
    return damaged


def batches_equal(a, b) -> bool:
    return all(torch.equal(x, getattr(b, k)) for k, x in a._asdict().items() if isinstance(x, torch.Tensor))


@pytest.mark.parametrize("damage", ["undecodable JPEG", "legacy frame text"])
def test_the_training_loader_replaces_an_episode_whose_views_are_damaged(tmp_path, damage):
    """A file that loads but whose planned views cannot be read is replaced, like an unreadable file, by
    the next good episode, and reported once in bad_files."""
    from utils.data.hotel import HotelSteps, build_hotels, episode_views
    damaged = damaged_folder(tmp_path, damage)
    steps = HotelSteps(tmp_path, img_size=16, batch_size=3, grids=[1], context_views=2, seed=0)
    step = next(s for s in range(100) if 1 in steps.plan(s).episodes.flatten().tolist())
    with pytest.warns(UserWarning, match=rf"skipping damaged episode: {damaged}: (view|frame) \d"):
        batch = steps[step]
    assert batch.bad_files == (str(damaged),)
    replaced = lambda i, fractions, taken: episode_views(load_episode(steps.paths[2 if i == 1 else i]),  # noqa: E731
                                                         fractions, 16)
    assert batches_equal(batch, build_hotels(steps.plan(step), replaced))


def test_a_partly_damaged_episode_does_not_make_a_step_depend_on_the_steps_before(tmp_path, recwarn):
    """b's frame 0 is damaged, its others are not: a step that uses only b's good frames sees b, whether
    or not this worker met frame 0 before (a resumed or re-sharded run sees the same batches)."""
    from utils.data.hotel import HotelSteps
    damaged_folder(tmp_path, "undecodable JPEG", frames=[0])
    steps = HotelSteps(tmp_path, img_size=16, batch_size=3, grids=[1], context_views=1, seed=0)

    def frames_of_b(step):  # the frames of b (episode 1) that the step plans to use
        plan = steps.plan(step)
        at = (plan.episodes == 1).nonzero().tolist()
        return {i for h, m in at for i in view_indices(plan.views[h, m].tolist(), 4)}

    uses_frame_0 = next(s for s in range(200) if 0 in frames_of_b(s))
    good_only = next(s for s in range(200) if frames_of_b(s) and 0 not in frames_of_b(s))
    fresh = HotelSteps(tmp_path, img_size=16, batch_size=3, grids=[1], context_views=1, seed=0)[good_only]
    assert steps[uses_frame_0].bad_files == (str(tmp_path / "b.pt"),)
    after = steps[good_only]
    assert after.bad_files == () and batches_equal(after, fresh)


@pytest.mark.parametrize("grid", [1, 2, 3])
def test_every_tensor_of_a_training_batch_is_contiguous(grid):
    """Pinned and contiguous, a tensor's copy to the GPU is asynchronous; torch's copy_ sends a strided
    one through a pageable temporary, and a copy from pageable memory may wait for the GPU's queued work."""
    from utils.data.hotel import HotelSteps
    steps = HotelSteps(REPO_ROOT / "data_samples" / "train", img_size=16, batch_size=9, grids=[grid],
                       context_views=2, seed=0)
    batch = steps[0]
    for name, value in batch._asdict().items():
        if isinstance(value, torch.Tensor):
            assert value.is_contiguous(), name


def test_decode_shared_views_match_pil_resize(real_mazes):
    episode = load_episode(real_mazes / "train" / "0.pt")
    ours = decode_views(episode, [7, 150], 64)
    pil = [np.asarray(Image.open(io.BytesIO(episode.frames[i])).convert("RGB").resize((64, 64), Image.BILINEAR))
           for i in [7, 150]]
    pil = torch.from_numpy(np.stack(pil)).permute(0, 3, 1, 2).float() / 255
    assert (ours - pil).abs().mean() < 0.01  # same antialiased bilinear filter, up to decoder/rounding


# ---- poses ---------------------------------------------------------------------------------------------
def test_pose_vectors_order():
    x, y, z, yaw, pitch = 0.1, -0.2, 0.3, 0.5, -0.25
    poses = pose_vectors(np.array([[x, y, z, yaw, pitch]], dtype=np.float32))
    expected = torch.tensor([[x, y, z, np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)]], dtype=torch.float32)
    assert poses.dtype == torch.float32 and torch.allclose(poses, expected)
    assert pose_vectors(torch.zeros(2, 3, 5)).shape == (2, 3, 7)
    with pytest.raises(ValueError):
        pose_vectors(torch.zeros(4, 7))


# ---- info CLI ------------------------------------------------------------------------------------------
def test_info_cli_json_text_and_errors(tmp_path, capsys):
    frames, cameras = tiny_episode(4)
    save_episode(tmp_path / "a.pt", frames, cameras)
    save_episode(tmp_path / "c.pt.gz", frames, cameras)
    (tmp_path / "b.pt").write_bytes(b"corrupt")
    assert files.main(["info", "--json", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == [str(tmp_path / "a.pt"), str(tmp_path / "c.pt.gz")]  # b.pt did not stop c
    assert all(list(r) == INFO_KEYS for r in rows)
    assert rows[0]["frames"] == 4 and (rows[0]["height"], rows[0]["width"]) == (84, 84)
    assert rows[0]["x_range"] == [float(cameras[:, 0].min()), float(cameras[:, 0].max())]
    assert rows[0]["frames_sha256"] == rows[1]["frames_sha256"]
    assert err.count("error:") == 1 and str(tmp_path / "b.pt") in err
    assert files.main(["info", str(tmp_path / "a.pt")]) == 0
    out, _ = capsys.readouterr()
    assert "4 frames 84x84" in out and rows[0]["cameras_sha256"] in out


# ---- rewrite: legacy episodes into our format ---------------------------------------------------------

def test_rewrite_keeps_every_byte_and_resumes(real_mazes, tmp_path, capsys):
    sources = sorted((real_mazes / "train").glob("*.pt"))[:3]
    src = tmp_path / "src"
    src.mkdir()
    for path in sources:
        (src / path.name).symlink_to(path)
    gz = src / "zipped.pt.gz"  # a compressed legacy file comes out plain
    gz.write_bytes(gzip.compress(sources[0].read_bytes()))
    dst = tmp_path / "dst"
    assert files.main(["rewrite", str(src), str(dst), "--no_progress"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == sorted([p.name for p in sources] + ["zipped.pt"])
    for path in sources:
        out = dst / path.name
        assert out.read_bytes()[:4] == b"PK\x03\x04", "our (zip) format"
        assert episode_digests(load_episode(out)) == episode_digests(load_episode(path))
    assert episode_digests(load_episode(dst / "zipped.pt")) == episode_digests(load_episode(sources[0]))
    stamp = (dst / sources[1].name).stat().st_mtime_ns
    (dst / sources[2].name).unlink()  # as if interrupted before the last file
    assert files.main(["rewrite", str(src), str(dst), "--no_progress"]) == 0
    assert (dst / sources[1].name).stat().st_mtime_ns == stamp, "finished episodes are not rewritten"
    assert episode_digests(load_episode(dst / sources[2].name)) == episode_digests(load_episode(sources[2]))


def corrupt_frame_text(path, frame: int):
    """Make a legacy file's frame ``frame`` text that unpickling refuses (U+0100), its layout unchanged."""
    raw = path.read_bytes()
    at = frame_text(raw, frame) + 4
    path.write_bytes(raw[:at] + b"\xc4\x80" + raw[at + 2:])
    return path


def original_layout(frames, cameras) -> bytes:
    """A legacy file byte for byte as the original tools (numpy 1) wrote it: the fast path's skeleton
    (checked against the real files above) around the frames' and cameras' latin-1 text in UTF-8."""
    texts = [bytes(b).decode("latin-1").encode("utf-8") for b in [*frames, np.asarray(cameras, "<f4").tobytes()]]
    parts = legacy_pickle._legacy_skeleton(len(frames))
    return b"".join(part + len(text).to_bytes(4, "little") + text for part, text in zip(parts, texts)) + parts[-1]


@pytest.mark.parametrize("fmt", ["legacy", "ours"])
def test_an_episodes_frames_behave_as_the_list_of_its_jpegs(tmp_path, fmt):
    """Frames are cut from the file when used; to the caller they are the list of JPEG bytes: indexing,
    slicing, length, equality, and an Episode pickles and copies."""
    frames, cameras = distinct_episode(3, n=5)
    path = tmp_path / "ep.pt"
    if fmt == "legacy":
        path.write_bytes(original_layout(frames, cameras))
    else:
        save_episode(path, frames, cameras)
    lazy = load_episode(path).frames
    assert not isinstance(lazy, list), "the lazy reader was not taken"
    assert len(lazy) == 5 and list(lazy) == frames and lazy == frames and lazy != frames[:4]
    assert lazy[-1] == frames[-1] and lazy[1:4] == frames[1:4] and lazy[::-2] == frames[::-2] and lazy[7:] == []
    assert all(type(f) is bytes for f in lazy)
    with pytest.raises(IndexError):
        lazy[5]
    for copy in (pickle.loads(pickle.dumps(load_episode(path))), copy_module.deepcopy(load_episode(path))):
        assert list(copy.frames) == frames and np.array_equal(copy.cameras, cameras) and copy.path == str(path)


def test_rewrite_names_unreadable_files_and_exits_non_zero(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    save_episode(src / "good.pt", [jpeg() for _ in range(3)], np.zeros((3, 5), np.float32))
    (src / "bad.pt").write_bytes(b"not an episode")
    (src / "text.pt").write_bytes(original_layout(*tiny_episode(3)))
    corrupt_frame_text(src / "text.pt", 2)
    assert files.main(["rewrite", str(src), str(tmp_path / "dst"), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert "bad.pt" in err and "text.pt: frame 2: " in err and "2 of 3 episodes" in err
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["good.pt"]
    assert files.main(["rewrite", str(src), str(src)]) == 2


# ---- pickle opcodes refused before unpickling ------------------------------------------------------------

LEGACY_HEAD = b"".join(pickle.dumps(obj, protocol=2) for obj in (legacy_pickle._LEGACY_MAGIC, 1001, {}))


@pytest.mark.parametrize("scene_pickle, reason", [
    # EMPTY_LIST, LONG_BINPUT 2**31 - 1: CPython's unpickler would grow its memo to 2**32 entries (32 GB)
    (b"\x80\x02]r\xff\xff\xff\x7f.", "memo index 2147483647 out of range"),
    (b"\x80\x02]q\x05.", "memo index 5 out of range"),  # BINPUT past the opcodes before it
    (b"\x80\x05\x96\x01\x00\x00\x00\x00\x00\x00\x00a\x98.", "BYTEARRAY8"),  # protocol 5 buffers
], ids=["huge-memo-index", "memo-index-ahead", "buffer"])
def test_damaged_pickle_opcodes_are_refused_before_they_run(tmp_path, scene_pickle, reason):
    path = tmp_path / "damaged.pt"
    path.write_bytes(LEGACY_HEAD + scene_pickle)
    with pytest.raises(EpisodeError, match=f"^{path}: corrupt episode file .*{reason}"):
        load_episode(path)


def test_memo_indices_in_order_are_accepted(tmp_path):
    path = tmp_path / "list.pt"
    path.write_bytes(LEGACY_HEAD + pickle.dumps([b"x"], protocol=2))  # memoises 0, 1, ...: passes the scan
    with pytest.raises(EpisodeError, match="holds a list, not a Scene"):
        load_episode(path)


# ---- a crafted file cannot change how later files read ------------------------------------------------------

def slots_build(module: str, name: str, **attributes) -> bytes:
    """A pickle: GLOBAL module.name, then BUILD (None, attributes): setattr on the object GLOBAL gave."""
    state = pickle.dumps((None, attributes), protocol=2)[2:-1]  # minus PROTO and STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + state + b"b."


@pytest.mark.parametrize("module, name, attribute, value", [
    ("__main__", "Scene", "frames", [b"\xff\xd8 not the file's frame"] * 4),
    ("__main__", "Scene", "cameras", np.zeros((1, 4, 5), np.float32)),
    ("_codecs", "encode", "__defaults__", ("latin1", "strict")),
    ("numpy.core.multiarray", "_reconstruct", "__name__", "changed"),
])
def test_a_pickle_cannot_change_the_readers_stand_ins(tmp_path, main_scene, module, name, attribute, value):
    """GLOBAL __main__ Scene + BUILD set the shared Scene class's frames/cameras accessors, so every later
    legacy file read by the unpickler gave the crafted file's frames or cameras."""
    frames, cameras = tiny_episode(4)
    later = write_legacy(tmp_path / "later.pt", main_scene, frames, cameras[None])
    stand_in = legacy_pickle._ALLOWED_GLOBALS[(module, name)]
    before = getattr(stand_in, attribute, None)
    crafted = tmp_path / "crafted.pt"
    crafted.write_bytes(LEGACY_HEAD + slots_build(module, name, **{attribute: value}))
    with pytest.raises(EpisodeError) as err:
        load_episode(crafted)
    assert getattr(stand_in, attribute, None) is before
    episode = load_episode(later)
    assert isinstance(episode.frames, list), "not read by the restricted unpickler"
    assert episode.frames == frames and np.array_equal(episode.cameras, cameras)
    assert str(err.value).startswith(f"{crafted}: corrupt episode file (UnpicklingError: refused to set '{attribute}'")


# ---- memory: refused before the big allocation -----------------------------------------------------------

def test_a_gzip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """gzip.decompress had no limit: 2 MB of gzip inflated to 2 GB before the reader refused it. Shown here
    with a 1 MiB limit and 16 MiB of zeros: Python's peak memory stays far below what inflating it takes."""
    monkeypatch.setattr(dataset, "_MAX_EPISODE_BYTES", 1 << 20, raising=False)
    path = tmp_path / "bomb.pt.gz"
    path.write_bytes(gzip.compress(bytes(16 << 20), compresslevel=1))  # 16 kB
    tracemalloc.start()
    try:
        with pytest.raises(EpisodeError) as err:
            load_episode(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak >> 20} MiB allocated"
    assert str(err.value).startswith(f"{path}: corrupt episode file (decompresses to more than 1 MiB")


def test_gzip_members_padding_and_truncation(tmp_path):
    """Still read as gzip.decompress read them: several members and zero padding; a cut member is refused."""
    frames, cameras = tiny_episode(3)
    save_episode(tmp_path / "ep.pt", frames, cameras)
    raw = (tmp_path / "ep.pt").read_bytes()
    path = tmp_path / "members.pt.gz"
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]) + bytes(8))
    assert load_episode(path).frames == frames
    path.write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(EpisodeError, match=f"^{path}: truncated"):
        load_episode(path)


def rezipped(raw: bytes, compress_type=zipfile.ZIP_STORED, copies_of=None, copies=0) -> bytes:
    """Our (zip) file's records rewritten with ``compress_type``; with ``copies`` more central-directory
    entries for record ``copies_of``, all pointing at its one stored copy."""
    source, out = zipfile.ZipFile(io.BytesIO(raw)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in source.infolist():
            z.writestr(info.filename, source.read(info.filename), compress_type=compress_type)
    data = out.getvalue()
    if not copies:
        return data
    end = data.rindex(b"PK\x05\x06")  # end of central directory (no zip64: the file is small)
    entries, size, start = struct.unpack_from("<HII", data, end + 10)
    at = start
    while True:  # find the record's central-directory entry
        name, extra, comment = struct.unpack_from("<3H", data, at + 28)
        entry = data[at:at + 46 + name + extra + comment]
        if entry[46:46 + name].decode() == copies_of:
            break
        at += len(entry)
    central = data[start:start + size] + entry * copies
    tail = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, entries + copies, entries + copies, len(central), start, 0)
    return data[:start] + central + tail


def test_a_zip_bomb_is_refused_before_torch_load(tmp_path):
    """torch.load inflates deflated records (1 MB of zip: 1 GB of zeros) and reads aliased ones (one
    stored record listed n times); an episode's records are stored, and no larger than the file."""
    frames, cameras = tiny_episode(3)
    save_episode(tmp_path / "ep.pt", frames, cameras)
    raw = (tmp_path / "ep.pt").read_bytes()
    path = tmp_path / "zipped.pt"
    path.write_bytes(rezipped(raw))  # stored records, written by another zip writer: fine
    assert load_episode(path).frames == frames
    for data in (rezipped(raw, zipfile.ZIP_DEFLATED), rezipped(raw, copies_of="archive/data/0", copies=3)):
        path.write_bytes(data)
        with pytest.raises(EpisodeError, match=rf"^{path}: corrupt episode file \(compressed or oversized zip"):
            load_episode(path)


class Allocated(BaseException):
    """Raised by a spy on the tensor methods that allocate; not an Exception, so no reader turns it into
    an EpisodeError."""


@pytest.mark.parametrize("tensor", ["frames", "frame_offsets", "cameras", "a slice"])
def test_a_tensor_that_does_not_fill_its_storage_is_refused_before_use(tmp_path, monkeypatch, tensor):
    """A stride-0 (expanded) tensor of one stored byte claimed 2**40 bytes, which tolist() or contiguous()
    then tried to make (and expanded cameras loaded as N equal poses)."""
    frames, cameras = tiny_episode(4)
    save_episode(tmp_path / "ep.pt", frames, cameras)
    record = torch.load(tmp_path / "ep.pt", weights_only=True)
    record[tensor if tensor != "a slice" else "cameras"] = {
        "frames": torch.tensor([0xFF], dtype=torch.uint8).expand(1 << 40),
        "frame_offsets": torch.tensor([0], dtype=torch.int64).expand(1 << 40),
        "cameras": torch.zeros(1, 5).expand(4, 5),
        "a slice": torch.zeros(8, 5)[:4],  # stores all 8 rows
    }[tensor]
    path = tmp_path / "crafted.pt"
    torch.save(record, path)

    def allocates(*args, **kwargs):
        raise Allocated

    monkeypatch.setattr(torch.Tensor, "tolist", allocates)
    monkeypatch.setattr(torch.Tensor, "contiguous", allocates)
    with pytest.raises(EpisodeError, match=f"^{path}: corrupt episode file \\(a tensor does not fill its storage"):
        load_episode(path)


def test_offsets_must_match_the_cameras(tmp_path):
    frames, cameras = tiny_episode(4)
    save_episode(tmp_path / "ep.pt", frames, cameras)
    record = torch.load(tmp_path / "ep.pt", weights_only=True)
    record["frame_offsets"] = torch.cat([record["frame_offsets"], record["frame_offsets"][-1:]])  # 5 frames
    torch.save(record, tmp_path / "ep.pt")
    with pytest.raises(EpisodeError, match=r"cameras have shape \(4, 5\), expected \(5, 5\) for 5 frames"):
        load_episode(tmp_path / "ep.pt")


def test_a_stream_the_opcode_scan_cannot_parse_is_refused(tmp_path, main_scene):
    """The scan that bounds memo indices gave up, silently, on a stream it could not parse, such as an INT
    "0x1" that the unpickler accepts; a LONG_BINPUT after it then grew the memo unchecked (index 2**29:
    a 13-byte file took 2.5 GB; 2**20 here: 16 MB)."""
    path = tmp_path / "memo.pt"
    path.write_bytes(LEGACY_HEAD + b"\x80\x02I0x1\nr" + (1 << 20).to_bytes(4, "little") + b".")
    with pytest.raises(EpisodeError, match=f"^{path}: truncated or corrupt file \\(ValueError: invalid literal"):
        load_episode(path)
    good = write_legacy(tmp_path / "good.pt", main_scene, *tiny_episode(4)).read_bytes()
    path.write_bytes(good[:len(good) // 2])
    with pytest.raises(EpisodeError, match=f"^{path}: truncated or corrupt file"):
        load_episode(path)


# ---- JPEG frame headers --------------------------------------------------------------------------------------

def with_frame_header(frame: bytes, height: int, width: int) -> bytes:
    """``frame`` with its start-of-frame header declaring height x width (the data is left as it was)."""
    at = frame.index(b"\xff\xc0")
    return frame[:at + 5] + struct.pack(">HH", height, width) + frame[at + 9:]


def test_a_frame_header_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    """A header declaring 20000 x 20000 (in 12 kB) decoded, to garbage and silently, in 3 GB; 1025 x 1025
    here. Headers up to 1024 per side pass, so do junk-free JPEGs of any size the data uses."""
    frames, cameras = tiny_episode(4)
    frames[1] = with_frame_header(frames[1], 1025, 84)
    frames[2] = b"\xff\xd8" + b"junk" + frames[2][2:]  # libjpeg skips junk and finds the header after it
    frames[3] = jpeg(size=16)
    path = tmp_path / "big.pt"
    save_episode(path, frames, cameras)
    episode = load_episode(path)
    assert decode_views(episode, [0], 16).shape == decode_views(episode, [3], 16).shape == (1, 3, 16, 16)
    with pytest.raises(EpisodeError, match=rf"^{path}: view 1: undecodable JPEG \(frame header declares 1025 x 84"):
        decode_views(episode, [0, 1], 16)
    with pytest.raises(EpisodeError, match=rf"^{path}: view 2: undecodable JPEG \(no JPEG frame header"):
        decode_views(episode, [2], 16)
    save_episode(path, [frames[1]], cameras[:1])
    with pytest.raises(EpisodeError, match=rf"^{path}: view 0: undecodable JPEG \(frame header declares"):
        episode_info(path)
    assert dataset._jpeg_size(with_frame_header(jpeg(), 1024, 1024)) == (1024, 1024)
    assert dataset._jpeg_size(jpeg(size=64)) == (64, 64)


def test_every_real_and_sample_frame_passes_the_header_check(real_mazes):
    paths = list_episodes(real_mazes / "train")[:3] + list_episodes(REPO_ROOT / "data_samples" / "train")[:3]
    assert {dataset._jpeg_size(f) for p in paths for f in load_episode(p).frames} == {(84, 84)}


# ---- rewrite and info: errors are one line ------------------------------------------------------------------

def test_rewrite_refuses_two_sources_with_one_target(tmp_path, capsys):
    """a.pt and a.pt.gz both became DST/a.pt: the second was skipped as done, and lost, with exit 0."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    save_episode(src / "a.pt", *distinct_episode(0))
    save_episode(src / "a.pt.gz", *distinct_episode(1))
    assert files.main(["rewrite", str(src), str(dst), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"python -m utils.data.files: error: {src / 'a.pt'} and {src / 'a.pt.gz'} would both be written "
                   f"to {dst / 'a.pt'}; rename one\n")
    assert not dst.exists()


def test_rewrite_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """DST a file, or a full disk: one line naming the path and exit 2, not a traceback; what was
    written stays, and no temporary file is left."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(2):
        save_episode(src / f"{i}.pt", *distinct_episode(i))
    dst.write_text("my notes")
    assert files.main(["rewrite", str(src), str(dst), "--no_progress"]) == 2
    assert capsys.readouterr().err.startswith(f"python -m utils.data.files: error: {dst}: cannot create")
    assert dst.read_text() == "my notes"
    dst.unlink()
    dst.mkdir()
    save_episode(dst / "0.pt", *distinct_episode(0))  # from an earlier run
    before = (dst / "0.pt").read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dataset.os, "fsync", disk_full)
    assert files.main(["rewrite", str(src), str(dst), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m utils.data.files: error: {dst / '1.pt'}: cannot write: "
                                                   "No space left on device")
    assert os.listdir(dst) == ["0.pt"] and (dst / "0.pt").read_bytes() == before


def test_info_into_a_closed_pipe_stops_quietly(tmp_path):
    """`info ... | head -1`: the reader has gone; a traceback (BrokenPipeError) was printed."""
    save_episode(tmp_path / "ep.pt", *tiny_episode(2))
    read, write = os.pipe()
    os.close(read)  # the first line written meets a closed pipe
    try:
        done = subprocess.run([sys.executable, "-m", "utils.data.files", "info", str(tmp_path / "ep.pt")],
                              cwd=REPO_ROOT, stdout=write, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, b"")
