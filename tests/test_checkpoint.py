"""The one-line errors for files that do not load as checkpoints: what is wrong with the file, never
PyTorch's advice to retry with ``weights_only=False`` (which would run whatever the file holds)."""
import os
import pickle

import pytest
import torch

from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ADVICE = ("weights_only", "arbitrary code", "trusted source", "add_safe_globals")


def error_line(path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    line = str(info.value)
    assert "\n" not in line and str(path) in line
    assert not any(advice in line for advice in ADVICE), line
    return line


def test_a_damaged_file_is_called_damaged_without_torchs_advice(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint({"epoch": 1, "model_state_dict": {"x": torch.zeros(1000)}}, good)
    data = good.read_bytes()
    damaged = {
        "cut.pt": data[: len(data) // 2],  # truncated: no zip directory
        "empty.pt": b"",
        "text.pt": b"this is not a checkpoint",
        "zeroed.pt": data[:200] + b"\x00" * 60 + data[260:],  # the pickle inside overwritten
    }
    for name, content in damaged.items():
        (tmp_path / name).write_bytes(content)
        line = error_line(tmp_path / name)
        assert f"{name} is not a readable checkpoint: the file is damaged" in line and "not a checkpoint" in line
    plain = tmp_path / "plain.pt"
    with open(plain, "wb") as file:
        pickle.dump({"epoch": 1}, file, protocol=4)  # a pickle, but not one torch wrote
    assert "the file is damaged (truncated or corrupt) or not a checkpoint" in error_line(plain)


def test_a_file_holding_other_objects_is_refused_for_safety(tmp_path):
    code = tmp_path / "code.pt"
    torch.save({"epoch": 1, "model_state_dict": {}, "hook": os.system}, code)
    line = error_line(code)
    assert "holds objects other than plain tensors and numbers" in line and "refused for safety" in line
    assert "system" in line and "damaged" not in line
