"""The training scripts' shared command line: the data, training, logging and device flags, their checks, and
``@configs/NAME.args`` preset files. A script adds its model flags (and any schedule of its own) through
callbacks, so every script's --help reads alike and each flag means the same in all of them.
"""
import argparse
from pathlib import Path
from typing import Callable, Optional, Sequence

from models.scene import IMAGE_SIZES
from utils.training import schedules
from utils.command import number
from utils.data.hotel import MAX_SEED, WORLD_MAZES

AUTO = "auto"
COMPILE_MODES = ("default", "reduce-overhead")  # torch.compile modes for --compile


class Parser(argparse.ArgumentParser):
    def convert_arg_line_to_args(self, line):
        """Preset files (``@configs/NAME.args``): flags separated by spaces or lines, ``#`` starts a comment."""
        return line.split("#", 1)[0].split()

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except None: those flags' help says what their absence means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def grid(text):
    value = number(int, 1, low_ok=True)(text)
    if value > WORLD_MAZES:
        raise argparse.ArgumentTypeError(f"a {value}x{value} hotel is larger than the world "
                                         f"({WORLD_MAZES}x{WORLD_MAZES} mazes)")
    return value


def workers(text):
    if text == AUTO:
        return text
    try:
        return number(int, 0, low_ok=True)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or an int >= 0, got {text!r}") from None


def add_baseline(group, what: str = "GQN baseline (summed representation) instead of GEN"):
    group.add_argument("--baseline", action="store_true", help=what)


def add_memory_norm(group):
    group.add_argument("--memory_norm", action=argparse.BooleanOptionalAction, default=True,
                       help="layer-normalise the composer's memory where it is read, and for the baseline "
                            "standardise each view before the sum (running statistics, no trained parameters); "
                            "--no-memory_norm: the original implementation's composer, whose memory explodes "
                            "and stops being read within the first steps (used for original checkpoints)")


