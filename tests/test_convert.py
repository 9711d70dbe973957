"""TFRecord reading (framing, CRC32C, tf.train.Example) and the TFRecord -> episode converter."""

import errno
import hashlib
import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, SHARED_MAZES, requires_shared
from utils.data import convert
from utils.data.episodes import episode_digests, load_episode
from utils.data.tfrecord import TFRecordError, _crc_bytewise, crc32c, iter_records, masked_crc32c, parse_example

TFRECORD = SHARED_MAZES / "tfrecord" / "0000-of-sample.tfrecord"
MANIFEST = SHARED_MAZES / "tfrecord" / "0000-of-sample.manifest.json"


# ---- a minimal writer, to build test inputs ----------------------------------------------------------
def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:  # length-delimited field
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def example(features: dict, packed=True) -> bytes:
    entries = b""
    for name, values in features.items():
        if isinstance(values, list):
            kind = field(1, b"".join(field(1, v) for v in values))
        elif values.dtype == np.float32 and packed:
            kind = field(2, field(1, values.astype("<f4").tobytes()))
        elif values.dtype == np.float32:
            kind = field(2, b"".join(varint(1 << 3 | 5) + struct.pack("<f", v) for v in values))
        else:
            kind = field(3, field(1, b"".join(varint(int(v)) for v in values)))
        entries += field(1, field(1, name.encode()) + field(2, kind))
    return field(1, entries)


def tfrecord_bytes(payloads) -> bytes:
    out = b""
    for p in payloads:
        length = struct.pack("<Q", len(p))
        out += length + struct.pack("<I", masked_crc32c(length)) + p + struct.pack("<I", masked_crc32c(p))
    return out


# ---- CRC32C and framing --------------------------------------------------------------------------------
def test_crc32c_known_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(bytes(32)) == 0x8A9136AA and crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4
    assert crc32c(bytes(range(32))) == 0x46DD794E


