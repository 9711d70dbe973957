"""Training that survives: SIGTERM mid-run, corrupt newest checkpoint, full disk, NaN losses, damaged episodes.
(Fuzzing of the episode and TFRecord readers lives with the data layer's tests.)"""
import fcntl
import functools
import os
import pty
import re
import resource
import signal
import struct
import subprocess
import termios
import threading
import time

import pytest
import torch

import train_scene_rendering as train
from tests.conftest import REPO_ROOT
from tests.train_support import (SCRIPT, change_loss, main_error, one_thread, python, scratch,  # noqa: F401
                                 subprocess_env, tiny)
from utils.training import schedules
from utils.checkpoint import CheckpointError, checkpoint_step, save_checkpoint
from utils.training.checkpoint_dir import CheckpointDir
from utils.data.episodes import list_episodes
from utils.data.hotel import plan_step
from utils.training.summaries import read_events
from utils.training import loop


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def real_tiny(real_mazes):
    """``tiny`` on the real episodes (the real_mazes fixture: skipped without them, failed under CI)."""
    return functools.partial(tiny, data=real_mazes / "train")


def truncated_copy(source, target, keep=0.5):
    data = source.read_bytes()
    target.write_bytes(data[:int(len(data) * keep)])


def test_sigterm_mid_run_saves_and_auto_resume_continues(real_tiny, scratch, one_thread, capsys):
    argv = real_tiny(scratch, "--workers", 1, steps=1000)
    # stderr is a terminal, as for a user at one: the bar is redrawn at every step (into a pipe, once a minute).
    terminal, stderr_end = pty.openpty()
    fcntl.ioctl(stderr_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))  # 0 columns: an empty bar
    process = subprocess.Popen([python(), SCRIPT, *argv], stdout=subprocess.DEVNULL, stderr=stderr_end,
                               env=subprocess_env())
    os.close(stderr_end)
    stderr = []

    def read():
        try:
            while chunk := os.read(terminal, 4096):
                stderr.append(chunk)
        except OSError:  # the process closed its end
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not re.search(rb"\b[1-9]\d*/1000\b", b"".join(stderr)):  # the bar shows a finished step
        assert process.poll() is None and time.monotonic() < deadline, b"".join(stderr).decode()[-2000:]
        time.sleep(0.2)
    shown = max(int(n) for n in re.findall(rb"\b(\d+)/1000\b", b"".join(stderr)))  # steps finished so far
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    reader.join(timeout=10)
    text = b"".join(stderr).decode()
    assert "Traceback" not in text and "stopped by SIGTERM" in text, text[-2000:]
    models = scratch / "run" / "models"
    saved = [p for p in models.iterdir() if not p.name.startswith(".")]
    assert len(saved) == 1 and saved[0].name != "checkpoint-final.pt", saved
    step = load(saved[0])["epoch"]
    assert 1 <= step < 1000 and saved[0].name == f"checkpoint-{step}.pt"
    # It stopped within the steps already under way, counted in steps, not in seconds of a shared machine. The
    # bar shows step n once step n + 1 is done (outcomes are read a step late); the request rides on the step
    # in flight or the next one, which is read once one more is queued: n + 3 or n + 4 (seen: 1 -> 4), and
    # n + 5 if a step ended between the bar's last redraw and the signal.
    assert shown <= step <= shown + 5, (shown, step)
    assert "train/loss" in read_events(scratch / "run" / "runs")[0], "TensorBoard was flushed"

    # A newer checkpoint cut short by a crash must not stop the resubmitted job: auto falls back past it.
    truncated_copy(saved[0], models / f"checkpoint-{step + 5}.pt")
    assert train.main(real_tiny(scratch, "--saved_model", "auto", steps=step + 1)) == 0
    err = capsys.readouterr().err
    assert f"checkpoint-{step + 5}.pt is not a readable checkpoint" in err and "falling back" in err
    assert f"resumed {saved[0]} at step {step}" in err
    assert load(models / "checkpoint-final.pt")["epoch"] == step + 1


