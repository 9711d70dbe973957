"""Convert DeepMind's GQN TFRecord files into episode files, without TensorFlow.

    python -m utils.data.convert SRC DST [--workers N]        (from the repository root)

SRC holds ``train/*.tfrecord`` and/or ``test/*.tfrecord`` (the layout of the public ``gqn-dataset``
bucket's ``mazes`` folder). Every record (one ``tf.train.Example`` with ``frames``: 300 JPEGs and
``cameras``: 300 x 5 floats) becomes ``DST/<split>/<tfrecord stem>-<record index:04d>.pt`` in our episode
format (:func:`utils.data.episodes.save_episode`), JPEG bytes and camera floats unchanged.

Records are streamed one at a time; both CRCs of every record are checked. Files are spread over
``--workers`` processes. Outputs are written atomically, and outputs that already exist are skipped
without reading their records, so an interrupted run is resumed by running the same command again.
A corrupt record is reported with its file and index (the rest of that file is not trusted and left
unconverted); other files go on, and the exit status is 1. A missing SRC layout exits with status 2, and
so does an OS error (disk full, DST not a folder, an unreadable file): it stops the whole run with one line
naming the path; the episodes written so far are complete, and running the same command again resumes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from utils.command import number, print_error
from utils.data.episodes import CAMERA_FIELDS, EpisodeError, save_episode
from utils.data.tfrecord import TFRecordError, iter_records, parse_example

PROG = "python -m utils.data.convert"
SPLITS = ("train", "test")
TFRECORD_SUFFIX = ".tfrecord"


class ConvertError(Exception):
    """A problem that stops the whole run: nothing to convert (bad SRC layout), or an OS error."""


def stopped_by(error: OSError, path) -> ConvertError:
    """The run stops at an OS error rather than noting it per record: the next write (or file) would most
    likely fail alike (disk full, DST not a folder). Outputs are written atomically, so a rerun resumes."""
    where = f"{path}: " if path is not None else ""
    return ConvertError(f"{where}{error.strerror or error} (the episodes written so far are kept: "
                        "fix this and run the same command again to resume)")


@dataclass
class FileResult:
    tfrecord: str
    written: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def output_path(out_dir: Path, tfrecord: Path, index: int) -> Path:
    return out_dir / f"{tfrecord.stem}-{index:04d}.pt"


def find_jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(tfrecord file, output directory) for every SRC/<split>/*.tfrecord, in name order."""
    jobs = []
    for split in SPLITS:
        if (src / split).is_dir():
            jobs += [(f, dst / split) for f in sorted((src / split).glob("*" + TFRECORD_SUFFIX)) if f.is_file()]
    if not jobs:
        raise ConvertError(
            f"{src}: no {' or '.join(f'{s}/*{TFRECORD_SUFFIX}' for s in SPLITS)} found "
            "(SRC must be the folder holding the dataset's train/ and test/)"
        )
    return jobs


def episode_arrays(features: dict, where: str) -> tuple[list[bytes], np.ndarray]:
    """frames (list of JPEG bytes) and cameras (N, 5) float32 of one decoded Example."""
    frames, cameras = features.get("frames"), features.get("cameras")
    if not isinstance(frames, list) or not frames:
        raise EpisodeError(f"{where}: no 'frames' bytes list in the Example")
    if not isinstance(cameras, np.ndarray) or cameras.dtype != np.float32:
        raise EpisodeError(f"{where}: no 'cameras' float list in the Example")
    if cameras.size != len(frames) * len(CAMERA_FIELDS):
        raise EpisodeError(f"{where}: {cameras.size} camera floats for {len(frames)} frames (expected 5 per frame)")
    return frames, cameras.reshape(len(frames), len(CAMERA_FIELDS))  # (N, 5)


