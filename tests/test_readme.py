"""The README and CI agree: `.ci/run` runs the README's test command exactly (with skip reasons shown), and the
README's data table names the folders the loaders look for."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command_exactly_and_shows_skip_reasons():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert len(ci) == 1
    blocks = re.findall(r"```bash\n(.*?)```", _readme(), flags=re.S)
    commands = [line for block in blocks for line in block.splitlines() if "python -m pytest" in line]
    assert commands == [ci[0]]
    assert ci[0].endswith("python -m pytest -q -rs")


def test_the_data_table_names_the_subfolder_each_task_reads():
    from transformer_squared.cli.options import GENERATED, data_folder
    from transformer_squared.tasks import TASKS

    rows = dict(re.findall(r"^\| `(\w+)` \| `(\w+)/` \|", _readme(), flags=re.M))
    assert rows == {t: data_folder(t) for t in TASKS if t not in GENERATED}
