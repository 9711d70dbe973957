"""train_embed_classify.py: the embed-and-classify model trained by the renderer's loop (utils/training/loop.py).

The loop's own behaviour (damaged files, recoveries, devices, DDP, ...) is tested through the renderer
(test_train.py, test_robustness.py); here: what the classifier's task adds or changes, and that its runs
checkpoint, resume exactly, stop on SIGTERM and keep to their own task. Tiny runs: 16 px, 2 or 4 steps.
"""
import shutil
import subprocess

import pytest
import torch

import train_embed_classify as classify
import train_scene_rendering as render
from models.embed_classify import EmbedClassifier, EmbedClassifierConfig
from tests.conftest import REPO_ROOT
from tests.train_support import (assert_one_line_error, main_error, make_scratch, one_thread, python, scratch,  # noqa: F401
                                 subprocess_env, tiny)
from utils.training import schedules
from utils.checkpoint import (EMBED_CLASSIFY, RENDER, CheckpointError, checkpoint_task, load_checkpoint,
                              load_model_state, model_from_checkpoint, save_checkpoint)
from utils.training.summaries import read_events

SAMPLES = REPO_ROOT / "data_samples" / "train"
SCRIPT = REPO_ROOT / "train_embed_classify.py"
# 1x1 and 2x2 hotels of 4 mazes, test accuracies and images at steps 2 and 4, a checkpoint at step 2.
STRAIGHT = ["--batch_size", 4, "--train_grids", 1, 2, "--test_grids", 1, 2, "--log_interval", 2,
            "--save_interval", 2]


