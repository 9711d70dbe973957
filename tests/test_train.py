"""train_scene_rendering.py: checkpoints, exact resume, original-format checkpoints, TensorBoard tags,
one-line errors for bad invocations, schedules, and DistributedDataParallel staying in sync."""
import functools
import os
import shutil
import signal
import socket
import statistics
import subprocess

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import train_scene_rendering as train
from models.scene import ModelConfig, SceneModel
from utils.checkpoint import FORMAT, model_config
from tests.conftest import REPO_ROOT, requires_cuda
from tests.test_models import random_hotel
from tests.train_support import (DUMP_SCRIPT, SCRIPT, assert_one_line_error, change_loss, main_error, make_scratch,  # noqa: F401
                                 one_thread, python, scratch, subprocess_env, tiny)
from utils.training.render import RenderTask
from utils.training import distributed, schedules
from utils.training.summaries import read_events
from utils.training import loop

SAMPLES = REPO_ROOT / "data_samples" / "train"
STRAIGHT = ["--batch_size", 4, "--train_grids", 1, 2, "--test_grids", 1, 2, "--log_interval", 3,
            "--save_interval", 3, "--keep_checkpoints", 1]


@pytest.fixture
def real_tiny(real_mazes):
    """``tiny`` on the real episodes (the real_mazes fixture: skipped without them, failed under CI)."""
    return functools.partial(tiny, data=real_mazes / "train")


@pytest.fixture(scope="module")
def straight_run(real_mazes):
    """6 steps in one go on the real episodes (1x1 and 2x2 hotels, test losses and images at steps 3 and 6)."""
    root = make_scratch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(tiny(root, *STRAIGHT, steps=6, data=real_mazes / "train")) == 0
        yield root / "run"
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_checkpoint_holds_everything_needed_to_resume(straight_run):
    models = straight_run / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint-3.pt", "checkpoint-final.pt"]
    checkpoint = load(models / "checkpoint-final.pt")
    assert {"epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "sigma", "args",
            "rng_state"} <= set(checkpoint)
    assert checkpoint["epoch"] == 6 and load(models / "checkpoint-3.pt")["epoch"] == 3
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in checkpoint["model_state_dict"])
    assert checkpoint["sigma"] == schedules.pixel_sigma(6)
    assert checkpoint["scheduler_state_dict"]["lr"] == schedules.learning_rate(6)
    assert checkpoint["scheduler_state_dict"]["lr_scale"] == 1.0
    assert checkpoint["args"]["train_grids"] == [1, 2] and checkpoint["args"]["img_size"] == 16
    assert checkpoint["optimizer_state_dict"]["state"], "Adam moments are saved"
    assert isinstance(checkpoint["rng_state"]["torch"], torch.Tensor)
    model = SceneModel(model_config(checkpoint["args"]))
    model.load_state_dict(checkpoint["model_state_dict"])  # strict: exactly this model's weights


def test_three_steps_then_resume_for_three_equals_six_straight_steps(straight_run, real_tiny, scratch, one_thread):
    resumed = ["--saved_model", straight_run / "models" / "checkpoint-3.pt"]
    assert train.main(real_tiny(scratch, *STRAIGHT, *resumed, steps=6)) == 0
    straight = load(straight_run / "models" / "checkpoint-final.pt")
    again = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert again["epoch"] == 6 and again["sigma"] == straight["sigma"]
    for key, value in straight["model_state_dict"].items():
        assert torch.equal(value, again["model_state_dict"][key]), key
    for index, state in straight["optimizer_state_dict"]["state"].items():
        assert torch.equal(state["exp_avg"], again["optimizer_state_dict"]["state"][index]["exp_avg"])


def test_tensorboard_holds_the_scalar_and_image_tags(straight_run):
    scalars, images = read_events(straight_run / "runs")
    expected = {"train/loss", "train/kl", "lr", "sigma", "grad_norm", "time_per_step", "time_data_wait",
                "time_device_wait", "train/skipped_steps",
                "data/skipped_episodes", "test/loss_1x1", "test/kl_1x1", "test/loss_2x2", "test/kl_2x2"}
    assert expected <= set(scalars), expected - set(scalars)
    assert {"train/loss_1x1", "train/loss_2x2"} & set(scalars)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [step for step, _ in scalars["test/loss_2x2"]] == [0, 3, 6]  # untrained, then every --log_interval
    assert scalars["lr"][0][1] == pytest.approx(schedules.learning_rate(0))
    waits = dict(scalars["time_data_wait"])  # part of each step's wall time
    assert all(0 <= waits[step] <= seconds for step, seconds in scalars["time_per_step"])
    # On the CPU a step's results exist once it returns: nothing to wait for. Measured against the run's own
    # steps (a median, so that one moment the shared machine took the process off its core does not count),
    # not against a clock figure: a host that waited for its device would wait a good part of a step.
    device_waits = [seconds for _, seconds in scalars["time_device_wait"]]
    step_times = [seconds for _, seconds in scalars["time_per_step"]]
    assert len(device_waits) == len(step_times) == 6 and min(device_waits) >= 0
    assert statistics.median(device_waits) < 0.01 * statistics.median(step_times), (device_waits, step_times)
    assert set(images) == {"images/train", "images/test_1x1", "images/test_2x2"}
    assert images["images/test_1x1"] == [0, 3, 6]
    assert images["images/train"] == [3, 6]  # no training batch before the first step


