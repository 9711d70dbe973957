"""Golden files: the committed ``data_samples/`` are what the documented command writes, byte for byte.

The documentation (README.md or docs/) says how ``data_samples/`` was made: ``python -m utils.data.make_mazes --out
data_samples --train 16 --test 25 --seed 0``. An episode is a pure function of (seed, split, index), so the
same command with ``--train 1 --test 1`` writes the first episode of each split exactly as the full run
did (0.1-0.2 s an episode, not 41 of them); the contact sheet needs 4 training episodes and is left out.
Both episodes and both top-down maps must equal the committed files byte for byte. The JPEG bytes come
from Pillow's libjpeg and the mazes from numpy's generators, so another Pillow or numpy than the ones the
samples were made with can make this fail without any change to the generator: the message says which.
"""
import re
import shlex
import subprocess
import sys

import numpy
import PIL
import pytest

from tests.conftest import REPO_ROOT

SAMPLES = REPO_ROOT / "data_samples"
GOLDEN = ["train/maze-0000.pt", "train/maze-0000.map.png", "test/maze-0000.pt", "test/maze-0000.map.png"]


def documented_command() -> list:
    """The command line the documentation gives for data_samples/, as argv after the module."""
    found = []
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        if doc.is_file():
            found += re.findall(r"^\s*python -m utils\.data\.make_mazes (--out data_samples .*)$",
                                doc.read_text(), re.M)
    assert found, "no `python -m utils.data.make_mazes --out data_samples ...` line in README.md or docs/"
    assert len(set(found)) == 1, f"the documentation gives several commands for data_samples/: {set(found)}"
    return shlex.split(found[0])


def with_options(argv: list, **values) -> list:
    """argv with each ``--name value`` of ``values`` replaced, or appended when absent."""
    argv = list(argv)
    for name, value in values.items():
        flag = "--" + name.replace("_", "-") if name == "contact_sheet" else "--" + name
        if flag in argv:
            argv[argv.index(flag) + 1] = str(value)
        else:
            argv += [flag, str(value)]
    return argv


def test_the_documented_command_rewrites_the_committed_samples_byte_for_byte(tmp_path):
    argv = documented_command()
    assert argv[argv.index("--out") + 1] == "data_samples"
    assert {"--train", "--test", "--seed"} <= set(argv), argv
    counts = {split: int(argv[argv.index(f"--{split}") + 1]) for split in ("train", "test")}
    assert counts == {split: len(list((SAMPLES / split).glob("*.pt"))) for split in counts}, \
        "the documented counts are not the committed ones"

    out = tmp_path / "data_samples"
    run = subprocess.run([sys.executable, "-m", "utils.data.make_mazes",
                          *with_options(argv, out=out, train=1, test=1, contact_sheet="")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == sorted(GOLDEN), written
    versions = f"numpy {numpy.__version__}, Pillow {PIL.__version__}"
    for name in GOLDEN:
        ours, committed = (out / name).read_bytes(), (SAMPLES / name).read_bytes()
        assert ours == committed, (f"{name}: regenerated {len(ours)} bytes differ from the committed {len(committed)} "
                                   f"(with {versions})")


@pytest.mark.parametrize("argv, values, expected", [
    (["--out", "d", "--train", "16"], {"train": 1, "test": 1}, ["--out", "d", "--train", "1", "--test", "1"]),
    ([], {"contact_sheet": ""}, ["--contact-sheet", ""]),
])
def test_with_options_replaces_or_appends(argv, values, expected):
    assert with_options(argv, **values) == expected