def test_auto_picks_the_newest_readable_checkpoint_and_keeps_the_last_n(scratch):
    warnings = []
    directory = CheckpointDir(scratch / "models", keep=2, warn=warnings.append)
    assert directory.newest() is None
    for step in (2, 4, 6):
        directory.save({"epoch": step, "model_state_dict": {}})
    assert [s for s, _ in directory.numbered()] == [4, 6], "only the last 2 kept"
    assert directory.newest()[1]["epoch"] == 6
    directory.save({"epoch": 6, "model_state_dict": {}}, final=True)
    assert directory.newest()[0] == directory.final
    directory.save({"epoch": 8, "model_state_dict": {}})  # a resumed run went on past its final
    assert directory.newest()[1]["epoch"] == 8
    (directory.path(8)).write_bytes(b"\x00" * 100)  # corrupt newest
    assert directory.newest()[0] == directory.final and "checkpoint-8.pt" in warnings[-1]
    directory.final.write_bytes(b"")
    assert directory.newest()[1]["epoch"] == 6 and directory.newest()[0] == directory.path(6)


def test_a_run_continued_past_its_end_keeps_its_earlier_final_checkpoint(scratch):
    directory = CheckpointDir(scratch / "models", keep=1)
    directory.save({"epoch": 6, "model_state_dict": {"w": torch.ones(2)}}, final=True)
    directory.save({"epoch": 8, "model_state_dict": {}})
    directory.save({"epoch": 10, "model_state_dict": {"w": torch.zeros(2)}}, final=True)
    kept = scratch / "models" / "checkpoint-final-6.pt"
    assert load(kept)["epoch"] == 6 and torch.equal(load(kept)["model_state_dict"]["w"], torch.ones(2))
    assert load(directory.final)["epoch"] == 10 and directory.newest()[0] == directory.final
    directory.save({"epoch": 12, "model_state_dict": {}})  # neither pruned nor picked by auto
    directory.save({"epoch": 10, "model_state_dict": {}}, final=True)  # the same end again: nothing to keep
    assert kept.is_file() and not (scratch / "models" / "checkpoint-final-10.pt").exists()
    assert directory.newest()[1]["epoch"] == 12