@pytest.mark.parametrize("baseline", [False, True], ids=["gen", "gqn"])
def test_loads_an_original_format_checkpoint_and_continues_from_its_epoch(real_tiny, scratch, one_thread, capsys,
                                                                           baseline):
    torch.manual_seed(123)
    weights = SceneModel(ModelConfig(img_size=16, layers=2, baseline=baseline, memory_norm=False)).state_dict()
    original = scratch / "original.pt"
    torch.save({"epoch": 7, "model_state_dict": {"module." + k: v for k, v in weights.items()}}, original)
    flags = ["--baseline"] if baseline else []
    assert train.main(real_tiny(scratch, "--saved_model", original, *flags, steps=8)) == 0
    err = capsys.readouterr().err
    assert "fresh optimizer" in err and "original-implementation checkpoint" in err
    checkpoint = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert checkpoint["epoch"] == 8
    assert checkpoint["args"]["memory_norm"] is False  # it trains on with the composer it was trained with
    # One Adam step moves a weight by about lr = 5e-4: the original weights were loaded, not a fresh init.
    for key, value in weights.items():
        assert (checkpoint["model_state_dict"][key] - value).abs().max() < 2e-3, key


# r's channels as each layout feeds them to upsample_r, segment by segment (name, channels), written out from the
# layouts' descriptions rather than from the code under test:
# - "original": the original implementation's (jaks19/scene-generation-from-novel-viewpoints-gens), which this
#   project's checkpoints of format 2 follow. GEN: the query's 7-d pose (x, y, z, cos yaw, sin yaw, cos pitch,
#   sin pitch) tiled 8 times, then the node state read at the query: its x, y, then the 254-d embedding.
#   Baseline: the query's x, y, its pose tiled 32 times, then the 254-d sum of the context embeddings.
# - "format 1": this project's checkpoints before r took the original's order. GEN: the read state, then the
#   pose copies; baseline: the hotel's centre (x, y), the sum, then the pose copies.
R_LAYOUTS = {
    (False, "original"): [("pose copies", 8 * 7), ("read x, y", 2), ("read embedding", 254)],
    (False, "format 1"): [("read x, y", 2), ("read embedding", 254), ("pose copies", 8 * 7)],
    (True, "original"): [("query x, y", 2), ("pose copies", 32 * 7), ("summed embedding", 254)],
    (True, "format 1"): [("hotel centre", 2), ("summed embedding", 254), ("pose copies", 32 * 7)],
}
# The loader's one lossy choice (README): the baseline's hotel-centre weights become the query x, y's.
R_BECOMES = {"hotel centre": "query x, y"}
R_DIM = {False: 312, True: 480}  # upsample_r's input rows in tests/reference/original_state_dict.txt


def r_channels(layout):
    return [(name, i) for name, size in layout for i in range(size)]


def r_segment(layout, wanted) -> slice:
    start = 0
    for name, size in layout:
        if name == wanted:
            return slice(start, start + size)
        start += size
    raise KeyError(wanted)


