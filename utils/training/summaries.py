"""TensorBoard output: a writer on rank 0 only, image grids (truth / reconstruction / generation, ...), and
reading event files back (for tests and for plotting curves without installing tensorboard).
"""
import struct
import time
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.utils import make_grid

IMAGES_PER_ROW = 8


class NullWriter:
    """Stands in for a SummaryWriter on ranks other than 0: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def open_writer(directory, enabled: bool = True, purge_step=None):
    """A tensorboardX SummaryWriter logging to ``directory``; ``purge_step`` drops events at or after that
    step left by an interrupted run, so a resumed run's curves do not double back."""
    if not enabled:
        return NullWriter()
    from tensorboardX import SummaryWriter

    # tensorboardX names a file by the second it opened and truncates a file of that name: a run resumed within
    # the same second would erase the last one's events. The suffix keeps names apart, in the order made.
    return SummaryWriter(logdir=str(directory), purge_step=purge_step, filename_suffix=f".{time.time_ns()}")


def image_rows(*rows: torch.Tensor, count: int = IMAGES_PER_ROW) -> torch.Tensor:
    """(B, 3, S, S) each -> one (3, H, W) image, a row each: the renderer's ground truth / reconstruction /
    generation, the classifier's query views / picked candidates."""
    count = min(count, rows[0].shape[0])
    images = torch.cat([row[:count] for row in rows]).float().clamp(0, 1).cpu()
    return make_grid(images, nrow=count, padding=1, pad_value=1.0)


def _records(path: Path):
    """Payloads of a TFRecord-framed file: u64 length, u32 crc, data, u32 crc (crcs not checked)."""
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        start = offset + 12
        if start + length + 4 > len(data):
            break  # a record still being written
        yield data[start:start + length]
        offset = start + length + 4


def read_events(directory):
    """(scalars {tag: [(step, value), ...]}, image tags {tag: [step, ...]}) from every event file under
    ``directory``, in file order then write order, as TensorBoard shows them: a resumed run's session start
    (``purge_step``) drops the events at or after its step that came before it."""
    from tensorboardX.proto import event_pb2

    scalars, images = defaultdict(list), defaultdict(list)
    for path in sorted(Path(directory).rglob("events.out.tfevents.*")):
        for record in _records(path):
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for tag in scalars:
                    scalars[tag] = [(step, v) for step, v in scalars[tag] if step < event.step]
                for tag in images:
                    images[tag] = [step for step in images[tag] if step < event.step]
            for value in event.summary.value:
                if value.HasField("image"):
                    images[value.tag].append(event.step)
                elif value.HasField("simple_value"):
                    scalars[value.tag].append((event.step, value.simple_value))
    return dict(scalars), dict(images)