def test_a_checkpoints_step_is_read_from_either_torch_format(scratch):
    # past() reads the final checkpoint's step memory-mapped; the original implementation's files
    # (torch before 1.6) cannot be mapped and must still be read.
    weights = {"w": torch.zeros(3)}
    torch.save({"epoch": 7, "model_state_dict": weights}, scratch / "zip.pt")
    torch.save({"epoch": 9, "model_state_dict": weights}, scratch / "old.pt", _use_new_zipfile_serialization=False)
    assert checkpoint_step(scratch / "zip.pt") == 7 and checkpoint_step(scratch / "old.pt") == 9
    (scratch / "cut.pt").write_bytes((scratch / "zip.pt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.pt"):
        checkpoint_step(scratch / "cut.pt")
    torch.save({"epoch": 99}, scratch / "stepless.pt")
    with pytest.raises(CheckpointError, match="stepless.pt is not a checkpoint"):
        checkpoint_step(scratch / "stepless.pt")

def test_disk_full_while_saving_keeps_the_previous_checkpoint(real_tiny, scratch, one_thread, monkeypatch, capsys):
    # The second checkpoint meets a file-size limit: the kernel then fails the write as a full disk would,
    # and torch's writer reports it as a RuntimeError, not an OSError.
    real_save, calls = torch.save, []

    def save_until_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return real_save(*args, **kwargs)
        limit, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limit[1]))
        try:
            return real_save(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            signal.signal(signal.SIGXFSZ, handler)

    monkeypatch.setattr(torch, "save", save_until_full)
    line = main_error(real_tiny(scratch, "--save_interval", 1, steps=2), capsys)
    assert "could not write checkpoint" in line and "(File too large)" in line, line
    assert "previous checkpoints are intact" in line and "once there is room" in line, line
    assert "--saved_model auto" in line
    monkeypatch.undo()
    models = scratch / "run" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint-1.pt"], "no temp file left behind"
    assert load(models / "checkpoint-1.pt")["epoch"] == 1


def test_nan_loss_skips_steps_then_reloads_last_checkpoint_with_half_the_lr(real_tiny, scratch, one_thread,
                                                                           monkeypatch, capsys):
    change_loss(monkeypatch, lambda step, loss: loss * float("nan") if step in (2, 3) else loss)
    assert train.main(real_tiny(scratch, "--save_interval", 2, "--max_bad_steps", 2, steps=5)) == 0
    assert "2 non-finite steps in a row at step 4" in capsys.readouterr().err
    final = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert final["scheduler_state_dict"]["lr_scale"] == 0.5
    assert final["scheduler_state_dict"]["skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in final["model_state_dict"].values())
    scalars, _ = read_events(scratch / "run" / "runs")
    assert [v for _, v in scalars["train/skipped_steps"]] == [0, 0, 1, 2, 2]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 5], "non-finite losses are not plotted"
    assert scalars["train/lr_scale"] == [(4, 0.5)]
    assert scalars["lr"][-1][1] == pytest.approx(0.5 * schedules.learning_rate(4))

    # The halved rate persists across a resume.
    change_loss(monkeypatch, None)
    assert train.main(real_tiny(scratch, "--saved_model", "auto", steps=6)) == 0
    assert load(scratch / "run" / "models" / "checkpoint-final.pt")["scheduler_state_dict"]["lr_scale"] == 0.5



def test_a_run_that_keeps_diverging_stops_instead_of_halving_the_lr_forever(scratch, one_thread, monkeypatch,
                                                                             capsys):
    change_loss(monkeypatch, lambda step, loss: loss * float("nan"))
    line = main_error(tiny(scratch, "--max_bad_steps", 1, "--save_interval", 3, steps=40, data=SAMPLES), capsys)
    assert f"after {loop.MAX_RECOVERIES} recoveries halved the learning rate to 1/{2 ** loop.MAX_RECOVERIES}" \
           in line, line
    scalars, _ = read_events(scratch / "run" / "runs")
    assert [v for _, v in scalars["train/lr_scale"]] == [0.5 ** n for n in range(1, loop.MAX_RECOVERIES + 1)]
    # What the message advises: a branch with its own --lr starts the halvings over (a resume keeps them).
    change_loss(monkeypatch, None)
    newest = CheckpointDir(scratch / "run" / "models").newest()[0]
    assert load(newest)["scheduler_state_dict"]["lr_scale"] < 1
    assert train.main(tiny(scratch, "--saved_model", newest, "--log_dir", "branch", "--lr", 1e-4,
                           steps=load(newest)["epoch"] + 2, data=SAMPLES)) == 0
    assert "the halvings of" in capsys.readouterr().err
    assert load(scratch / "branch" / "models" / "checkpoint-final.pt")["scheduler_state_dict"]["lr_scale"] == 1


def test_the_progress_bar_is_redrawn_once_a_minute_into_a_log_file(scratch, one_thread, monkeypatch, capsys):
    # capsys's stderr is no terminal, as a batch job's log file is not; steps of 0.15 s would redraw a bar
    # with tqdm's default interval (0.1 s) at every step.
    change_loss(monkeypatch, lambda step, loss: time.sleep(0.15) or loss)
    assert train.main(tiny(scratch, steps=6, data=SAMPLES)) == 0
    drawn = re.findall(r"\| *(\d)/6 \[", capsys.readouterr().err)
    assert drawn == ["0", "6"], drawn

def test_a_blow_up_seen_while_the_next_step_runs_is_recovered_from_in_step(real_tiny, scratch, one_thread,
                                                                          monkeypatch, capsys):
    """Outcomes are read a step late: the second bad step (index 3) is read once step 4 is queued, so the
    recovery comes at step 5 and throws that step away with the rest since the last checkpoint (the start)."""
    change_loss(monkeypatch, lambda step, loss: loss * float("inf") if step in (2, 3) else loss)
    assert train.main(real_tiny(scratch, "--max_bad_steps", 2, steps=7)) == 0
    assert "2 non-finite steps in a row at step 5" in capsys.readouterr().err
    scalars, _ = read_events(scratch / "run" / "runs")
    assert [v for _, v in scalars["train/skipped_steps"]] == [0, 0, 1, 2, 2, 2, 2]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 5, 6, 7]
    assert scalars["train/lr_scale"] == [(5, 0.5)]
    lrs = dict(scalars["lr"])
    assert lrs[5] == pytest.approx(schedules.learning_rate(4)), "step 4 was queued before the recovery"
    assert lrs[6] == pytest.approx(0.5 * schedules.learning_rate(5))
    final = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert final["scheduler_state_dict"]["skipped_steps"] == 2
    # Back at the start, then steps 5 and 6 applied: Adam has counted two steps.
    assert int(final["optimizer_state_dict"]["state"][0]["step"]) == 2


