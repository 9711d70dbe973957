"""An episode file's JPEG frames, cut from the file's bytes only when a frame is used, and the error every
episode reader raises. Shared by the two file formats (utils.data.episodes, utils.data.legacy_pickle).
"""
from __future__ import annotations

from collections.abc import Sequence

JPEG_SOI = b"\xff\xd8"  # a JPEG's first two bytes (start-of-image marker)


class EpisodeError(ValueError):
    """Bad episode file/dir; message always names the file."""


_UTF8_SOI = "\xff\xd8".encode("utf-8")  # a JPEG's first two bytes as the pickle's text holds them


class LazyFrames(Sequence):
    """An episode file's JPEG frames, each cut from the file's bytes only when it is used (a sample uses
    9 of 300). A legacy file holds them as the pickle's UTF-8 text (``text=True``), converted as unpickling
    would; a frame unpickling would refuse raises EpisodeError when it is used. Otherwise behaves as the
    list of bytes the file holds."""

    __slots__ = ("_raw", "_spans", "_path", "_text", "first_non_jpeg")
    __hash__ = None

    def __init__(self, raw, spans: list[tuple[int, int]], path: str, text: bool):
        # raw: the file's bytes, or a uint8 array (kept as is, not as a memoryview, so an Episode pickles)
        self._raw, self._spans, self._path, self._text = raw, spans, path, text
        soi, view = (_UTF8_SOI if text else JPEG_SOI), memoryview(raw)
        # index of the first frame that does not start with a JPEG's FFD8 marker, or None
        self.first_non_jpeg = next((i for i, (start, end) in enumerate(spans)
                                    if view[start:min(end, start + len(soi))] != soi), None)

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]  # an int in range, or IndexError
        start, end = self._spans[index]
        frame = memoryview(self._raw)[start:end]
        if not self._text:
            return frame.tobytes()
        try:
            return str(frame, "utf-8").encode("latin-1")
        except UnicodeError as e:
            raise EpisodeError(f"{self._path}: frame {index}: corrupt episode file ({type(e).__name__}: {e})") from None

    def __eq__(self, other):
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented
