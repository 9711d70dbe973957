"""How every command reports errors: one line on stderr, ``prog: error: ...`` (argparse's form), never a
traceback, and exit status ``BAD_ARGUMENT`` (2: a flag, a file or a folder it was given cannot be used; what
argparse gives too) or ``FAILED_RUN`` (1: the work started and failed, e.g. some episodes could not be
converted); and the argument types that refuse bad values at parse time."""
import argparse
import math
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Type


BAD_ARGUMENT, FAILED_RUN = 2, 1


def run(prog: str, parse_args: Callable, main: Callable, user_errors: Tuple[Type[Exception], ...],
        argv: Optional[Sequence[str]] = None) -> int:
    """``main(parse_args(argv))``: 0 on success; one of ``user_errors`` prints ``prog: error: ...`` and gives 2."""
    args = parse_args(argv)
    try:
        main(args)
    except user_errors as error:
        print_error(prog, error)
        return BAD_ARGUMENT
    return 0


def print_error(prog: str, message) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)


def fail(prog: str, message, status: int):
    """Print the error line and exit with ``status``."""
    print_error(prog, message)
    raise SystemExit(status)


def number(kind, low, low_ok=False, high=None):
    """An argparse type: ``kind`` (int or float) above ``low`` (or at it, with ``low_ok``), at most ``high``;
    floats must be finite."""
    name = f"{kind.__name__} {'>=' if low_ok else '>'} {low}" + (f" and <= {high}" if high is not None else "")

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not (math.isfinite(value) and (value >= low if low_ok else value > low) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"expected {name}, got {text}")
        return value

    return parse


def file_in_the_way(path) -> Optional[Path]:
    """The file that keeps ``path`` from ever being created - its nearest existing ancestor, when that is not a
    directory - or None. Output paths are checked with it before the work, whose end would otherwise fail on
    a message such as "File exists: 'README.md'"."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def torch_device(text):
    """An argparse type: a torch device that exists here (``cpu``, ``cuda``, ``cuda:1``)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:0, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    return device
