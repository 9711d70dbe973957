"""The layout's rules (docs/design.md, Import graph): tools run as modules from the repository root, so no file
edits sys.path; models/ imports nothing from utils/, and no entry script imports another."""
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
