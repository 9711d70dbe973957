"""Data-loading benchmark: training samples per second, ours vs the original's decode-everything path.

One sample = one episode drawn at random + (context + 1 query) views drawn at random from it, as image
tensors (V, 3, S, S) in [0, 1] and pose vectors (V, 7); single process (0 DataLoader workers).

* ours: ``load_episode`` (reads the JPEG bytes, decodes nothing) + ``decode_views`` of just the V views.
* reference (what the original GEN/GQN loaders did): the same ``load_episode``, then every one of the
  episode's 300 JPEGs is decoded with PIL (``Image.open(BytesIO).convert("RGB")`` -> numpy -> PIL resize
  to S), and only then are the V views picked.

Both paths run interleaved (a few of ours, then one reference) so that load from other processes hits
both alike. The last line printed is one JSON object:
``{"samples_per_s": ..., "reference_samples_per_s": ..., "ratio": ...}``.

    python -m bench.bench_data [--data_dir DIR] [--rounds 20] [--img_size 64] [--context 8]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.data.episodes import EpisodeError, decode_views, list_episodes, load_episode, pose_vectors

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real episodes (GEN_REAL_MAZES, as for the tests: docs/benchmarks.md), else the built-in samples.
DEFAULT_DATA_DIR = (Path(os.environ["GEN_REAL_MAZES"]) / "train" if os.environ.get("GEN_REAL_MAZES") else
                    REPO_ROOT / "data_samples" / "train")


def sample_ours(path, views, img_size):
    episode = load_episode(path)
    return decode_views(episode, views, img_size), pose_vectors(episode.cameras[views])


def sample_reference(path, views, img_size):
    episode = load_episode(path)
    images = []
    for jpeg in episode.frames:  # decode all 300, as the original did
        rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        images.append(np.asarray(Image.fromarray(rgb).resize((img_size, img_size), Image.BILINEAR)))
    frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (300, 3, S, S)
    return frames[views], pose_vectors(episode.cameras[views])


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """The data benchmarks' --data_dir: the real episodes where GEN_REAL_MAZES names them."""
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="directory of episode files (default: $GEN_REAL_MAZES/train, else data_samples/train)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_data", description=__doc__.split("\n")[0])
    add_data_dir(p)
    p.add_argument("--rounds", type=int, default=20, help="rounds of (--per_round ours + 1 reference) samples")
    p.add_argument("--per_round", type=int, default=10, help="samples of ours per reference sample")
    p.add_argument("--context", type=int, default=8, help="context views per sample (plus 1 query view)")
    p.add_argument("--img_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: like one DataLoader worker)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(args) -> int:
    data_dir = args.data_dir
    try:
        paths = list_episodes(data_dir)
    except EpisodeError as e:
        print(f"error: {e} (pass --data_dir DIR with *.pt / *.pt.gz episodes)", file=sys.stderr)
        return 2
    try:
        return measure(args, paths)
    except EpisodeError as e:
        print(f"error: {e} (the benchmark needs undamaged episodes)", file=sys.stderr)
        return 2


def measure(args, paths) -> int:
    data_dir = args.data_dir
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    n_views = args.context + 1

    frame_counts = [len(load_episode(p)) for p in paths]  # also checks every file's layout up front

    def draw():
        i = rng.integers(len(paths))
        return paths[i], rng.choice(frame_counts[i], size=n_views, replace=False)

    for _ in range(2):  # warm up both paths (imports, allocator, page cache)
        sample_ours(*draw(), args.img_size)
        sample_reference(*draw(), args.img_size)

    ours_s = ref_s = 0.0
    ours_n = ref_n = 0
    for _ in range(args.rounds):
        for _ in range(args.per_round):
            path, views = draw()
            t = time.perf_counter()
            images, poses = sample_ours(path, views, args.img_size)
            ours_s += time.perf_counter() - t
            ours_n += 1
        path, views = draw()
        t = time.perf_counter()
        images, poses = sample_reference(path, views, args.img_size)
        ref_s += time.perf_counter() - t
        ref_n += 1
    assert images.shape == (n_views, 3, args.img_size, args.img_size) and poses.shape == (n_views, 7)

    ours_rate, ref_rate = ours_n / ours_s, ref_n / ref_s
    print(f"{len(paths)} episodes in {data_dir}; samples of {args.context} context + 1 query views at "
          f"{args.img_size}px, {args.threads} torch thread(s), 0 workers")
    print(f"ours (decode {n_views} views): {ours_rate:.1f} samples/s ({1e3 / ours_rate:.2f} ms/sample, n={ours_n}); "
          f"reference (PIL, all frames): {ref_rate:.2f} samples/s ({1e3 / ref_rate:.1f} ms/sample, n={ref_n}); "
          f"ratio {ours_rate / ref_rate:.1f}x")
    print(json.dumps({"samples_per_s": round(ours_rate, 2), "reference_samples_per_s": round(ref_rate, 3),
                      "ratio": round(ours_rate / ref_rate, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
