"""The README's promises: its code example runs, and its commands exist."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_training_loop_runs_and_reduces_the_loss():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), namespace)
    assert torch.isfinite(namespace["loss"]).item()
    first = namespace["distill"](student=namespace["student"](namespace["images"]),
                                 teacher=namespace["teacher_out"], target=namespace["labels"])
    assert first.requires_grad and torch.isfinite(first)


def test_readme_quickstart_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[test]" && python -m pytest -q'
    assert test_command in text and test_command in ci
    assert "pip install -e . && kdzero search" in text


def test_ci_installs_only_what_the_readme_tells_a_user_to_install():
    """CI must pass with the README's install commands alone: a package that CI installs by hand (a database
    driver, say) hides a fresh machine's failure. CI may start services; its pip installs name nothing else."""
    text = README.read_text()
    for script in sorted((README.parent / ".ci").iterdir()):
        for command in re.findall(r"pip install ([^\n&;|]+)", script.read_text()):
            packages = [token for token in command.split() if not token.startswith("-")]
            assert packages, f"{script.name}: {command}"
            for package in packages:
                assert package in text, f"{script.name} installs {package}, which the README never asks for"
