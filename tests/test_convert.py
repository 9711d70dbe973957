"""TFRecord reading (framing, CRC32C, tf.train.Example) and the TFRecord -> episode converter."""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, SHARED_MAZES, requires_shared
from utils import convert
from utils.dataset import episode_digests, load_episode
from utils.tfrecord import TFRecordError, _crc_bytewise, crc32c, iter_records, masked_crc32c, parse_example

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

    path.write_bytes(b"\x07" + tfrecord_bytes(payloads)[1:])  # record 0's length
    with pytest.raises(TFRecordError, match="record 0: length CRC"):
        list(iter_records(path))

    path.write_bytes(tfrecord_bytes(payloads)[:-10])
    with pytest.raises(TFRecordError, match="record 2: truncated"):
        list(iter_records(path))


# ---- the shared TFRecord written by TensorFlow ---------------------------------------------------------
@pytest.fixture
def src(tmp_path):
    if not TFRECORD.exists():
        pytest.skip(f"needs {TFRECORD} (the shared data folder is absent)")
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
    assert [p.name for p in (dst / "train").iterdir()] == ["0000-of-sample-0000.pt"]


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
    result = subprocess.run([sys.executable, "utils/convert.py", str(tmp_path / "empty"), str(tmp_path / "out")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("python utils/convert.py: error: ") and result.stderr.count("\n") == 1
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
