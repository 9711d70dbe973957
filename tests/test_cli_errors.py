"""One error convention for every command (utils/command.py): a bad argument - here an input that does not
exist, found once the command runs, past argparse - is one line ``PROG: error: ...`` on stderr naming it, no
traceback, exit status 2; argparse's own refusals exit 2 the same way."""
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.train_support import subprocess_env

MISSING = "/nonexistent/gen-input"
SAMPLES = "data_samples/test"
TINY_TRAINING = ["--train_data_dir", MISSING, "--img_size", "16", "--workers", "0", "--device_ids"]

COMMANDS = {  # (command, arguments naming MISSING or an unusable input, the error line's prefix)
    "train_scene_rendering": (["train_scene_rendering.py", *TINY_TRAINING, "--layers", "1"], "train_scene_rendering.py"),
    "train_embed_classify": (["train_embed_classify.py", *TINY_TRAINING], "train_embed_classify.py"),
    "evaluate": (["evaluate.py", "--saved_model", MISSING, "--test_data_dir", SAMPLES, "--out", "{tmp}/eval"],
                 "evaluate.py"),
    "evaluate_retrieval": (["evaluate_retrieval.py", "--saved_model", MISSING, "--test_data_dir", SAMPLES,
                            "--out", "{tmp}/eval"], "evaluate_retrieval.py"),
    "make_gif": (["make_gif.py", "--saved_model", MISSING, "--data_dir", SAMPLES, "--out", "{tmp}/tour.gif"],
                 "make_gif.py"),
    "convert": (["-m", "utils.data.convert", MISSING, "{tmp}/converted"], "python -m utils.data.convert"),
    "files": (["-m", "utils.data.files", "rewrite", MISSING, "{tmp}/rewritten"], "python -m utils.data.files"),
    "make_mazes": (["-m", "utils.data.make_mazes", "--out", "data_samples"], "python -m utils.data.make_mazes"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_bad_argument_is_one_line_and_exit_status_2(name, tmp_path):
    argv, prog = COMMANDS[name]
    run = subprocess.run([sys.executable, *(a.format(tmp=tmp_path) for a in argv)], capture_output=True, text=True,
                         env=subprocess_env(), cwd=REPO_ROOT, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), run.stderr
    assert "Traceback" not in run.stderr
    named = "data_samples" if name == "make_mazes" else MISSING
    assert named in lines[0], lines[0]