@pytest.mark.parametrize("baseline", [False, True])
def test_a_checkpoint_of_the_earlier_r_order_is_reordered_on_load(scratch, baseline, capsys):
    """A format-1 checkpoint (this project before r took the original's order), built channel by channel
    from the layouts above, loads into today's model with every upsample_r row where the original layout
    puts that channel."""
    from utils.checkpoint import model_from_checkpoint
    original, old_layout = R_LAYOUTS[baseline, "original"], R_LAYOUTS[baseline, "format 1"]
    assert len(r_channels(original)) == len(r_channels(old_layout)) == R_DIM[baseline]
    torch.manual_seed(0)  # format 1 predates --memory_norm: its runs trained the original composers
    model = SceneModel(ModelConfig(img_size=16, layers=2, baseline=baseline, memory_norm=False))
    # The description of the original layout is today's r (tests/test_models.py checks the same from its side).
    frames, poses, origin = random_hotel(1, hotels=1)
    with torch.no_grad():
        r = model.composer(frames, poses, poses, origin, 1)
    assert r.shape[-1] == R_DIM[baseline]
    assert torch.equal(r[..., r_segment(original, "pose copies")], poses.repeat(1, 1, 32 if baseline else 8))
    xy = r[..., r_segment(original, "query x, y" if baseline else "read x, y")]
    assert torch.allclose(xy, poses[..., :2], atol=1e-5)

    weights = model.state_dict()
    row_of = {channel: row for row, channel in enumerate(r_channels(original))}
    old = dict(weights)
    for key in ("inference_core.upsample_r.weight", "generation_core.upsample_r.weight"):
        assert weights[key].shape[0] == R_DIM[baseline]
        old[key] = torch.stack([weights[key][row_of[R_BECOMES.get(name, name), i]]
                                for name, i in r_channels(old_layout)])
        assert not torch.equal(old[key], weights[key])
    args = {"img_size": 16, "layers": 2, "baseline": baseline, "context_views": 2}
    path = scratch / "format1.pt"
    torch.save({"epoch": 3, "model_state_dict": old, "optimizer_state_dict": {}, "args": args}, path)
    with pytest.warns(UserWarning, match="reordered"):
        loaded, checkpoint = model_from_checkpoint(path)
    for key, value in weights.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert checkpoint["format"] == FORMAT and "optimizer_state_dict" not in checkpoint
    line = "the first two inputs, once the hotel centre" in checkpoint["upgraded"]
    assert line == baseline
    if not baseline:  # training on keeps the schedule's state; only Adam's moments (in the old order) go
        torch.save({"epoch": 3, "model_state_dict": old, "optimizer_state_dict": {}, "args": args,
                    "scheduler_state_dict": {"lr_scale": 0.25, "skipped_steps": 5, "bad_files": []}}, path)
        assert train.main(tiny(scratch, "--saved_model", path, steps=4, data=REPO_ROOT / "data_samples" / "train")) == 0
        assert "reordered and its optimizer state dropped: starting at step 3 with a fresh optimizer" in \
            capsys.readouterr().err
        final = load(scratch / "run" / "models" / "checkpoint-final.pt")
        assert final["format"] == FORMAT and final["scheduler_state_dict"]["lr_scale"] == 0.25
        assert final["scheduler_state_dict"]["skipped_steps"] == 5


class OpDtypes(TorchDispatchMode):
    """Records the output dtype of every convolution and matrix product run under it, forward and backward."""
    OPS = {"aten.convolution", "aten.convolution_backward", "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"}

    def __init__(self):
        super().__init__()
        self.seen = []  # (op, dtype)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func.overloadpacket) in self.OPS:
            first = out[0] if isinstance(out, (tuple, list)) else out
            if first is not None:
                self.seen.append((str(func.overloadpacket), first.dtype))
        return out


def test_amp_trains_in_bf16_autocast_and_keeps_float32_weights(scratch, one_thread, monkeypatch):
    """--amp: every convolution and matrix product of the training step runs in bf16 (recorded as it runs),
    while the weights stay float32; without --amp the same step runs them all in float32."""
    steps = []
    queue = loop.Trainer.train_step

    def recorded(self, batch, stop):
        with OpDtypes() as ops:
            queued = queue(self, batch, stop)
        steps.append(ops.seen)
        return queued

    monkeypatch.setattr(loop.Trainer, "train_step", recorded)
    assert train.main(tiny(scratch, "--amp", steps=2, data=SAMPLES)) == 0
    assert len(steps) == 2
    for seen in steps:
        ops = {op for op, _ in seen}
        assert {"aten.convolution", "aten.convolution_backward", "aten.addmm", "aten.mm"} <= ops, ops
        assert {dtype for _, dtype in seen} == {torch.bfloat16}, sorted(set(seen), key=str)
    checkpoint = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert checkpoint["args"]["amp"] is True
    torch.manual_seed(0)  # the run's seed: the same initial weights
    initial = SceneModel(ModelConfig(img_size=16, layers=2)).state_dict()
    weights = checkpoint["model_state_dict"]
    assert all(value.dtype == torch.float32 for value in weights.values() if value.is_floating_point())
    assert all(torch.isfinite(value).all() for value in weights.values())
    assert any(not torch.equal(value, initial[key]) for key, value in weights.items()), "the steps trained"

    steps.clear()  # the recording tells the two apart
    assert train.main(tiny(scratch / "fp32", steps=1, data=SAMPLES)) == 0
    assert len(steps) == 1 and {dtype for _, dtype in steps[0]} == {torch.float32}


