"""The tour animation: a query camera walks through a k x k hotel of mazes and turns in place in each.

    python make_gif.py --saved_model CKPT --data_dir data_samples/test --grid 3 --out tour.gif

Each frame: the generated view (and the episode's own view when it has one near that pose) beside a map of
the hotel with the GEN's nodes, the 4 the query reads, and the camera (``utils/evaluation/tour.py``).
"""
import argparse
import sys
from pathlib import Path


from utils import command
from utils.checkpoint import CheckpointError
from utils.data.episodes import EpisodeError
from utils.data.hotel import MAX_SEED

from utils.evaluation.tour import Tour, TourError, make_tour, write_gif, write_mp4


def parse_args(argv=None):
    positive = command.number(int, 0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saved_model", required=True, metavar="CKPT", help="checkpoint (GEN or GQN baseline)")
    parser.add_argument("--data_dir", required=True, help="directory of episode files (.pt / .pt.gz)")
    parser.add_argument("--grid", type=positive, default=3, help="k: a k x k hotel of distinct mazes")
    parser.add_argument("--out", default="tour.gif", help="the GIF to write (default: tour.gif here)")
    parser.add_argument("--seed", type=command.number(int, 0, low_ok=True, high=MAX_SEED), default=0,
                        help="picks the episodes, context views and prior samples")
    parser.add_argument("--frames_per_turn", type=positive, default=16, help="yaw steps of each full turn")
    parser.add_argument("--positions", type=positive, default=1, help="standing positions per maze")
    parser.add_argument("--context_views", type=positive, default=None,
                        help="views of each maze written into the model (default: the checkpoint's, else 8)")
    parser.add_argument("--scale", type=command.number(int, 0, low_ok=True), default=0,
                        help="upscaling of the views (default 0: to 128 px)")
    parser.add_argument("--duration", type=positive, default=120, help="milliseconds per frame")
    parser.add_argument("--batch_size", type=positive, default=64, help="views generated per forward pass")
    parser.add_argument("--mp4", action="store_true", help="also write OUT with .mp4 (needs imageio-ffmpeg)")
    args = parser.parse_args(argv)
    # Refused now, not after every frame has been rendered.
    if Path(args.out).suffix.lower() != ".gif":
        parser.error(f"--out must be a .gif file, got {args.out}")
    if Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a directory; name the .gif file to write")
    if blocker := command.file_in_the_way(args.out):
        parser.error(f"--out {args.out}: {blocker} is a file, not a directory")
    return args


def main(args) -> Tour:
    if args.mp4:
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise TourError("--mp4 needs imageio-ffmpeg, which is not installed (pip install imageio-ffmpeg)") from None
    tour = make_tour(args)
    out = Path(args.out)
    write_gif(tour.frames, out, args.duration)
    print(f"wrote {out}: {len(tour.frames)} frames of {tour.frames[0].size[0]}x{tour.frames[0].size[1]}, "
          f"{sum(tour.has_truth)} with a ground-truth view")
    if args.mp4:
        write_mp4(tour.frames, out.with_suffix(".mp4"), 1000 / args.duration)
        print(f"wrote {out.with_suffix('.mp4')}")
    return tour


def cli(argv=None) -> int:
    """The command line: 0 on success; bad inputs print one line to stderr and return 2."""
    return command.run("make_gif.py", parse_args, main, (CheckpointError, EpisodeError, TourError, OSError), argv)


if __name__ == "__main__":
    sys.exit(cli())
