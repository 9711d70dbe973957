"""How the command-line tools report errors: one line on stderr, ``prog: error: ...`` (argparse's form), and a
non-zero exit status, never a traceback."""
import sys
from typing import Callable, Optional, Sequence, Tuple, Type


def run(prog: str, parse_args: Callable, main: Callable, user_errors: Tuple[Type[Exception], ...],
        argv: Optional[Sequence[str]] = None) -> int:
    """``main(parse_args(argv))``: 0 on success; one of ``user_errors`` prints ``prog: error: ...`` and gives 2."""
    args = parse_args(argv)
    try:
        main(args)
    except user_errors as error:
        print_error(prog, error)
        return 2
    return 0


def print_error(prog: str, message) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