def build_parser(prog: str, description: str, model_flags: Callable, schedule_flags: Optional[Callable] = None,
                 lr: float = schedules.LR, lr_final: float = schedules.LR_FINAL, batch_size: int = 64,
                 log_dirs: Sequence[str] = ("GEN", "GQN")):
    """The parser of a training script. ``model_flags(group)`` adds the model's flags; ``schedule_flags(group)``
    any schedule beside the learning rate's; ``log_dirs``: the default --log_dir, without and with --baseline."""
    positive, count, rate = number(int, 0), number(int, 0, low_ok=True), number(float, 0)
    p = Parser(prog=prog, description=description, formatter_class=DefaultsShown, fromfile_prefix_chars="@")
    data = p.add_argument_group("data")
    data.add_argument("--train_data_dir", default="data_samples/train", help="episodes (.pt / .pt.gz) to train on")
    data.add_argument("--test_data_dir", default="data_samples/test", help="episodes for the test losses and images")
    data.add_argument("--img_size", type=int, default=64, choices=IMAGE_SIZES, help="image side in pixels")
    data.add_argument("--context_views", type=positive, default=8, help="context views per maze")
    data.add_argument("--train_grids", type=grid, nargs="+", default=[1, 2], metavar="K",
                      help="hotel sizes k (k x k mazes) drawn from at every step")
    data.add_argument("--test_grids", type=grid, nargs="+", default=[1, 2, 3, 4, 5], metavar="K",
                      help="hotel sizes evaluated every --log_interval steps")
    data.add_argument("--raw_poses", action="store_true",
                      help="the original implementation's pose mapping (cameras near each maze's centre)")
    data.add_argument("--workers", type=workers, default=AUTO,
                      help="DataLoader worker processes (0: load in-process; auto: 2 on CPU, on a GPU one per "
                           "core of this process's share of the machine, less one, at most 12)")
    data.add_argument("--max_bad_files", type=number(float, 0, low_ok=True, high=1), default=0.01,
                      help="stop if more than this fraction of the training episodes is damaged")

    model_flags(p.add_argument_group("model"))

    train = p.add_argument_group("training")
    train.add_argument("--steps", type=positive, default=schedules.LR_STEPS,
                       help="total steps of the run; a resumed run continues until this step")
    train.add_argument("--batch_size", type=positive, default=batch_size,
                       help="mazes (= query images) per step over all devices/processes; a k x k step "
                            "uses batch_size // k^2 hotels")
    train.add_argument("--seed", type=number(int, 0, low_ok=True, high=MAX_SEED), default=0,
                       help="seeds the model, every batch and the renderer's DRAW noise")
    train.add_argument("--lr", type=rate, default=lr, help="initial Adam learning rate")
    train.add_argument("--lr_final", type=rate, default=lr_final, help="learning rate after --lr_steps")
    train.add_argument("--lr_steps", type=positive, default=schedules.LR_STEPS, help="learning-rate annealing steps")
    if schedule_flags is not None:
        schedule_flags(train)
    train.add_argument("--clip_grad", type=rate, default=None, help="clip the gradient norm to this (default: off)")
    train.add_argument("--max_bad_steps", type=positive, default=20,
                       help="after this many non-finite steps in a row, reload the last checkpoint and halve the lr")

    out = p.add_argument_group("logging and checkpoints")
    out.add_argument("--root_log_dir", default="logs", help="root of all runs")
    out.add_argument("--log_dir", default=None, help=f"this run's folder under --root_log_dir (default: {log_dirs[0]}, "
                                                      f"or {log_dirs[1]} with --baseline); TensorBoard in runs/, "
                                                      f"checkpoints in models/")
    out.add_argument("--log_interval", type=positive, default=1000, help="steps between test losses and images")
    out.add_argument("--save_interval", type=positive, default=5000, help="steps between checkpoints")
    out.add_argument("--keep_checkpoints", type=positive, default=5, help="numbered checkpoints kept (plus final)")
    out.add_argument("--saved_model", default=None, metavar="PATH|auto",
                     help="resume from this checkpoint (ours, or the original's {epoch, model_state_dict}); "
                          "'auto': the newest readable one in this run's models/, or start fresh. A run resumes "
                          "with its own model, batch and schedule flags; from a checkpoint outside this run's "
                          "models/ they may change, except --baseline and --img_size")

    devices = p.add_argument_group("devices")
    devices.add_argument("--device_ids", type=count, nargs="*", default=None, metavar="ID",
                         help="CUDA ids (several: DataParallel); default all visible GPUs, or CPU; "
                              "given with no ids: CPU")
    devices.add_argument("--amp", action="store_true",
                         help="bf16 autocast for the training step's forward (meant for GPUs; test losses stay fp32)")
    devices.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                         metavar="MODE",
                         help="torch.compile the training step's model (one GPU or torchrun; not DataParallel); "
                              "MODE is default, or reduce-overhead to also replay the step as CUDA graphs (a few "
                              "launches per step for the host instead of hundreds; the fastest on one GPU)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None, log_dirs: Sequence[str] = ("GEN", "GQN")):
    """``parser``'s namespace, checked: a default --log_dir, batches that fill every hotel size, an existing
    --saved_model file."""
    args = parser.parse_args(argv)
    if args.log_dir is None:
        args.log_dir = log_dirs[1] if args.baseline else log_dirs[0]
    too_big = [k for k in args.train_grids if k * k > args.batch_size]
    if too_big:
        k = max(too_big)
        parser.error(f"--batch_size {args.batch_size} cannot fill a {k}x{k} hotel ({k * k} mazes); "
                     f"use --batch_size >= {k * k} or drop {k} from --train_grids")
    if args.saved_model not in (None, AUTO) and not Path(args.saved_model).is_file():
        why = "a directory, not a checkpoint file" if Path(args.saved_model).is_dir() else "no such file"
        parser.error(f"--saved_model {args.saved_model}: {why} (or use --saved_model auto)")
    return args