@pytest.mark.parametrize("size", [1, 4095, 4096, 5000, 70_001])
def test_crc32c_lanes_agree_with_bytewise(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc_bytewise(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    assert crc32c(data[size // 3:], crc32c(data[: size // 3])) == crc32c(data)  # continuation


def test_parse_example_packed_unpacked_int64():
    floats = np.array([1.5, -2.25, 3e-8, 0.0], dtype=np.float32)
    ints = np.array([0, 1, -1, 2**40, -(2**63)], dtype=np.int64)
    for packed in (True, False):
        parsed = parse_example(example({"frames": [b"\xff\xd8a", b""], "cameras": floats, "ids": ints}, packed))
        assert parsed["frames"] == [b"\xff\xd8a", b""]
        assert parsed["cameras"].dtype == np.float32 and np.array_equal(parsed["cameras"], floats)
        assert parsed["ids"].dtype == np.int64 and np.array_equal(parsed["ids"], ints)
    with pytest.raises(ValueError, match="malformed"):
        parse_example(example({"cameras": floats})[:-3])


def test_iter_records_and_corruption(tmp_path):
    payloads = [b"first", os.urandom(10_000), b""]
    path = tmp_path / "x.tfrecord"
    path.write_bytes(tfrecord_bytes(payloads))
    assert [p for _, p in iter_records(path)] == payloads
    assert [i for i, _ in iter_records(path, select=lambda i: i != 1)] == [0, 2]

    data = bytearray(path.read_bytes())
    data[12 + 5 + 4 + 12 + 500] ^= 0x01  # a byte inside record 1's payload
    path.write_bytes(bytes(data))
    with pytest.raises(TFRecordError, match=rf"{path}: record 1: data CRC"):
        list(iter_records(path))
    assert len(list(iter_records(path, verify=False))) == 3
    reported = []  # the header is intact, so the records after the damaged payload can still be read
    assert [i for i, _ in iter_records(path, damaged=reported.append)] == [0, 2]
    assert reported == [f"{path}: record 1: data CRC mismatch (corrupt payload)"]

    path.write_bytes(b"\x07" + tfrecord_bytes(payloads)[1:])  # record 0's length
    with pytest.raises(TFRecordError, match="record 0: length CRC"):
        list(iter_records(path))

    path.write_bytes(tfrecord_bytes(payloads)[:-10])
    with pytest.raises(TFRecordError, match="record 2: truncated"):
        list(iter_records(path))


# ---- the shared TFRecord written by TensorFlow ---------------------------------------------------------
@pytest.fixture
def src(tmp_path, real_mazes):
    if not TFRECORD.exists():  # the folder is there (real_mazes) but not the sample: fail like a missing folder
        pytest.fail(f"needs {TFRECORD}, absent from {real_mazes}", pytrace=False)
    (tmp_path / "src" / "train").mkdir(parents=True)
    shutil.copy(TFRECORD, tmp_path / "src" / "train")
    return tmp_path / "src"


@requires_shared
def test_convert_matches_manifest_and_legacy_files(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert convert.main([str(src), str(dst), "--no_progress"]) == 0
    outputs = sorted((dst / "train").iterdir())
    assert [p.name for p in outputs] == [f"0000-of-sample-{i:04d}.pt" for i in range(3)]
    assert not (dst / "test").exists()
    for out, entry in zip(outputs, json.loads(MANIFEST.read_text())):
        episode = load_episode(out)
        assert len(episode) == entry["n_frames"] == 300 and episode.cameras.shape == (300, 5)
        assert episode_digests(episode) == (entry["frames_sha256"], entry["cameras_sha256"])
        legacy = load_episode(SHARED_MAZES / "train" / entry["source"])
        assert episode.frames == legacy.frames
        assert episode.cameras.tobytes() == legacy.cameras.tobytes()

    # resumable: a second run skips all, and redoes only what is missing
    stamps = [p.stat().st_mtime_ns for p in outputs]
    capsys.readouterr()
    assert convert.main([str(src), str(dst), "--no_progress"]) == 0
    assert "0 episodes written, 3 already there" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    outputs[1].unlink()
    assert convert.main([str(src), str(dst), "--no_progress"]) == 0
    assert "1 episodes written, 2 already there" in capsys.readouterr().out
    assert episode_digests(load_episode(outputs[1]))[0] == json.loads(MANIFEST.read_text())[1]["frames_sha256"]
    assert sorted(p.name for p in (dst / "train").iterdir()) == [p.name for p in outputs]  # no temp files


@requires_shared
def test_convert_reports_corrupt_record(src, tmp_path, capsys):
    path = src / "train" / TFRECORD.name
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[12 + length + 4 + 12 + 1000] ^= 0x40  # inside record 1's payload
    path.write_bytes(bytes(data))
    dst = tmp_path / "dst"
    assert convert.main([str(src), str(dst), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert f"{path}: record 1: data CRC mismatch" in err
    assert sorted(p.name for p in (dst / "train").iterdir()) == ["0000-of-sample-0000.pt", "0000-of-sample-0002.pt"]


@requires_shared
def test_convert_workers_across_splits(src, tmp_path):
    (src / "test").mkdir()
    shutil.copy(TFRECORD, src / "test" / "0001-of-sample.tfrecord")
    results = convert.convert(src, tmp_path / "dst", workers=2, show_progress=False)
    assert [(r.written, r.skipped, r.errors) for r in results] == [(3, 0, [])] * 2
    test_out = sorted((tmp_path / "dst" / "test").iterdir())
    assert [p.name for p in test_out] == [f"0001-of-sample-{i:04d}.pt" for i in range(3)]
    first = json.loads(MANIFEST.read_text())[0]
    assert episode_digests(load_episode(test_out[0])) == (first["frames_sha256"], first["cameras_sha256"])


def test_convert_script_missing_src_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "utils.data.convert", str(tmp_path / "empty"), str(tmp_path / "out")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("python -m utils.data.convert: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and "train/*.tfrecord" in result.stderr
    assert not (tmp_path / "out").exists()


def test_convert_bad_example_content(tmp_path, capsys):
    good_jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 20
    records = [
        example({"frames": [good_jpeg] * 2, "cameras": np.zeros(10, np.float32)}),
        example({"frames": [good_jpeg] * 2, "cameras": np.zeros(9, np.float32)}),  # wrong camera count
        example({"cameras": np.zeros(10, np.float32)}),  # no frames
    ]
    (tmp_path / "src" / "test").mkdir(parents=True)
    (tmp_path / "src" / "test" / "t.tfrecord").write_bytes(tfrecord_bytes(records))
    assert convert.main([str(tmp_path / "src"), str(tmp_path / "dst"), "--no_progress"]) == 1
    err = capsys.readouterr().err
    assert "t.tfrecord: record 1: 9 camera floats for 2 frames" in err and "t.tfrecord: record 2: no 'frames'" in err
    assert [p.name for p in (tmp_path / "dst" / "test").iterdir()] == ["t-0000.pt"]
    assert hashlib.sha256(b"".join(load_episode(tmp_path / "dst" / "test" / "t-0000.pt").frames)).hexdigest() == \
        hashlib.sha256(good_jpeg * 2).hexdigest()


# ---- OS errors stop the run (issue: disk full, DST a file) -----------------------------------------------
def tiny_src(root, names=("test/t",), records=3):
    """SRC with one tfrecord per name ("split/stem"), each of ``records`` good 2-frame episodes."""
    good_jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 20
    payload = example({"frames": [good_jpeg] * 2, "cameras": np.arange(10, dtype=np.float32)})
    for name in names:
        path = root / f"{name}.tfrecord"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tfrecord_bytes([payload] * records))
    return root


def test_convert_disk_full_stops_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    src, dst = tiny_src(tmp_path / "src"), tmp_path / "dst"
    real_save, calls = convert.save_episode, []

    def save_then_disk_full(path, frames, cameras):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk raises it
        real_save(path, frames, cameras)

    monkeypatch.setattr(convert, "save_episode", save_then_disk_full)
    assert convert.main([str(src), str(dst), "--no_progress"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"python -m utils.data.convert: error: {dst / 'test' / 't-0001.pt'}: No space left on device")
    assert "run the same command again to resume" in err and "record 1" not in err  # not a per-record error
    assert len(calls) == 2 and out == ""  # stopped at the failure, no summary
    first = dst / "test" / "t-0000.pt"
    assert [p.name for p in (dst / "test").iterdir()] == [first.name]
    stamp = first.stat().st_mtime_ns

    monkeypatch.setattr(convert, "save_episode", real_save)
    assert convert.main([str(src), str(dst), "--no_progress"]) == 0
    assert "2 episodes written, 1 already there, 0 errors" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp
    for p in sorted((dst / "test").iterdir()):
        assert load_episode(p).cameras.tobytes() == np.arange(10, dtype=np.float32).tobytes()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_convert_script_dst_is_a_file(tmp_path, workers):
    src = tiny_src(tmp_path / "src", names=("train/a", "test/b"), records=1)
    dst = tmp_path / "dst"
    dst.write_text("a file the user saved")
    result = subprocess.run([sys.executable, "-m", "utils.data.convert", str(src), str(dst), "--workers", workers,
                             "--no_progress"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("python -m utils.data.convert: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr and f"{dst}/" in result.stderr and "Not a directory" in result.stderr
    assert dst.read_text() == "a file the user saved"


def test_worker_stop_skips_the_remaining_files(tmp_path, monkeypatch):
    """Once one file stopped the run on an OS error, pool workers start no further file."""
    src = tiny_src(tmp_path / "src", names=("train/a", "test/b"), records=1)
    (tmp_path / "file").write_text("")
    stop = multiprocessing.Event()
    monkeypatch.setattr(convert, "_stop", stop)
    monkeypatch.setattr(convert, "_progress_counter", multiprocessing.Value("q", 0))
    assert convert._convert_job((src / "train" / "a.tfrecord", tmp_path / "out" / "train")).written == 1
    assert not stop.is_set()
    with pytest.raises(convert.ConvertError, match="Not a directory"):
        convert._convert_job((src / "test" / "b.tfrecord", tmp_path / "file" / "test"))
    assert stop.is_set()
    assert convert._convert_job((src / "test" / "b.tfrecord", tmp_path / "out" / "test")) is None
    assert not (tmp_path / "out" / "test").exists()


def test_convert_workers_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_:
        convert.parse_args(["src", "dst", "--workers", "0"])
    assert exit_.value.code == 2 and "error: argument --workers: expected int >= 1, got 0" in capsys.readouterr().err


# ---- protobuf merge semantics: a field seen twice ----------------------------------------------------------
def bytes_list(*values) -> bytes:  # a Feature's bytes_list (field 1)
    return field(1, b"".join(field(1, v) for v in values))


def float_list(*values) -> bytes:  # a Feature's float_list (field 2), packed
    return field(2, field(1, np.array(values, "<f4").tobytes()))


def int64_list(*values) -> bytes:  # a Feature's int64_list (field 3), one varint per field
    return field(3, b"".join(b"\x08" + varint(v) for v in values))


def entry(key: str, *values: bytes) -> bytes:  # a Features map entry; each value a serialised Feature
    return field(1, field(1, key.encode()) + b"".join(field(2, v) for v in values))


# name: (serialised Example, what protobuf decodes it to)
MERGE_CASES = {
    # a Feature whose bytes_list appears twice: the lists are concatenated, not replaced
    "bytes_list twice": (field(1, entry("f", bytes_list(b"A") + bytes_list(b"B"))), {"f": [b"A", b"B"]}),
    "float_list twice": (field(1, entry("f", float_list(1.5) + float_list(-2.0, 3.0))),
                         {"f": np.array([1.5, -2.0, 3.0], np.float32)}),
    "int64_list twice": (field(1, entry("f", int64_list(7) + int64_list(-1, 2))),
                         {"f": np.array([7, -1, 2], np.int64)}),
    # the map entry's value appears twice: the two Features are merged
    "map value twice": (field(1, entry("f", bytes_list(b"A"), bytes_list(b"B", b"C"))), {"f": [b"A", b"B", b"C"]}),
    # a oneof: another kind replaces the list, and a kind seen again after it starts afresh
    "kind switched back": (field(1, entry("f", bytes_list(b"A") + float_list(1.0) + bytes_list(b"B"))), {"f": [b"B"]}),
    "kind switched in map value": (field(1, entry("f", bytes_list(b"A"), int64_list(5))),
                                   {"f": np.array([5], np.int64)}),
    # a repeated map key: the last entry wins, whole (map entries are not merged)
    "map key twice": (field(1, entry("f", bytes_list(b"A")) + entry("f", bytes_list(b"B"))), {"f": [b"B"]}),
    # Example.features twice: the maps are merged, key by key
    "features twice": (field(1, entry("f", bytes_list(b"A"))) + field(1, entry("g", int64_list(1)) +
                                                                      entry("f", bytes_list(b"B"))),
                       {"f": [b"B"], "g": np.array([1], np.int64)}),
    "no kind": (field(1, entry("f")), {"f": []}),
}


def same_features(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        type(a[k]) is type(b[k]) and (a[k] == b[k] if isinstance(a[k], list) else
                                      a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes())
        for k in a)


@pytest.mark.parametrize("case", MERGE_CASES)
def test_parse_example_merges_repeated_fields(case):
    payload, expected = MERGE_CASES[case]
    assert same_features(parse_example(payload), expected)


def protobuf_example_class():
    """tf.train.Example's message class, built from its schema with the protobuf library (no TensorFlow)."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="test_example.proto", package="t", syntax="proto3")
    for name, kind in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
        proto.message_type.add(name=name).field.add(name="value", number=1, type=kind, label=F.LABEL_REPEATED)
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name in enumerate(("BytesList", "FloatList", "Int64List"), 1):
        feature.field.add(name=f"list{number}", number=number, type=F.TYPE_MESSAGE, type_name=f".t.{name}",
                          label=F.LABEL_OPTIONAL, oneof_index=0)
    features = proto.message_type.add(name="Features")
    features.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, type_name=".t.Features.FeatureEntry",
                       label=F.LABEL_REPEATED)
    map_entry = features.nested_type.add(name="FeatureEntry")
    map_entry.options.map_entry = True
    map_entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    map_entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, type_name=".t.Feature", label=F.LABEL_OPTIONAL)
    proto.message_type.add(name="Example").field.add(name="features", number=1, type=F.TYPE_MESSAGE,
                                                     type_name=".t.Features", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Example"))


def protobuf_features(example_class, payload: bytes) -> dict:
    decoded = {}
    for key, feature in example_class.FromString(payload).features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else []
        decoded[key] = (values if kind in ("list1", None) else
                        np.array(values, np.float32 if kind == "list2" else np.int64))
    return decoded


def test_parse_example_merges_as_protobuf_does():
    """Cross-check with the protobuf library where it is installed: the cases above and random sequences of
    repeated lists, kinds, map values and keys."""
    example_class = protobuf_example_class()
    for payload, expected in MERGE_CASES.values():
        assert same_features(protobuf_features(example_class, payload), expected)
    rng = np.random.default_rng(0)
    makers = [lambda: bytes_list(*[bytes([int(b)]) for b in rng.integers(0, 256, rng.integers(0, 3))]),
              lambda: float_list(*rng.standard_normal(rng.integers(0, 3))),
              lambda: int64_list(*[int(v) for v in rng.integers(-5, 5, rng.integers(0, 3))])]
    for _ in range(300):
        entries = b"".join(entry(str(rng.integers(0, 2)), *[b"".join(makers[rng.integers(0, 3)]()
                                                                     for _ in range(rng.integers(0, 3)))
                                                            for _ in range(rng.integers(0, 3))])
                           for _ in range(rng.integers(1, 4)))
        payload = field(1, entries) * int(rng.integers(1, 3))
        assert same_features(parse_example(payload), protobuf_features(example_class, payload)), payload
