"""Files written atomically: a reader, or a run that was killed or ran out of disk, sees either the old file
or the complete new one, never a torn mix. Checkpoints, episodes, evaluation reports and animations are
all written this way."""
import contextlib
import os
import secrets
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a hidden temporary path beside ``path`` to write to (``.NAME.RANDOM.tmp``: no reader lists it).
    When the block ends without error the temporary file is fsynced and renamed over ``path``; on any error
    it is removed and ``path`` is left as it was. Writers that infer a format from the file name must be
    told the format, since the temporary name ends in ``.tmp``."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield temp
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; not every platform lets a directory be opened or synced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