def test_compile_traces_once_although_sigma_changes_every_step(scratch, one_thread, monkeypatch):
    """--compile: the training step's model is compiled once, as one graph, and never recompiled although
    the annealed pixel sigma changes every step (sigma is a graph input, not a constant: as a constant,
    every step recompiled, 30 s a step on a GPU). torch._dynamo's own counters say what was compiled. The
    eager backend keeps the test fast; tracing is what is tested."""
    from torch._dynamo.utils import counters
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend="eager", **kw))
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.reset()
    counters.clear()
    try:
        assert train.main(tiny(scratch, "--compile", "--sigma_steps", 3, steps=4, data=SAMPLES)) == 0
        compiled = {name: dict(values) for name, values in counters.items() if values}
    finally:
        torch._dynamo.reset()
        counters.clear()
    assert compiled.get("frames") == {"total": 1, "ok": 1}, compiled  # one frame: the model's forward
    assert compiled.get("stats", {}).get("unique_graphs") == 1, compiled  # one graph, traced once
    assert compiled.get("stats", {}).get("calls_captured", 0) > 100, compiled  # the whole forward, not a stub
    assert not compiled.get("graph_break") and not compiled.get("recompiles"), compiled
    checkpoint = load(scratch / "run" / "models" / "checkpoint-final.pt")
    sigmas = [value for _, value in read_events(scratch / "run" / "runs")[0]["sigma"]]
    assert len(set(sigmas)) == 4, sigmas  # sigma did change at every step
    assert checkpoint["sigma"] != schedules.pixel_sigma(0, steps=3)
    assert not any(key.startswith("_orig_mod.") for key in checkpoint["model_state_dict"])


# ----------------------------------------------------------------------------- bad invocations

def test_bad_flags_exit_with_one_line_before_any_work(scratch, capsys):
    cases = [
        (["--img_size", "48"], "--img_size"),
        (["--train_grids", "6"], "larger than the world"),
        (["--test_grids", "0"], "--test_grids"),
        (["--batch_size", "3", "--train_grids", "1", "2"], "cannot fill a 2x2 hotel"),
        (["--steps", "-1"], "--steps"),
        (["--max_bad_files", "2"], "--max_bad_files"),
        (["--clip_grad", "0"], "--clip_grad"),
        (["--saved_model", str(scratch / "missing.pt")], "no such file"),
        (["--saved_model", str(scratch)], "a directory, not a checkpoint file"),
        (["--device_ids", "x"], "--device_ids"),
        (["--compile", "fast"], "--compile"),
        (["--workers", "many"], "expected auto or an int >= 0"),
        (["--seed", str(2 ** 31)], "expected int >= 0 and <= 2147483647"),
        (["--lr", "inf"], "expected float > 0, got inf"),
    ]
    for argv, needle in cases:
        assert needle in main_error(argv, capsys), argv


def test_bad_data_and_checkpoint_paths_exit_with_one_line(scratch, capsys):
    on_samples = functools.partial(tiny, data=SAMPLES)  # no real data needed
    (scratch / "empty").mkdir()
    few = scratch / "four"
    few.mkdir()
    for source in sorted(SAMPLES.glob("*.pt"))[:4]:
        (few / source.name).symlink_to(source)
    garbage = scratch / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    listed, odd = scratch / "listed.pt", scratch / "odd.pt"  # loadable, but no named tensors to load
    torch.save({"epoch": 1, "model_state_dict": [1, 2]}, listed)
    torch.save({"epoch": 1, "model_state_dict": {"w": 0.5}}, odd)
    argless = scratch / "argless.pt"
    torch.save({"epoch": 1, "model_state_dict": {"w": torch.zeros(1)}, "args": None}, argless)
    (scratch / "taken").write_text("a file where the logs would go")
    (scratch / "filed" / "run").mkdir(parents=True)
    (scratch / "filed" / "run" / "models").write_text("a file where the checkpoints would go")
    cases = [
        (on_samples(scratch, data=scratch / "nowhere"), "--train_data_dir"),
        (on_samples(scratch, data=scratch / "empty"), "--train_data_dir"),
        (on_samples(scratch, test_data=scratch / "nowhere"), "--test_data_dir"),
        (on_samples(scratch, "--test_grids", 3, test_data=few), "3x3 hotel needs 9"),
        (on_samples(scratch, "--saved_model", garbage), "garbage.pt"),
        (on_samples(scratch, "--saved_model", listed), "not a dict of named tensors"),
        (on_samples(scratch, "--saved_model", odd), "not a dict of named tensors"),
        (on_samples(scratch, "--saved_model", argless), "its args are not a dict"),
        (on_samples(scratch / "taken"), "taken"),
        (on_samples(scratch / "filed"),
         f"cannot write checkpoints in {scratch / 'filed' / 'run' / 'models'}: File exists"),
    ]
    for argv, needle in cases:
        assert needle in main_error(argv, capsys), argv


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda_is_one_line(scratch, capsys):
    assert "no CUDA device" in main_error(tiny(scratch, "--device_ids", 0), capsys)



