"""Inspect and rewrite maze episode files from the command line.

    python -m utils.data.files info data_samples/train            # frames, image size, pose ranges, sha256s
    python -m utils.data.files info --json DIR | head -1
    python -m utils.data.files rewrite OLD_DIR NEW_DIR            # the original tools' legacy files -> ours

Exit status: 0; 1 when some episodes could not be read (each named on stderr); 2 for a bad argument.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from utils.command import print_error
from utils.data.episodes import EpisodeError, episode_info, list_episodes, load_episode, save_episode

PROG = "python -m utils.data.files"


def _info(args: argparse.Namespace) -> int:
    status = 0
    for p in args.paths:
        try:
            files = list_episodes(p) if os.path.isdir(p) else [p]
        except EpisodeError as e:
            print_error(PROG, e)
            status = 1
            continue
        for path in files:
            try:
                info = episode_info(path)
            except EpisodeError as e:
                print_error(PROG, e)
                status = 1
                continue
            if args.json:
                print(json.dumps(info), flush=True)
            else:
                fmt = lambda r: f"[{r[0]:+.4f}, {r[1]:+.4f}]"  # noqa: E731
                print(
                    f"{info['path']}: {info['frames']} frames {info['height']}x{info['width']} "
                    f"x {fmt(info['x_range'])} y {fmt(info['y_range'])} yaw {fmt(info['yaw_range'])} "
                    f"frames_sha256 {info['frames_sha256']} cameras_sha256 {info['cameras_sha256']}",
                    flush=True,
                )
    return status


def _rewrite(args: argparse.Namespace) -> int:
    """Every episode of SRC into DST in our format, plain ``.pt`` (JPEGs do not compress). Episodes
    already in DST are skipped, so an interrupted run resumes; each file is written atomically. Two
    sources with one target name, or an OS error (DST a file, a full disk), stop it with one line (exit 2)."""
    from tqdm import tqdm

    src, dst = Path(args.src), Path(args.dst)
    try:
        paths = list_episodes(src)
    except EpisodeError as e:
        print_error(PROG, e)
        return 2
    if dst.resolve() == src.resolve():
        print_error(PROG, f"DST {dst} is SRC; rewrite into another directory")
        return 2
    targets = [dst / path.name.removesuffix(".gz") for path in paths]
    first = {}  # target -> its first source: a.pt and a.pt.gz would both be DST/a.pt, and one be lost
    for path, target in zip(paths, targets):
        if first.setdefault(target, path) != path:
            print_error(PROG, f"{first[target]} and {path} would both be written to {target}; rename one")
            return 2
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print_error(PROG, f"{dst}: cannot create the output directory: {e.strerror or e}")
        return 2
    failed = 0
    with tqdm(paths, unit="episode", disable=args.no_progress) as progress:  # closed before an early return
        for path, target in zip(progress, targets):
            if target.exists():
                continue
            try:
                episode = load_episode(path)
                save_episode(target, episode.frames, episode.cameras)  # converts every frame: may find one damaged
            except EpisodeError as e:
                print_error(PROG, e)
                failed += 1
            except OSError as e:  # a full disk, a file-size limit: the atomic write left no partial file
                print_error(PROG, f"{target}: cannot write: {e.strerror or e}; the episodes written so far are "
                                  "complete, and the same command resumes")
                return 2
    if failed:
        print_error(PROG, f"{failed} of {len(paths)} episodes in {src} could not be read (named above); the "
                          f"rest are in {dst}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="print frames, image size, pose ranges and sha256s per episode")
    info.add_argument("paths", nargs="+", metavar="PATH", help="episode files or directories of them")
    info.add_argument("--json", action="store_true", help="one JSON object per line")
    info.set_defaults(run=_info)
    rewrite = commands.add_parser(
        "rewrite", help="copy a directory of episodes (e.g. the original tools' legacy .pt files) into our "
                        "format, a third smaller than legacy files")
    rewrite.add_argument("src", metavar="SRC", help="directory of episodes in any readable format")
    rewrite.add_argument("dst", metavar="DST", help="output directory (created; existing episodes are kept)")
    rewrite.add_argument("--no_progress", action="store_true", help="no progress bar")
    rewrite.set_defaults(run=_rewrite)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # stdout closed early (`info ... | head -1`): stop quietly, like a tool SIGPIPE ends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail
        sys.exit(141)  # 128 + SIGPIPE