def test_one_damaged_episode_is_skipped_counted_and_named_once(real_mazes, real_tiny, scratch, one_thread, capsys):
    data = scratch / "data"
    data.mkdir()
    for source in sorted((real_mazes / "train").glob("*.pt"))[:4]:
        (data / source.name).symlink_to(source)
    (data / "garbage.pt").write_bytes(b"not an episode at all")
    bad_index = [p.name for p in list_episodes(data)].index("garbage.pt")
    argv = ["--batch_size", 4, "--train_grids", 2]
    seed = next(s for s in range(100) if bad_index in plan_step(s, 0, 0, 5, 4, [2], 2).episodes.flatten().tolist())
    assert train.main(real_tiny(scratch, *argv, "--seed", seed, "--max_bad_files", 0.5, steps=1, data=data)) == 0
    err = capsys.readouterr().err
    assert err.count("skipped damaged episode") == 1  # training names it once
    assert err.count("garbage.pt") == 1 + err.count("skipped damaged test episode")  # the test set's, named
    final = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert [os.path.basename(p) for p in final["scheduler_state_dict"]["bad_files"]] == ["garbage.pt"]
    assert read_events(scratch / "run" / "runs")[0]["data/skipped_episodes"] == [(1, 1.0)]

    # 1 of 5 is more than 10%: stop, saying why and what to do.
    line = main_error(real_tiny(scratch / "strict", *argv, "--seed", seed, "--max_bad_files", 0.1, steps=1,
                           data=data), capsys)
    assert "1 of 5 episodes" in line and "--max_bad_files" in line


def test_an_explicit_corrupt_checkpoint_is_a_one_line_error(real_tiny, scratch, capsys):
    good = scratch / "good.pt"
    save_checkpoint({"epoch": 1, "model_state_dict": {"x": torch.zeros(1000)}}, good)
    truncated_copy(good, scratch / "cut.pt")
    line = main_error(real_tiny(scratch, "--saved_model", scratch / "cut.pt"), capsys)
    assert "cut.pt is not a readable checkpoint: the file is damaged" in line and "weights_only" not in line


# ---- runs never mix their checkpoints ------------------------------------------------------------------
SAMPLES = REPO_ROOT / "data_samples" / "train"


def fake_checkpoints(models, *steps, final=None):
    directory = CheckpointDir(models, keep=10)
    for step in steps:
        directory.save({"epoch": step, "model_state_dict": {}})
    if final is not None:
        directory.save({"epoch": final, "model_state_dict": {}}, final=True)
    return {p.name: p.read_bytes() for p in models.iterdir()}


def test_a_fresh_run_refuses_a_folder_that_holds_checkpoints(scratch, capsys):
    models = scratch / "run" / "models"
    before = fake_checkpoints(models, final=3)  # a finished run: only its final checkpoint
    line = main_error(tiny(scratch, steps=1, data=SAMPLES), capsys)
    assert "already holds checkpoints of a run (checkpoint-final.pt)" in line and "--saved_model auto" in line
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before


def test_training_on_from_a_checkpoint_that_is_not_the_newest_is_refused(scratch, capsys):
    models = scratch / "run" / "models"
    before = fake_checkpoints(models, 2, 4, final=6)
    line = main_error(tiny(scratch, "--saved_model", models / "checkpoint-4.pt", steps=8, data=SAMPLES), capsys)
    assert "past the step of checkpoint-4.pt (checkpoint-final.pt)" in line, line
    line = main_error(tiny(scratch, "--saved_model", models / "checkpoint-2.pt", steps=8, data=SAMPLES), capsys)
    assert "(checkpoint-4.pt, checkpoint-final.pt)" in line, line
    elsewhere = scratch / "pretrained.pt"
    save_checkpoint({"epoch": 9, "model_state_dict": {}}, elsewhere)
    line = main_error(tiny(scratch, "--saved_model", elsewhere, steps=12, data=SAMPLES), capsys)
    assert "already holds checkpoints (checkpoint-final.pt): continue them with --saved_model auto" in line, line
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before



