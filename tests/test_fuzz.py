"""Property-based fuzzing of the episode reader and the TFRecord reader (issue 6).

Random bytes and mutated real files (truncated, bytes flipped, inserted, deleted) are read; the only
outcomes allowed are a correct read or the documented error naming the file:

* ``load_episode``: an Episode that passes validation, or EpisodeError whose message starts with the path.
  Legacy files must also read exactly as the restricted unpickler alone reads them (the fast path may only
  decide for files in the original layout), except that where the unpickler refuses a file for one frame's
  corrupt text, the fast path refuses that frame when it is read (EpisodeError naming file and frame).
* TFRecord, read as the converter reads it: framing and CRCs -> TFRecordError naming the file; a record's
  tf.train.Example -> ValueError("malformed tf.train.Example ..."), whose callers add file and record;
  its content -> EpisodeError naming file and record; otherwise JPEG frames with 5 cameras floats each.

Any other exception fails the test (hypothesis then shrinks it to a minimal input and prints it); a read
that takes more than ``TIME_LIMIT`` seconds fails as a hang, and is reported like any other failure. The
examples are derandomized: every run, on every machine, reads the same inputs, and a failure prints the
falsifying example and the blob that reproduces it. Runs in well under a minute on 2 CPU cores.
"""

import gzip
import signal
import struct
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import utils.data.episodes as dataset
from utils.data import legacy_pickle
from tests.test_convert import example, field, tfrecord_bytes
from tests.test_dataset import tiny_episode
from utils.data.convert import episode_arrays
from utils.data.episodes import Episode, EpisodeError, load_episode, save_episode
from utils.data.tfrecord import TFRecordError, iter_records, masked_crc32c, parse_example

LEGACY_EPISODE = "train/0.pt"  # in the real mazes' folder (the real_mazes fixture)
TFRECORD = "tfrecord/0000-of-sample.tfrecord"
# Seconds for one read: a hang guard, not a speed test (a legacy episode takes ~10 ms, the shared TFRecord
# ~0.1 s, so a read past it is stuck, not slow).
TIME_LIMIT = 20

FUZZ = settings(
    max_examples=60,
    deadline=None,  # one example reads a 1.8 MB episode or a 3.5 MB TFRecord: timing varies on a shared machine
    database=None,  # no .hypothesis/ folder in the repository
    derandomize=True,  # the same examples on every run (also the conftest's profile; explicit here)
    print_blob=True,  # a failure prints @reproduce_failure(...) beside the falsifying example
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# ---- mutations -----------------------------------------------------------------------------------------
# Offsets near the start and the end hit the headers and trailers (pickle opcodes, zip directory, gzip
# trailer, TFRecord framing) more often than uniform offsets into megabytes of JPEG data would.
OFFSET = st.one_of(st.integers(0, 600), st.integers(-600, -1), st.integers(0, 1 << 31))
EDIT = st.one_of(
    st.tuples(st.just("truncate"), OFFSET),
    st.tuples(st.just("flip"), OFFSET, st.integers(1, 255)),
    st.tuples(st.just("insert"), OFFSET, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), OFFSET, st.integers(1, 64)),
)
EDITS = st.lists(EDIT, min_size=1, max_size=4)
# Flips that keep a file's length and change a byte's UTF-8 class (ASCII, continuation, lead) in its text.
FLIPS = st.lists(st.tuples(st.just("flip"), st.integers(0, 1 << 31), st.sampled_from([0x40, 0x80, 0xC0])),
                 min_size=1, max_size=3)


def mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for kind, offset, *arg in edits:
        at = offset % (len(buf) + 1)  # negative offsets count from the end
        if kind == "truncate":
            del buf[at:]
        elif kind == "flip" and at < len(buf):
            buf[at] ^= arg[0]
        elif kind == "insert":
            buf[at:at] = arg[0]
        elif kind == "delete":
            del buf[at:at + arg[0]]
    return bytes(buf)


class Hang(BaseException):
    """BaseException, so that the readers' ``except Exception`` cannot turn it into a read error. It becomes
    an AssertionError once out of the reader (``time_limit``): hypothesis treats a BaseException as an
    interruption, which it neither shrinks nor reports with the falsifying example."""


