"""How evaluate.py and make_gif.py end: a user error is one line on stderr and exit status 2, never a traceback."""
import sys
from typing import Callable, Optional, Sequence, Tuple, Type


def run(prog: str, parse_args: Callable, main: Callable, user_errors: Tuple[Type[Exception], ...],
        argv: Optional[Sequence[str]] = None) -> int:
    """``main(parse_args(argv))``: 0 on success; one of ``user_errors`` prints ``prog: error: ...`` and gives 2."""
    args = parse_args(argv)
    try:
        main(args)
    except user_errors as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