def test_a_run_resumes_only_with_its_own_flags_but_a_branch_may_change_them(scratch, one_thread, capsys):
    # --layers changes no weight shape and --seed no tensor at all: only the comparison with the saved
    # args can tell that the resumed run would train another model on other batches.
    assert train.main(tiny(scratch, steps=2, data=SAMPLES)) == 0
    capsys.readouterr()
    models = scratch / "run" / "models"
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    changed = ("--layers", 3, "--seed", 5, "--train_grids", 1, 2, "--batch_size", 4)
    line = main_error(tiny(scratch, "--saved_model", "auto", *changed, steps=3, data=SAMPLES), capsys)
    assert "checkpoint-final.pt was trained with other flags: --layers 3 (its run: 2), --batch_size 4 (its run: 2), " \
           "--train_grids 1 2 (its run: 1), --seed 5 (its run: 0)" in line, line
    line = main_error(tiny(scratch, "--saved_model", models / "checkpoint-final.pt", "--lr", 1e-3, steps=3,
                           data=SAMPLES), capsys)
    assert "--lr 0.001 (its run: 0.0008)" in line and "another --log_dir" in line, line
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before
    # The same flags, or ones that do not define the run, resume as before.
    assert train.main(tiny(scratch, "--saved_model", "auto", "--log_interval", 7, "--clip_grad", 1, steps=3,
                           data=SAMPLES)) == 0
    capsys.readouterr()
    # A branch into another --log_dir may change them, with a warning.
    branch = tiny(scratch, "--saved_model", models / "checkpoint-final.pt", "--log_dir", "branch", "--layers", 3,
                  steps=4, data=SAMPLES)
    assert train.main(branch) == 0
    assert "with flags its run did not use: --layers 3 (its run: 2)" in capsys.readouterr().err
    assert load(scratch / "branch" / "models" / "checkpoint-final.pt")["args"]["layers"] == 3
    # Except the flags that shape the weights: no run can change those.
    line = main_error(tiny(scratch, "--saved_model", models / "checkpoint-final.pt", "--log_dir", "other",
                           "--img_size", 32, steps=4, data=SAMPLES), capsys)
    assert "holds the weights of another model: --img_size 32 (its run: 16); give its values" in line, line

def test_rotation_never_deletes_the_checkpoint_just_written_nor_a_later_one(scratch):
    directory = CheckpointDir(scratch / "models", keep=1)
    directory.save({"epoch": 8, "model_state_dict": {}})  # e.g. left by a run that went further
    directory.save({"epoch": 4, "model_state_dict": {}})
    assert [s for s, _ in directory.numbered()] == [4, 8]
    directory.save({"epoch": 5, "model_state_dict": {}})
    assert [s for s, _ in directory.numbered()] == [5, 8]


def signal_at(step, signum=signal.SIGTERM):
    """A ``change_loss`` that raises ``signum`` in this thread during step ``step`` (0-based). raise_signal, not
    os.kill: the process's other threads (torch's, tqdm's) could take a killed process's signal, and Python
    would run the handler later."""
    def hook(at, loss):
        if at == step:
            signal.raise_signal(signum)
        return loss
    return hook


def test_a_stop_during_the_last_step_still_ends_with_the_final_checkpoint(scratch, one_thread, monkeypatch,
                                                                           capsys):
    change_loss(monkeypatch, signal_at(1))  # the second and last step
    assert train.main(tiny(scratch, steps=2, data=SAMPLES)) == 0
    assert "done: step 2" in capsys.readouterr().err
    models = scratch / "run" / "models"
    assert [p.name for p in models.iterdir()] == ["checkpoint-final.pt"]
    assert load(models / "checkpoint-final.pt")["epoch"] == 2


