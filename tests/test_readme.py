"""The README's methods table lists exactly the registered methods."""

import re

from flashtorch import METHODS

from .conftest import ROOT


def test_readme_methods_table_matches_registry():
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- methods-table")[1].split("<!-- /methods-table -->")[0]
    names = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.M)
    assert names == list(METHODS)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", text)
    assert len(commands) >= 2
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci  # CI runs the README's test command verbatim
    assert "pytest" in commands[1]