def convert_file(tfrecord: Path, out_dir: Path, progress: Callable[[int], None] = lambda n: None) -> FileResult:
    """Convert one TFRecord file; ``progress(n)`` is called with the number of input bytes dealt with.

    Bad records are noted in the result; an OS error raises ConvertError (see :func:`stopped_by`)."""
    result = FileResult(str(tfrecord))

    def wanted(index: int) -> bool:
        if output_path(out_dir, tfrecord, index).exists():
            result.skipped += 1
            return False
        return True

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        size, done = tfrecord.stat().st_size, 0
        for index, payload in iter_records(tfrecord, select=wanted, damaged=result.errors.append):
            where = f"{tfrecord}: record {index}"
            try:
                features = parse_example(payload)
            except ValueError as e:
                result.errors.append(f"{where}: {e}")
                continue
            path = output_path(out_dir, tfrecord, index)
            try:
                frames, cameras = episode_arrays(features, where)
                save_episode(path, frames, cameras)
            except EpisodeError as e:
                result.errors.append(f"{where}: {e}")
                continue
            except OSError as e:  # named by the episode, not by the hidden temp file it failed on
                raise stopped_by(e, path) from None
            result.written += 1
            done += len(payload) + 16  # + framing: length, two CRCs
            progress(len(payload) + 16)
    except TFRecordError as e:
        result.errors.append(str(e))
    except OSError as e:  # creating DST/<split>, reading the tfrecord, checking for an output
        raise stopped_by(e, e.filename or tfrecord) from None
    progress(max(size - done, 0))  # skipped records and whatever was left unread
    return result


_progress_counter = None  # a shared multiprocessing.Value in pool workers
_stop = None  # a shared multiprocessing.Event: set once a worker's file stopped the run


def _init_worker(counter, stop) -> None:
    global _progress_counter, _stop
    _progress_counter, _stop = counter, stop


def _add_progress(n: int) -> None:
    with _progress_counter.get_lock():
        _progress_counter.value += n


def _convert_job(job: tuple[Path, Path]) -> FileResult | None:
    """None: not started because another file stopped the run (the pool still hands out every job)."""
    if _stop.is_set():
        return None
    try:
        return convert_file(*job, progress=_add_progress)
    except ConvertError:
        _stop.set()
        raise


def convert(src: Path, dst: Path, workers: int = 1, show_progress: bool = True) -> list[FileResult]:
    """Convert SRC/{train,test}/*.tfrecord into DST/{train,test}/; returns one result per file."""
    jobs = find_jobs(Path(src), Path(dst))
    total = sum(f.stat().st_size for f, _ in jobs)
    bar = lambda: tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not show_progress)  # noqa: E731
    if workers <= 1 or len(jobs) == 1:
        with bar() as progress:
            return [convert_file(f, out, progress=progress.update) for f, out in jobs]
    # fork (as DataLoader does on Linux) spares each worker a fresh torch import; the workers only
    # copy bytes and call torch.save. The pool starts before tqdm's monitor thread exists.
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    counter, stop = ctx.Value("q", 0), ctx.Event()
    with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter, stop)) as pool, \
            bar() as progress:
        pending = pool.map_async(_convert_job, jobs, chunksize=1)
        while not pending.ready():
            pending.wait(0.25)
            if counter.value > progress.n:
                progress.update(counter.value - progress.n)
        results = pending.get()  # re-raises a worker's ConvertError (once every job has returned)
        progress.update(counter.value - progress.n)
    return results


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert GQN TFRecords (SRC/train, SRC/test) into episode files (DST/train, DST/test).",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="folder with train/*.tfrecord and/or test/*.tfrecord")
    p.add_argument("dst", type=Path, metavar="DST", help="output folder; DST/train and DST/test are created")
    p.add_argument("--workers", type=number(int, 1, low_ok=True), default=1,
                   help="processes converting files in parallel (default 1)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        results = convert(args.src, args.dst, workers=args.workers, show_progress=not args.no_progress)
    except ConvertError as e:
        print_error(PROG, e)
        return 2
    except OSError as e:  # outside any one file's conversion (listing SRC)
        print_error(PROG, stopped_by(e, e.filename))
        return 2
    errors = [e for r in results for e in r.errors]
    for e in errors:
        print_error(PROG, e)
    written, skipped = sum(r.written for r in results), sum(r.skipped for r in results)
    print(f"{len(results)} tfrecord files: {written} episodes written, {skipped} already there, "
          f"{len(errors)} errors -> {args.dst}")
    return 1 if errors else 0


if __name__ == "__main__":
    from utils.data.convert import main as _main  # workers then find their functions as utils.data.convert.*

    sys.exit(_main())