def test_help_shows_the_defaults_but_never_none():
    text = " ".join(train.build_parser().format_help().split())  # unwrapped
    assert "(default: 64)" in text and "(default: auto)" in text
    assert "default: None" not in text, "a None default repeats what the flag's help says it means"

def test_defaults_follow_the_issue():
    args = train.parse_args([])
    assert (args.log_dir, args.train_grids, args.test_grids, args.context_views, args.img_size) == (
        "GEN", [1, 2], [1, 2, 3, 4, 5], 8, 64)
    assert (args.keep_checkpoints, args.max_bad_steps, args.max_bad_files, args.clip_grad) == (5, 20, 0.01, None)
    assert train.parse_args(["--baseline"]).log_dir == "GQN"
    assert train.parse_args(["--device_ids"]).device_ids == [] and train.parse_args([]).device_ids is None


def test_default_loader_workers_follow_the_device_and_this_processs_share_of_the_cores(monkeypatch):
    cpu, gpu = distributed.Runtime(torch.device("cpu")), distributed.Runtime(torch.device("cuda", 0))
    assert train.parse_args([]).workers == "auto" and train.parse_args(["--workers", "0"]).workers == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loop.default_workers(cpu) == 2 and loop.default_workers(gpu) == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun, 2 processes on this node: 8 cores each
    assert loop.default_workers(gpu) == 7
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert loop.default_workers(gpu) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert loop.default_workers(gpu) == 12