def test_a_resumed_run_keeps_the_logs_of_its_checkpoint_step(scratch, one_thread, monkeypatch, capsys):
    change_loss(monkeypatch, signal_at(1))
    assert train.main(tiny(scratch, steps=5, data=SAMPLES)) == 0
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", capsys.readouterr().err).group(1))
    assert 2 <= stopped < 5
    change_loss(monkeypatch, None)
    assert train.main(tiny(scratch, "--saved_model", "auto", steps=5, data=SAMPLES)) == 0
    scalars, _ = read_events(scratch / "run" / "runs")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5]  # as TensorBoard shows them


def test_a_damaged_episode_is_replaced_by_one_its_hotel_does_not_hold_yet(tmp_path, recwarn):
    """2x2 hotels from 5 episodes, one damaged: whichever step draws it, the 4 mazes stay distinct."""
    from tests.test_dataset import distinct_episode
    from utils.data.episodes import save_episode
    from utils.data.hotel import HotelSteps

    for i, name in enumerate("abcde"):
        save_episode(tmp_path / f"{name}.pt", *distinct_episode(i))
    (tmp_path / "b.pt").write_bytes(b"not an episode")
    steps = HotelSteps(tmp_path, img_size=16, batch_size=4, grids=[2], context_views=1, seed=0)
    drawn = [s for s in range(40) if 1 in steps.plan(s).episodes.flatten().tolist()]
    assert drawn
    for step in drawn:
        cameras = steps[step].query_poses[0, :, 2]  # each episode's cameras carry its own height
        assert len(set(cameras.tolist())) == 4, step
    three_good = HotelSteps(tmp_path, img_size=16, batch_size=4, grids=[2], context_views=1, seed=0)
    three_good.paths = three_good.paths[:4]  # a, b (damaged), c, d: a 2x2 hotel must repeat one, not fail
    cameras = three_good[drawn[0]].query_poses[0, :, 2]
    assert len(set(cameras.tolist())) == 3


def test_a_run_whose_every_episode_is_damaged_stops_with_one_line_and_exits(scratch):
    """With loader workers too: they ignore SIGTERM, so the run must shut them down itself or hang at exit."""
    data = scratch / "data"
    data.mkdir()
    for i in range(4):
        (data / f"{i}.pt").write_bytes(b"not an episode")
    argv = tiny(scratch, "--workers", 1, data=data, test_data=SAMPLES.parent / "test")
    run = subprocess.run([python(), SCRIPT, *argv], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].endswith(f"error: every episode in {data} is damaged")


def test_ctrl_c_stops_like_sigterm_and_a_second_one_aborts(scratch, one_thread, monkeypatch, capsys):
    change_loss(monkeypatch, signal_at(0, signal.SIGINT))
    assert train.main(tiny(scratch, steps=4, data=SAMPLES)) == 0
    assert re.search(r"stopped by SIGINT at step [12]; saved", capsys.readouterr().err)
    twice = lambda step, loss: signal.raise_signal(signal.SIGINT) or signal.raise_signal(signal.SIGINT) or loss  # noqa
    change_loss(monkeypatch, twice)
    with pytest.raises(SystemExit) as aborted:
        train.main(tiny(scratch, "--log_dir", "aborted", steps=4, data=SAMPLES))
    assert aborted.value.code == 130
    err = capsys.readouterr().err
    assert "aborted by a second Ctrl-C: nothing saved since the last checkpoint" in err and "Traceback" not in err