@contextmanager
def time_limit(seconds: float = TIME_LIMIT):
    def expire(signum, frame):
        raise Hang(f"read took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except Hang as hang:
        raise AssertionError(f"hang: {hang}") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---- the allowed outcomes -----------------------------------------------------------------------------
def read_episode(path):
    """load_episode(path) -> the Episode with its frames read into a list, or the EpisodeError; a frame
    refused when it is read (a legacy frame's corrupt text) is listed as its EpisodeError. Anything else
    propagates (and fails)."""
    try:
        with time_limit():
            episode = load_episode(path)
            frames = [frame_or_error(episode.frames, i) for i in range(len(episode.frames))]
    except EpisodeError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        return e
    assert isinstance(episode, Episode) and episode.path == str(path)
    n = len(frames)
    assert n >= 1
    for i, frame in enumerate(frames):
        if isinstance(frame, EpisodeError):
            assert str(frame).startswith(f"{path}: frame {i}: "), str(frame)
        else:
            assert type(frame) is bytes and frame.startswith(b"\xff\xd8")
    assert episode.cameras.dtype == np.float32 and episode.cameras.shape == (n, 5)
    assert episode.cameras.flags.c_contiguous and np.isfinite(episode.cameras).all()
    return Episode(frames, episode.cameras, episode.path)


def frame_or_error(frames, i):
    try:
        return frames[i]
    except EpisodeError as e:
        return e


def same_outcome(a, b) -> bool:
    if isinstance(a, EpisodeError) or isinstance(b, EpisodeError):
        return type(a) is type(b) and str(a) == str(b)
    return a.frames == b.frames and a.cameras.tobytes() == b.cameras.tobytes()


def read_tfrecord(path) -> list:
    """Read a TFRecord file as the converter does; returns one outcome per record (the episode's
    (frames, cameras) or the record's error), ending with the TFRecordError if the framing breaks."""
    outcomes = []
    try:
        with time_limit():
            for index, payload in iter_records(path):
                where = f"{path}: record {index}"
                try:
                    frames, cameras = episode_arrays(parse_example(payload), where)
                    episode = dataset._validated(frames, cameras, where)
                except EpisodeError as e:
                    assert str(e).startswith(f"{where}: "), str(e)
                    outcomes.append(e)
                except ValueError as e:  # parse_example's documented error; callers add file and record
                    assert type(e) is ValueError and str(e).startswith("malformed tf.train.Example"), repr(e)
                    outcomes.append(e)
                else:
                    assert all(f.startswith(b"\xff\xd8") for f in episode.frames)
                    assert episode.cameras.shape == (len(episode.frames), 5)
                    outcomes.append(episode)
    except TFRecordError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        outcomes.append(e)
    return outcomes


# ---- episode files -------------------------------------------------------------------------------------
LEGACY_PREFIX = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03."  # magic + protocol pickles


@FUZZ
@given(prefix=st.sampled_from([b"", b"\x1f\x8b", b"PK\x03\x04", LEGACY_PREFIX, LEGACY_PREFIX + b"\x80\x02"]),
       body=st.binary(max_size=4096))
def test_random_bytes_episode(tmp_path, prefix, body):
    path = tmp_path / "random.pt"
    path.write_bytes(prefix + body)
    assert isinstance(read_episode(path), EpisodeError) or prefix + body == b""  # nothing random is an episode


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    """One small episode in our format, plain and gzipped: {suffix: bytes}."""
    folder = tmp_path_factory.mktemp("own")
    frames, cameras = tiny_episode(3)
    files = {}
    for name in ("ep.pt", "ep.pt.gz"):
        save_episode(folder / name, frames, cameras)
        files[name[2:]] = (folder / name).read_bytes()
    return files


@FUZZ
@given(suffix=st.sampled_from([".pt", ".pt.gz"]), edits=EDITS)
def test_mutated_own_format(tmp_path, own_files, suffix, edits):
    path = tmp_path / f"mutated{suffix}"
    path.write_bytes(mutate(own_files[suffix], edits))
    read_episode(path)


@pytest.fixture(scope="module")
def legacy_path(real_mazes):
    return real_mazes / LEGACY_EPISODE


@pytest.fixture(scope="module")
def legacy_raw(legacy_path):
    return legacy_path.read_bytes()


@FUZZ
@given(edits=EDITS, gzipped=st.booleans())
def test_mutated_legacy_file(tmp_path, legacy_raw, edits, gzipped):
    data = mutate(legacy_raw, edits)
    path = tmp_path / ("mutated.pt.gz" if gzipped else "mutated.pt")
    path.write_bytes(gzip.compress(data, compresslevel=1) if gzipped else data)
    assert_reads_as_the_unpickler(tmp_path, path, data)


@FUZZ
@given(frame=st.integers(0, 299), edits=st.one_of(EDITS, FLIPS))
def test_legacy_file_with_a_mutated_frame(tmp_path, legacy_path, legacy_raw, frame, edits):
    """Edits inside one frame's text: the fast path reads the file when its length is unchanged, and the
    frame's own conversion decides when it is read."""
    start, end = load_episode(legacy_path).frames._spans[frame]
    path = tmp_path / "mutated.pt"
    data = legacy_raw[:start] + mutate(legacy_raw[start:end], edits) + legacy_raw[end:]
    path.write_bytes(data)
    assert_reads_as_the_unpickler(tmp_path, path, data)


def assert_reads_as_the_unpickler(tmp_path, path, data: bytes):
    """A legacy file (``data``, uncompressed) reads as the restricted unpickler alone reads it, except
    that the unpickler refuses the whole file for a frame's corrupt text where the fast path refuses just
    that frame, when it is read. Each such frame must be one the unpickler refuses the file for on its own;
    given text the unpickler accepts, the two must then read the file identically."""
    outcome, restricted = read_episode(path), restricted_only(path)
    refused = [i for i, f in enumerate(getattr(outcome, "frames", [])) if isinstance(f, EpisodeError)]
    if refused:
        assert isinstance(restricted, EpisodeError) and "Unicode" in str(restricted), str(restricted)
        spans = load_episode(path).frames._spans  # where each frame's text lies in the file
        placeholders = {i: b"\xff\xd8" + b"x" * (spans[i][1] - spans[i][0] - 4) for i in refused}

        def repaired(frames):
            raw = bytearray(data)
            for i in frames:
                raw[slice(*spans[i])] = placeholders[i].decode("latin-1").encode("utf-8")
            out = tmp_path / "repaired.pt"
            out.write_bytes(raw)
            return out

        for i in refused:  # the file with every other refused frame repaired: the unpickler still refuses it
            assert isinstance(restricted_only(repaired(set(refused) - {i})), EpisodeError), f"frame {i}"
        path = repaired(refused)
        restricted = restricted_only(path)
        outcome = Episode([placeholders.get(i, f) for i, f in enumerate(outcome.frames)], outcome.cameras, str(path))
    assert same_outcome(outcome, restricted)


def restricted_only(path):
    """What the restricted unpickler alone (the fast path switched off) makes of a file."""
    with mock.patch.object(legacy_pickle, "_read_legacy_fast", lambda raw, path: None):
        return read_episode(path)


@pytest.fixture(scope="module")
def jpeg_frame():
    return tiny_episode(1)[0][0]


@FUZZ
@given(edits=EDITS)
def test_mutated_jpeg_frame(jpeg_frame, edits):
    """A frame's header check agrees with libjpeg: a frame it passes decodes (if at all) to the size it
    read, never above the limit; anything else is the RuntimeError that callers report as undecodable."""
    frame = mutate(jpeg_frame, edits)
    assume(frame.startswith(b"\xff\xd8"))  # loading refuses other frames
    size = dataset._jpeg_size(frame)
    try:
        with time_limit():
            image = dataset._decode_jpeg(torch.frombuffer(bytearray(frame), dtype=torch.uint8))
    except RuntimeError:
        return
    assert size is not None and tuple(image.shape[-2:]) == size and max(size) <= dataset._MAX_JPEG_SIDE


# ---- TFRecord ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tfrecord_raw(real_mazes):
    return (real_mazes / TFRECORD).read_bytes()  # part of the real data: missing, it is an error, not a skip


@settings(FUZZ, max_examples=40)  # each example CRC-checks up to 3.5 MB
@given(edits=EDITS)
def test_mutated_tfrecord_file(tmp_path, tfrecord_raw, edits):
    path = tmp_path / "mutated.tfrecord"
    path.write_bytes(mutate(tfrecord_raw, edits))
    read_tfrecord(path)


def small_example() -> bytes:
    frames, cameras = tiny_episode(2)
    return example({"frames": frames, "cameras": cameras.reshape(-1), "steps": np.array([3, -1], np.int64)})


@FUZZ
@given(edits=EDITS)
def test_mutated_example_in_valid_framing(tmp_path, edits):
    """Mutated tf.train.Example payloads, framed with correct CRCs so that they reach parse_example."""
    path = tmp_path / "example.tfrecord"
    path.write_bytes(tfrecord_bytes([mutate(small_example(), edits)]))
    assert len(read_tfrecord(path)) == 1


@FUZZ
@given(length=st.one_of(st.integers(0, 1 << 20), st.integers(0, (1 << 64) - 1)), tail=st.binary(max_size=64))
def test_any_record_length_with_valid_length_crc(tmp_path, length, tail):
    """A header whose length CRC is right but whose length is anything (up to 2**64 - 1)."""
    header = struct.pack("<Q", length)
    path = tmp_path / "framing.tfrecord"
    path.write_bytes(header + struct.pack("<I", masked_crc32c(header)) + tail)
    read_tfrecord(path)


# ---- regressions found by the fuzzing above -------------------------------------------------------------
def test_huge_record_length_is_a_truncation_error(tmp_path):
    """A length (with a valid CRC) beyond the file's end was passed to read(): MemoryError or OverflowError
    instead of TFRecordError."""
    for length in (1 << 40, (1 << 64) - 1):
        header = struct.pack("<Q", length)
        path = tmp_path / "huge.tfrecord"
        path.write_bytes(header + struct.pack("<I", masked_crc32c(header)) + b"abc")
        with pytest.raises(TFRecordError, match=r"huge\.tfrecord: record 0: truncated"):
            list(iter_records(path))


def test_varint_beyond_64_bits_is_truncated_like_protobuf():
    """A 10-byte varint above 2**64 in an Int64List raised OverflowError (not parse_example's ValueError,
    so the converter crashed); protobuf keeps the low 64 bits."""
    too_big = bytes([0xFF] * 9 + [0x7F])  # 2**70 - 1 -> low 64 bits all set -> -1
    for int64_list in (field(1, too_big), b"\x08" + too_big):  # packed, and one value per field
        features = parse_example(field(1, field(1, field(1, b"k") + field(2, field(3, int64_list)))))
        assert features["k"].dtype == np.int64 and features["k"].tolist() == [-1]


# ---- the fuzzing itself: reproducible, and it says what failed ------------------------------------------
def test_fuzzing_is_derandomized_and_a_failure_names_its_example():
    """The same examples on every run; a failing property, and a read that hangs, report the falsifying
    example (hypothesis adds it to the failure as a note) and its reproduction blob."""
    assert settings.default.derandomize and FUZZ.derandomize and FUZZ.print_blob

    drawn = []

    @settings(FUZZ, max_examples=20)
    @given(st.binary(max_size=32))
    def record(data):
        drawn.append(data)

    record()
    first, drawn[:] = list(drawn), []
    record()
    assert drawn == first and len(set(first)) > 1

    @settings(FUZZ, max_examples=50)
    @given(st.integers(0, 100))
    def fails(number):
        assert number < 7

    @settings(FUZZ, max_examples=50)
    @given(st.integers(0, 100))
    def hangs(number):
        with time_limit(0.05):
            if number >= 7:
                signal.pause()  # woken by the alarm: Hang, reported as an AssertionError

    for prop, message in ((fails, "assert 7 < 7"), (hangs, "hang: read took more than 0.05 s")):
        with pytest.raises(AssertionError, match=message) as failure:
            prop()
        notes = "\n".join(getattr(failure.value, "__notes__", []))
        assert f"Falsifying example: {prop.__name__}(" in notes and "number=7" in notes, notes
        assert "@reproduce_failure(" in notes, notes