def test_batches_must_split_over_gpus_and_processes():
    args = train.parse_args(["--batch_size", "8", "--train_grids", "1", "2"])
    four_gpus = distributed.Runtime(torch.device("cpu"), device_ids=(0, 1, 2, 3))
    with pytest.raises(loop.TrainingError, match="2 hotels of 2x2, which do not split evenly over 4 GPUs.*e.g. 16"):
        loop.check_batch(args, four_gpus)
    assert loop.check_batch(train.parse_args(["--batch_size", "16"]), four_gpus) == 16
    with pytest.raises(loop.TrainingError, match="9 hotels of 2x2.*e.g. 48"):  # GQN's batch on 4 GPUs
        loop.check_batch(train.parse_args(["--batch_size", "36"]), four_gpus)
    assert loop.check_batch(train.parse_args([]), four_gpus) == 64  # the default: 16 hotels of 2x2, 4 per GPU
    two_ranks = distributed.Runtime(torch.device("cpu"), rank=1, world=2, distributed=True)
    assert loop.check_batch(args, two_ranks) == 4
    for batch, message in (("9", "9 hotels of 1x1, which do not split evenly over 2 processes.*e.g. 10"),
                           ("6", "1 hotel of 2x2.*e.g. 8"),
                           ("36", "9 hotels of 2x2.*e.g. 40")):  # 2 x 4 hotels would be 32 mazes, not 36
        with pytest.raises(loop.TrainingError, match=message):
            loop.check_batch(train.parse_args(["--batch_size", batch]), two_ranks)
    # 2 hotels of 2x2 split over 2 processes although 9 does not: each takes 4 mazes, 8 in all, as in one process.
    assert loop.check_batch(train.parse_args(["--batch_size", "9", "--train_grids", "2"]), two_ranks) == 4
    # What every step holds over all ranks is what --batch_size asks for (less only where k^2 does not divide it).
    for batch in (8, 16, 40):
        per_rank = loop.check_batch(train.parse_args(["--batch_size", str(batch)]), two_ranks)
        for k in (1, 2):
            assert 2 * (per_rank // (k * k)) * k * k == batch // (k * k) * k * k


def test_compile_with_data_parallel_is_refused_before_any_work():
    two_gpus = distributed.Runtime(torch.device("cpu"), device_ids=(0, 1))
    with pytest.raises(loop.TrainingError, match="--compile does not work with DataParallel.*torchrun"):
        args = train.parse_args(["--compile", "--train_data_dir", "/nonexistent"])
        loop.Trainer(RenderTask(args), args, two_gpus)


def test_errors_from_the_command_line_have_no_traceback(scratch):
    """The real process: non-zero exit status, one line on stderr (argparse's own errors go the same way)."""
    run = subprocess.run([python(), SCRIPT, *tiny(scratch, data=scratch / "nowhere")], capture_output=True,
                         text=True, env=subprocess_env(), timeout=300)
    assert run.returncode == 2  # a bad argument (utils/command.py)
    assert_one_line_error(run.stderr, "error: --train_data_dir", "nowhere")


# ----------------------------------------------------------------------------- schedules

def test_schedules_anneal_linearly_then_hold():
    assert schedules.learning_rate(0) == 8e-4  # the original GEN's schedule
    assert schedules.learning_rate(800_000) == pytest.approx(4.025e-4)
    assert schedules.learning_rate(1_600_000) == pytest.approx(5e-6)
    assert schedules.learning_rate(5_000_000) == pytest.approx(5e-6)
    assert schedules.pixel_sigma(0) == 2.0
    assert schedules.pixel_sigma(100_000) == pytest.approx(1.35)
    assert schedules.pixel_sigma(10 ** 7) == pytest.approx(0.7)
    # GQN's form: max(final + (initial - final) * (1 - t / n), final)
    for step in (0, 1, 12345, 199_999, 200_000, 400_000):
        assert schedules.anneal(step, 2.0, 0.7, 200_000) == pytest.approx(
            max(0.7 + 1.3 * (1 - step / 200_000), 0.7))


# ----------------------------------------------------------------------------- torchrun

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_two_ranks_in_sync_and_rank_0_alone_wrote(dumps, run_dir) -> dict:
    """Both ranks' final weights (dumped by tests/dump_weights.py) are identical, and rank 0 alone left a log and a
    checkpoint. Returns rank 0's weights."""
    rank0, rank1 = load(dumps / "rank0.pt"), load(dumps / "rank1.pt")
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    assert len(list((run_dir / "runs").glob("events.out.tfevents.*"))) == 1, "rank 0 alone logs"
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == ["checkpoint-final.pt"]
    return rank0


def test_torchrun_two_cpu_processes_stay_in_sync_only_rank_0_writes_and_one_process_resumes(real_tiny, scratch):
    dumps = scratch / "dumps"
    dumps.mkdir()
    # --compile: DistributedDataParallel under torch.compile, the recommended multi-GPU setup.
    argv = real_tiny(scratch, "--batch_size", 4, "--log_interval", 2, "--compile", steps=2)
    env = {**subprocess_env(), "DUMP_DIR": str(dumps)}
    run = subprocess.run([python(), "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), DUMP_SCRIPT, *argv],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = scratch / "run"
    rank0 = assert_two_ranks_in_sync_and_rank_0_alone_wrote(dumps, run_dir)
    torch.manual_seed(0)
    initial = SceneModel(ModelConfig(img_size=16, layers=2)).state_dict()
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0), "the ranks trained"
    assert load(run_dir / "models" / "checkpoint-final.pt")["args"]["batch_size"] == 4
    assert run.stderr.count("done: step 2") == 1
    scalars, _ = read_events(run_dir / "runs")
    mean, own = dict(scalars["train/loss"]), dict(scalars["train/loss_1x1"])  # ranks' mean; rank 0's own
    assert sorted(own) == [1, 2]
    assert all(0 < own[step] < 2 * mean[step] and own[step] != mean[step] for step in own)
    # The 2-process checkpoint resumes in one process: nothing in it is per rank.
    assert train.main(real_tiny(scratch, "--batch_size", 4, "--saved_model", "auto", steps=3)) == 0
    resumed = load(run_dir / "models" / "checkpoint-final.pt")
    assert resumed["epoch"] == 3
    assert any(not torch.equal(resumed["model_state_dict"][k], rank0[k]) for k in rank0), "it trained on"


def test_torchrun_on_two_nodes_with_a_rendezvous_endpoint(real_tiny, scratch):
    """The README's several-node recipe, both nodes on this machine (one process each, gloo): the
    rendezvous hands out the ranks, the nodes end in sync, and the one node that got rank 0 alone writes."""
    dumps = scratch / "dumps"
    dumps.mkdir()
    # --layers 1: the canvas stays zero, so one weight gets no gradient; DDP must be told to expect that.
    argv = real_tiny(scratch, "--batch_size", 4, "--layers", 1, steps=2)
    codes, errors = two_nodes(scratch, [argv, argv], {"DUMP_DIR": str(dumps)}, script=DUMP_SCRIPT)
    assert codes == [0, 0], "\n".join(e[-2000:] for e in errors)
    assert sum(e.count("done: step 2") for e in errors) == 1, "one node holds rank 0 and reports"
    assert "broadcast_buffers" not in "".join(errors), "DDP's deprecation warning"
    assert_two_ranks_in_sync_and_rank_0_alone_wrote(dumps, scratch / "run")


def test_under_torchrun_a_damaged_episode_counts_once_not_once_per_rank(scratch):
    """One damaged episode of 16 is within --max_bad_files 0.1 (1.6 episodes) however many ranks meet it."""
    from utils.data.episodes import list_episodes
    from utils.data.hotel import plan_step

    samples = REPO_ROOT / "data_samples"
    paths = list_episodes(samples / "train")
    steps, per_rank = 10, 4
    drawn = [{int(e) for step in range(steps) for e in plan_step(0, step, rank, len(paths), per_rank, [1], 2).episodes}
             for rank in (0, 1)]
    damaged = min(drawn[0] & drawn[1])  # met by both ranks
    data = scratch / "data"
    data.mkdir()
    for index, path in enumerate(paths):
        (data / path.name).write_bytes(path.read_bytes()[:100] if index == damaged else path.read_bytes())
    argv = tiny(scratch, "--batch_size", 2 * per_rank, "--max_bad_files", 0.1, steps=steps, data=data,
                test_data=samples / "test")
    run = subprocess.run([python(), "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(free_port()), SCRIPT, *argv],
                         capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert run.returncode == 0 and f"done: step {steps}" in run.stderr, run.stderr[-3000:]
    final = torch.load(scratch / "run" / "models" / "checkpoint-final.pt", weights_only=True)
    assert final["scheduler_state_dict"]["bad_files"] == [str(data / paths[damaged].name)]
    scalars, _ = read_events(scratch / "run" / "runs")
    assert scalars["data/skipped_episodes"][-1] == (steps, 1.0)


def test_nodes_that_would_resume_at_different_steps_stop_with_one_line(real_tiny, scratch):
    """Each node reads its own --root_log_dir: one that finds a checkpoint and one that does not would
    train different step ranges and hang; both stop at once instead."""
    # node a holds checkpoint-final (step 1)
    assert train.main(real_tiny(scratch / "a", "--batch_size", 4, steps=1)) == 0
    argvs = [real_tiny(scratch / node, "--batch_size", 4, "--saved_model", "auto", steps=3) for node in "ab"]
    codes, errors = two_nodes(scratch, argvs)
    assert codes != [0, 0]
    assert all("the processes resumed at different steps" in e and "shared file system" in e for e in errors), \
        "\n".join(e[-2000:] for e in errors)


def two_nodes(scratch, argvs, env=None, script=SCRIPT):
    """The README's several-node recipe, as two single-process nodes on this machine meeting at a c10d
    rendezvous endpoint, node n running ``argvs[n]``: ([exit status], [stderr text]) per node."""
    # --local_addr: each node advertises 127.0.0.1, not a host name that may not resolve.
    launch = [python(), "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
              "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "two-nodes",
              "--rdzv_conf", "join_timeout=60", "--local_addr", "127.0.0.1", script]
    logs = [scratch / f"node{n}.log" for n in range(2)]
    nodes = []
    try:
        for log, argv in zip(logs, argvs):  # files, not pipes: a node blocked on a full pipe would look like a hang
            with open(log, "w") as out:
                nodes.append(subprocess.Popen(launch + argv, stdout=subprocess.DEVNULL, stderr=out,
                                              env={**subprocess_env(), **(env or {})}, start_new_session=True))
        for node in nodes:
            node.wait(timeout=240)
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)  # the launcher and its worker
    return [node.returncode for node in nodes], [log.read_text() for log in logs]


def on_gpu(root, *extra, steps):
    """``tiny`` on GPU 0 with the built-in samples (no ../shared needed), 1x1 and 2x2 hotels."""
    samples = REPO_ROOT / "data_samples"
    argv = tiny(root, "--train_grids", 1, 2, "--batch_size", 4, *extra, steps=steps, data=samples / "train",
                test_data=samples / "test")
    argv.insert(argv.index("--device_ids") + 1, "0")
    return argv


@requires_cuda
def test_a_training_step_never_waits_for_the_gpu(scratch, monkeypatch):
    """The host hands steps to the GPU without a sync (torch's sync debug mode makes one an error): outcomes
    are read a step late, a non-finite step is left out on the device. The sync debug mode does not see
    the wait hidden in copying a strided or pageable tensor to the GPU, so the batches are checked too."""
    queue = loop.Trainer.train_step

    def strict(self, batch, stop):
        for name, value in batch._asdict().items():
            if isinstance(value, torch.Tensor):
                assert value.is_pinned() and value.is_contiguous(), name
        torch.cuda.set_sync_debug_mode("error")
        try:
            return queue(self, batch, stop)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(loop.Trainer, "train_step", strict)
    assert train.main(on_gpu(scratch, steps=4)) == 0


@requires_cuda
def test_training_copies_to_the_gpu_only_from_pinned_memory(scratch, monkeypatch):
    """What the check above is for, seen in the profiler's trace: a copy from pageable memory (a strided or
    unpinned batch) would show as "Memcpy HtoD (Pageable -> Device)"."""
    from torch.profiler import ProfilerActivity, profile
    copies = []
    queue = loop.Trainer.train_step

    def traced(self, batch, stop):
        if self.step == 0:  # the first step also sets things up (Adam's state, the RNG): steady state only
            return queue(self, batch, stop)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
            queued = queue(self, batch, stop)
            torch.cuda.synchronize()
        copies.extend(event.name for event in trace.events() if "Memcpy HtoD" in event.name)
        return queued

    monkeypatch.setattr(loop.Trainer, "train_step", traced)
    assert train.main(on_gpu(scratch, steps=4)) == 0
    assert copies, "no host-to-device copy in the trace: has the profiler renamed them?"
    assert not [name for name in copies if "Pageable" in name], sorted(set(copies))


@requires_cuda
def test_on_a_gpu_a_recovery_and_a_resume_restore_adam_into_channels_last_weights(scratch, monkeypatch):
    """Checkpoints hold plain-layout tensors; the GPU's weights are channels-last (fused Adam refuses a
    mismatch). A blow-up after a checkpoint reloads it; then the run resumes from its newest checkpoint."""
    change_loss(monkeypatch, lambda step, loss: loss * float("nan") if step in (3, 4) else loss)
    assert train.main(on_gpu(scratch, "--save_interval", 2, "--max_bad_steps", 2, steps=6)) == 0
    change_loss(monkeypatch, None)
    assert train.main(on_gpu(scratch, "--saved_model", "auto", steps=8)) == 0
    final = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert final["epoch"] == 8 and final["scheduler_state_dict"]["lr_scale"] == 0.5


@requires_cuda
def test_cuda_graphs_train_like_the_default_compile(scratch):
    """--compile reduce-overhead replays each hotel size's step as CUDA graphs, never skipping them, with the
    same kernels and the same per-step noise: the losses of --compile, within the GPU's run-to-run noise
    (on an H200, two plain --compile runs differed by 1.3e-6 of the loss after 8 steps and --compile against
    reduce-overhead by up to about 1e-5; other noise would differ by far more)."""
    from torch._dynamo.utils import counters
    losses = {}
    for mode in ("default", "reduce-overhead"):
        counters.clear()
        assert train.main(on_gpu(scratch / mode, "--compile", mode, steps=8)) == 0
        scalars, _ = read_events(scratch / mode / "run" / "runs")
        losses[mode] = [value for _, value in scalars["train/loss"]]
        assert min(value for _, value in scalars["gpu_memory_peak_gb"]) > 0  # logged every step on a GPU
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    assert len(losses["reduce-overhead"]) == 8
    assert losses["reduce-overhead"] == pytest.approx(losses["default"], rel=1e-4)


def test_runs_with_different_seeds_share_no_step_however_long_they_train():
    from utils.data.hotel import step_key
    # A linear mix (seed * 1,000,003 + step) gave seed 1's step 5 the key of seed 0's step 1,000,008.
    assert step_key(1, 5, 0) != step_key(0, 1_000_008, 0)
    keys = {step_key(seed, step, rank) for seed in range(3) for step in (0, 1, 10 ** 6, 10 ** 6 + 3, 10 ** 9)
            for rank in range(4)}
    assert len(keys) == 3 * 5 * 4 and all(0 <= key < 2 ** 64 for key in keys)
    assert len({loop.noise_seed(0, step, 0) for step in range(1000)}) == 1000


def test_a_baseline_saved_before_its_views_were_standardised_trains_on_with_its_optimizer_state(scratch, one_thread,
                                                                                                 capsys):
    """A format-2 GQN checkpoint with --memory_norm (the layer norm of its sum only) is upgraded on load, says so,
    and still resumes Adam's moments: its upgrade adds buffers, not parameters."""
    data = REPO_ROOT / "data_samples" / "train"
    assert train.main(tiny(scratch, "--baseline", steps=2, data=data)) == 0
    path = scratch / "run" / "models" / "checkpoint-final.pt"
    checkpoint = load(path)
    checkpoint["format"] = 2
    checkpoint["model_state_dict"] = {k: v for k, v in checkpoint["model_state_dict"].items()
                                      if not k.startswith("composer.view_norm.")}
    torch.save(checkpoint, path)
    capsys.readouterr()
    assert train.main(tiny(scratch, "--baseline", "--saved_model", "auto", steps=3, data=data)) == 0
    err = capsys.readouterr().err
    assert "written before the baseline's --memory_norm standardised each view" in err and "fresh optimizer" not in err
    adam_steps = {float(state["step"]) for state in load(path)["optimizer_state_dict"]["state"].values()}
    assert adam_steps == {3.0}, adam_steps  # 2 steps resumed + 1; a fresh optimizer would count 1
