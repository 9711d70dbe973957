"""A run's ``models/`` directory: ``checkpoint-{step}.pt`` every few steps (the last N kept) plus
``checkpoint-final.pt`` (a run continued past its end keeps the earlier one as ``checkpoint-final-{step}.pt``),
and finding the newest one that is readable (``--saved_model auto``).
Writing and reading single files is ``utils/checkpoint.py``'s job.
"""
import os
import re
import shutil
import warnings
from pathlib import Path

from utils.checkpoint import CheckpointError, checkpoint_step, load_checkpoint, save_checkpoint

NUMBERED = re.compile(r"checkpoint-(\d+)\.pt")
FINAL = "checkpoint-final.pt"


class CheckpointDir:
    def __init__(self, directory, keep: int = 5, warn=warnings.warn):
        self.directory = Path(directory)
        self.keep = keep
        self.warn = warn

    def path(self, step: int) -> Path:
        return self.directory / f"checkpoint-{step}.pt"

    @property
    def final(self) -> Path:
        return self.directory / FINAL

    def numbered(self) -> list:
        """[(step, path)] of the numbered checkpoints, oldest first (temp files are dot-files: ignored)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := NUMBERED.fullmatch(p.name))]
        return sorted(found)

    def save(self, payload: dict, final: bool = False) -> Path:
        """Write atomically, then delete the oldest numbered checkpoints while there are more than ``keep``;
        only ones older than this step: never the one just written, nor one past it.

        OSError (e.g. disk full) propagates with the previous checkpoints untouched.
        """
        step = payload["epoch"]
        path = self.final if final else self.path(step)
        if final:
            self.keep_earlier_final(step)
        save_checkpoint(payload, path)
        numbered = self.numbered()
        older = [old for s, old in numbered if s < step]
        for old in older[:max(len(numbered) - self.keep, 0)]:
            old.unlink(missing_ok=True)
        return path

    def keep_earlier_final(self, step: int) -> None:
        """A run continued past its end would overwrite the final checkpoint of the end it had: keep that one
        as ``checkpoint-final-{its step}.pt`` (a hard link where the file system allows, else a copy), a name that
        neither pruning nor ``--saved_model auto`` touches."""
        try:
            earlier = checkpoint_step(self.final) if self.final.is_file() else None
        except CheckpointError:
            return  # unreadable: nothing to keep
        if earlier is None or earlier >= step:
            return
        kept = self.directory / f"checkpoint-final-{earlier}.pt"
        if kept.exists():
            return
        try:
            os.link(self.final, kept)
        except OSError:
            shutil.copyfile(self.final, kept)

    def held(self) -> list:
        """Every checkpoint file here (numbered ones, then final)."""
        return [p for _, p in self.numbered()] + ([self.final] if self.final.is_file() else [])

    def past(self, step: int) -> list:
        """The checkpoints here from beyond ``step`` (a final one counts by its epoch; an unreadable one is
        left out: it will be overwritten)."""
        later = [p for s, p in self.numbered() if s > step]
        if self.final.is_file():
            try:
                if checkpoint_step(self.final) > step:
                    later.append(self.final)
            except CheckpointError:
                pass
        return later

    def newest(self):
        """(path, checkpoint dict) of the newest readable checkpoint, or None if there is none.

        Newest = highest step (``epoch``); unreadable files are skipped with a warning, so a checkpoint
        truncated by a crash falls back to the one before it.
        """
        final = None
        if self.final.is_file():
            try:
                final = load_checkpoint(self.final)
            except CheckpointError as error:
                self.warn(f"{error}; ignoring it")
        for step, path in reversed(self.numbered()):
            if final is not None and final.get("epoch", -1) >= step:
                break
            try:
                return path, load_checkpoint(path)
            except CheckpointError as error:
                self.warn(f"{error}; falling back to the previous checkpoint")
        return (self.final, final) if final is not None else None