def test_a_gpu_that_does_not_exist_is_one_line(scratch, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = main_error(tiny(scratch, "--device_ids", 0, 3, data=SAMPLES), capsys)
    assert "names GPU 3 but only 2 GPU(s) are visible" in line


def test_an_error_in_the_first_evaluation_exits_without_waiting_for_loader_workers(scratch):
    code = ("import sys, train_scene_rendering as t\n"
            "from utils.training import loop\n"
            "def boom(*args, **kwargs): raise RuntimeError('boom')\n"
            "loop.Trainer.evaluate = boom\n"
            "sys.exit(t.main(sys.argv[1:]))")
    argv = tiny(scratch, "--workers", 1, data=SAMPLES, test_data=SAMPLES.parent / "test")
    run = subprocess.run([python(), "-c", code, *argv], capture_output=True, text=True, env=subprocess_env(),
                         timeout=120)
    assert run.returncode == 1 and "RuntimeError: boom" in run.stderr


def test_episodes_whose_cameras_leave_the_maze_extent_are_warned_about(scratch, one_thread, capsys):
    """Cameras at another scale would be stretched into neighbouring mazes' cells: say so at the start."""
    from utils.data.episodes import load_episode, save_episode
    data = scratch / "scaled"
    data.mkdir()
    for path in sorted(SAMPLES.glob("*.pt"))[:4]:
        episode = load_episode(path)
        cameras = episode.cameras.copy()
        cameras[:, :2] *= 3  # x, y now reach about +-1
        save_episode(data / path.name, episode.frames, cameras)
    assert train.main(tiny(scratch, steps=1, data=data, test_data=SAMPLES)) == 0
    assert "outside the maze extent [-0.4, 0.3]" in capsys.readouterr().err
    assert train.main(tiny(scratch / "fits", steps=1, data=SAMPLES, test_data=SAMPLES)) == 0
    assert "outside the maze extent" not in capsys.readouterr().err


def test_a_run_resumed_within_the_same_second_keeps_the_last_runs_events(tmp_path, monkeypatch):
    """tensorboardX names event files by the second; a second writer of that name used to truncate the first."""
    import time
    from utils.training.summaries import open_writer
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # both writers open in the same second
    first = open_writer(tmp_path)
    first.add_scalar("train/loss", 1.0, 1)
    first.close()
    resumed = open_writer(tmp_path, purge_step=2)
    resumed.add_scalar("train/loss", 2.0, 2)
    resumed.close()
    assert read_events(tmp_path)[0]["train/loss"] == [(1, 1.0), (2, 2.0)]


# ---- a checkpoint is data, never code --------------------------------------------------------------------
class CodePayload:
    """Unpickled, this runs ``os.system("touch MARKER")`` or ``open(MARKER, "w")``: either leaves the marker."""

    def __init__(self, marker, how):
        self.marker, self.how = str(marker), how

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch '{self.marker}'",)
        return open, (self.marker, "w")


def payload_checkpoint(folder, how, legacy):
    """A checkpoint-shaped file (epoch, weights, args) whose args carry a code payload."""
    marker = folder / f"payload-ran-{how}"
    path = folder / f"payload-{how}{'-legacy' if legacy else ''}.pt"
    args = {"img_size": 16, "layers": 2, "baseline": False, "context_views": 2, "hook": CodePayload(marker, how)}
    torch.save({"epoch": 1, "model_state_dict": {"w": torch.zeros(2)}, "args": args}, path,
               _use_new_zipfile_serialization=not legacy)
    assert not marker.exists()
    return path, marker


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("how", ["os.system", "open"])
def test_a_checkpoint_carrying_code_is_refused_by_training_and_evaluation_and_never_run(scratch, capsys, how,
                                                                                        legacy):
    import evaluate
    path, marker = payload_checkpoint(scratch, how, legacy)
    line = main_error(tiny(scratch, "--saved_model", path, steps=2, data=SAMPLES), capsys)
    assert not marker.exists(), "training ran the checkpoint's code"
    assert f"{path} is not a readable checkpoint" in line, line
    assert not (scratch / "run" / "models").exists() or not any((scratch / "run" / "models").iterdir())

    out = scratch / "eval"
    argv = ["--saved_model", str(path), "--test_data_dir", str(SAMPLES.parent / "test"), "--out", str(out),
            "--grids", "1", "--episodes", "1", "--device", "cpu"]
    code = evaluate.cli(argv)
    assert not marker.exists(), "evaluation ran the checkpoint's code"
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error: ") and str(path) in lines[0], err
    assert "Traceback" not in err
    assert not (out / "metrics.csv").exists()

    # The payload is live: an unrestricted load does run it (else the checks above would prove nothing).
    torch.load(path, weights_only=False)
    assert marker.exists()
