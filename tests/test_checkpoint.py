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


def test_a_baseline_saved_before_its_views_were_standardised_evaluates_as_it_was_trained(tmp_path):
    """A format-2 baseline with --memory_norm layer-normalised its sum only: loaded today, it gets the
    statistics of no standardisation and gives the r it gave then."""
    from models.scene import ModelConfig, SceneModel
    from tests.test_models import random_hotel
    from utils.checkpoint import FORMAT, model_from_checkpoint
    torch.manual_seed(0)
    then = SceneModel(ModelConfig(img_size=16, layers=2, baseline=True)).eval()
    then.composer.view_norm = None  # what --memory_norm was for the baseline in format 2
    path = tmp_path / "format2.pt"
    args = {"img_size": 16, "layers": 2, "baseline": True, "memory_norm": True}
    save_checkpoint({"epoch": 3, "format": 2, "model_state_dict": then.state_dict(), "args": args}, path)
    with pytest.warns(UserWarning, match="before the baseline's --memory_norm standardised each view"):
        now, checkpoint = model_from_checkpoint(path)
    assert checkpoint["format"] == FORMAT and now.composer.view_norm is not None
    frames, poses, origin = random_hotel(2, hotels=3)
    with torch.no_grad():
        assert torch.allclose(now.composer(frames, poses, poses, origin, 2), then.composer(frames, poses, poses, origin, 2),
                              atol=1e-5)