def tiny_classify(root, *extra, steps=2):
    """``tiny``'s command line (16 px, CPU, no workers) without the renderer's --layers."""
    argv = tiny(root, *extra, steps=steps, data=SAMPLES)
    at = argv.index("--layers")
    return argv[:at] + argv[at + 2:]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where):
    """Nested dicts / lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def classify_error(argv, capsys) -> str:
    return main_error(argv, capsys, classify.main)


@pytest.fixture(scope="module")
def straight_run():
    """4 steps in one go."""
    root = make_scratch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert classify.main(tiny_classify(root, *STRAIGHT, steps=4)) == 0
        yield root / "run"
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)


def test_defaults_and_flags():
    args = classify.parse_args([])
    assert (args.lr, args.lr_final, args.lr_steps) == (5e-4, 5e-8, 1_600_000) == (
        schedules.CLASSIFY_LR, schedules.CLASSIFY_LR_FINAL, schedules.LR_STEPS)
    assert (args.log_dir, classify.parse_args(["--baseline"]).log_dir) == ("GEN-classify", "GQN-classify")
    assert args.memory_norm and not args.embedding_norm and args.batch_size == 36 and args.train_grids == [1, 2]
    assert classify.parse_args(["--embedding_norm"]).embedding_norm
    assert not hasattr(args, "sigma") and not hasattr(args, "layers"), "no pixel sigma, no DRAW layers"
    text = " ".join(classify.build_parser().format_help().split())
    assert "(default: 5e-08)" in text and "default: None" not in text


def test_a_run_writes_checkpoints_of_its_task_that_load(straight_run):
    models = straight_run / "models"
    assert sorted(p.name for p in models.iterdir()) == ["checkpoint-2.pt", "checkpoint-final.pt"]
    checkpoint = load_checkpoint(models / "checkpoint-final.pt")
    assert checkpoint["epoch"] == 4 and checkpoint["task"] == EMBED_CLASSIFY == checkpoint_task(checkpoint)
    assert {"model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "args", "rng_state"} <= set(checkpoint)
    assert "sigma" not in checkpoint
    assert checkpoint["scheduler_state_dict"]["lr"] == schedules.learning_rate(4, 5e-4, 5e-8)
    torch.manual_seed(0)  # the run's seed: its initial weights
    model = EmbedClassifier(EmbedClassifierConfig(img_size=16))
    initial = {key: value.clone() for key, value in model.state_dict().items()}
    load_model_state(model, checkpoint["model_state_dict"])
    assert any(not torch.equal(value, initial[key]) for key, value in model.state_dict().items()), "it trained"


def test_tensorboard_has_the_classifier_s_tags(straight_run):
    scalars, images = read_events(straight_run / "runs")
    steps = [1, 2, 3, 4]
    for tag in ("train/loss", "train/accuracy", "train/log_scale", "lr", "grad_norm"):
        assert [step for step, _ in scalars[tag]] == steps, tag
    # Each step is one hotel size; rank 0's loss and accuracy are logged under it.
    for name in ("loss", "accuracy"):
        per_grid = sorted(step for k in (1, 2) for step, _ in scalars.get(f"train/{name}_{k}x{k}", []))
        assert per_grid == steps, name
    for k in (1, 2):
        for tag in (f"test/loss_{k}x{k}", f"test/accuracy_{k}x{k}", f"test/candidates_{k}x{k}",
                    f"test/score_spread_{k}x{k}"):
            assert [step for step, _ in scalars[tag]] == [0, 2, 4], tag
        assert images[f"images/test_{k}x{k}"] == [0, 2, 4]
        # Every view of the test batch (4 mazes, 2 context views and a query each) is a candidate.
        assert {value for _, value in scalars[f"test/candidates_{k}x{k}"]} == {4 * (2 + 1)}
    assert images["images/train"] == [2, 4]
    spreads = [value for k in (1, 2) for _, value in scalars[f"test/score_spread_{k}x{k}"]]
    assert all(0 < value < float("inf") for value in spreads), spreads
    assert all(0 <= value <= 1 for tag in scalars if "accuracy" in tag for _, value in scalars[tag])
    assert scalars["train/log_scale"][0][1] == 0, "exp(0): the scale starts at 1"
    assert not {tag for tag in scalars if "sigma" in tag or "kl" in tag or tag.startswith("diag/")}


def test_a_run_resumed_halfway_ends_with_the_same_weights(straight_run, scratch, one_thread, capsys):
    assert classify.main(tiny_classify(scratch, *STRAIGHT, steps=2)) == 0
    assert classify.main(tiny_classify(scratch, *STRAIGHT, "--saved_model", "auto", steps=4)) == 0
    assert "resumed" in capsys.readouterr().err
    straight = load(straight_run / "models" / "checkpoint-final.pt")
    resumed = load(scratch / "run" / "models" / "checkpoint-final.pt")
    assert resumed["epoch"] == straight["epoch"] == 4
    assert_same(straight["model_state_dict"], resumed["model_state_dict"], "weights")
    assert_same(straight["optimizer_state_dict"], resumed["optimizer_state_dict"], "Adam")
    scalars, _ = read_events(scratch / "run" / "runs")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert scalars["train/loss"] == read_events(straight_run / "runs")[0]["train/loss"]


def test_sigterm_saves_a_checkpoint_and_exits_0(scratch):
    """A real SIGTERM, raised in the training process during its second step (step 1, 0-based)."""
    code = ("import signal, sys, pytest, train_embed_classify as t\n"
            "from tests.train_support import change_loss\n"
            "change_loss(pytest.MonkeyPatch(), lambda step, loss: (signal.raise_signal(signal.SIGTERM) if step == 1 "
            "else None) or loss)\n"
            "sys.exit(t.main(sys.argv[1:]))")
    run = subprocess.run([python(), "-c", code, *tiny_classify(scratch, steps=50)], capture_output=True, text=True,
                         env=subprocess_env(), timeout=300, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "stopped by SIGTERM at step" in run.stderr, run.stderr[-2000:]
    saved = [p for p in (scratch / "run" / "models").iterdir() if not p.name.startswith(".")]
    assert len(saved) == 1 and saved[0].name != "checkpoint-final.pt", saved
    checkpoint = load(saved[0])
    assert 2 <= checkpoint["epoch"] < 50 and checkpoint["task"] == EMBED_CLASSIFY
    assert saved[0].name == f"checkpoint-{checkpoint['epoch']}.pt"


def test_each_script_refuses_the_other_task_s_checkpoint_in_one_line(straight_run, scratch, one_thread, capsys):
    classified = straight_run / "models" / "checkpoint-final.pt"
    assert render.main(tiny(scratch / "render", steps=1, data=SAMPLES)) == 0
    rendered = scratch / "render" / "run" / "models" / "checkpoint-final.pt"
    assert load(rendered)["task"] == RENDER
    capsys.readouterr()

    line = classify_error(tiny_classify(scratch / "a", "--saved_model", rendered), capsys)
    assert line.startswith("train_embed_classify.py: error:") and "holds a renderer" in line
    assert "train_scene_rendering.py" in line
    line = assert_one_line_error(main_error(tiny(scratch / "b", "--saved_model", classified, data=SAMPLES), capsys),
                                 "train_scene_rendering.py: error:", "holds an embed-and-classify model",
                                 "train_embed_classify.py")
    # evaluate.py loads renderers through model_from_checkpoint.
    with pytest.raises(CheckpointError, match="holds an embed-and-classify model"):
        model_from_checkpoint(classified)

    # Checkpoints that do not name their task (the original's, ours from before) are known by their weights.
    unnamed = scratch / "unnamed.pt"
    checkpoint = load(classified)
    del checkpoint["task"]
    save_checkpoint(checkpoint, unnamed)
    assert_one_line_error(main_error(tiny(scratch / "c", "--saved_model", unnamed, data=SAMPLES), capsys),
                          "holds an embed-and-classify model")
    # --saved_model auto: a run folder holding the other task's checkpoints.
    shutil.copytree(scratch / "render" / "run", scratch / "d" / "run")
    line = classify_error(tiny_classify(scratch / "d", "--saved_model", "auto"), capsys)
    assert "holds a renderer" in line


def test_a_damaged_checkpoint_is_one_line(scratch, capsys):
    damaged = scratch / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    line = classify_error(tiny_classify(scratch, "--saved_model", damaged), capsys)
    assert line.startswith("train_embed_classify.py: error:") and "is not a readable checkpoint" in line


def test_an_original_checkpoint_trains_on_as_the_original_did(scratch, one_thread, capsys):
    torch.manual_seed(123)
    weights = EmbedClassifier(EmbedClassifierConfig(img_size=16, memory_norm=False, embedding_norm=False)).state_dict()
    original = scratch / "original.pt"
    torch.save({"epoch": 3, "model_state_dict": {"module." + k: v for k, v in weights.items()}}, original)
    assert classify.main(tiny_classify(scratch, "--saved_model", original, "--embedding_norm", steps=4)) == 0
    err = capsys.readouterr().err
    assert "original-implementation checkpoint" in err and "--no-memory_norm --no-embedding_norm" in err
    args = load(scratch / "run" / "models" / "checkpoint-final.pt")["args"]
    assert args["memory_norm"] is False and args["embedding_norm"] is False
