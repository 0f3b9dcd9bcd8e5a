"""The README's job commands, in the order written, are accepted one after the other (each submit
recorded as the run it would create), so a newcomer following them meets no refusal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from service.cli import EXIT_OK, main
from service.io import tracking
from service.spec.loading import load_job

ROOT = Path(__file__).resolve().parents[2]


def readme_job_commands() -> list[list[str]]:
    """The `hyperctl validate|submit jobs/...` lines of the README's first two command blocks (the quick
    start, then "The service"), in order."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)[:2]
    assert len(blocks) == 2
    commands = []
    for line in "\n".join(blocks).splitlines():
        words = shlex.split(line, comments=True)
        if len(words) >= 3 and words[0].endswith("hyperctl") and words[1] in ("validate", "submit"):
            if "--address" not in words:  # the cluster examples need a cluster
                commands.append(words[1:])
    return commands


def test_readme_job_commands_work_in_the_order_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = readme_job_commands()
    assert [c[0] for c in commands] == ["submit", "validate", "submit"], commands
    monkeypatch.chdir(ROOT)
    storage = ["--set", f"storage={tmp_path / 'runs'}"]
    for command, job, *rest in commands:
        assert main(["validate", job, *rest, *storage]) == EXIT_OK, (command, job, rest)
        if command == "submit":  # what the submit records first: its run, by name
            spec = load_job(job, [*[a for a in rest if a != "--set"], f"storage={tmp_path / 'runs'}"])
            tracking.open_run(spec, tracking.tracking_uri_for(spec))
    # The quickstart itself, as written before the variant, was recorded: its own relaunch still resumes.
    assert main(["validate", "jobs/quickstart.yaml", *storage]) == EXIT_OK
