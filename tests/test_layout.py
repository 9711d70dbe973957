"""The layout's rules (docs/design.md, Import graph): tools run as modules from the repository root, so no file
edits sys.path; the imports follow the layers (models, utils.data, utils.training, utils.evaluation), and no
entry script imports another."""
import re

from bench import import_graph
from tests.conftest import REPO_ROOT

SYS_PATH_EDIT = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*=")


def test_no_file_edits_sys_path():
    edits = [f"{path.relative_to(REPO_ROOT)}:{n}" for path in import_graph.project_modules().values()
             for n, line in enumerate(path.read_text().splitlines(), 1) if SYS_PATH_EDIT.search(line)]
    assert edits == []


def test_import_graph_keeps_its_rules(capsys):
    assert import_graph.main([]) == 0, capsys.readouterr().err
    edges = capsys.readouterr().out.splitlines()
    assert "utils -> models" in edges and not any(edge.startswith("models ->") for edge in edges)


def test_the_import_rules_catch_an_arrow_against_the_layers(monkeypatch, capsys):
    assert import_graph.fold("utils.data.hotel") == "utils.data" and import_graph.fold("utils.checkpoint") == "utils"
    for edge in [("models", "utils"), ("utils.data", "utils.training"), ("utils.training", "utils.evaluation"),
                 ("utils.evaluation", "utils.training"), ("utils", "utils.data")]:
        assert import_graph.forbidden(*edge), edge
    assert not import_graph.forbidden("utils.training", "utils.data")
    real = import_graph.imports
    monkeypatch.setattr(import_graph, "imports", lambda path, modules: real(path, modules) | (
        {"utils.training.loop"} if path.name == "hotel.py" else set()))
    assert import_graph.main([]) == 1
    assert "utils.data.hotel -> utils.training.loop: utils.data must not import from utils.training" in \
        capsys.readouterr().err
