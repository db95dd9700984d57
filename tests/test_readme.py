"""The README's Python example runs as written (in a temporary folder)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, str(README), "exec"), {})
    printed = [float(v) for v in capsys.readouterr().out.split()]
    assert len(printed) == 2 and printed[1] < printed[0]  # the dp/analytic chain is tighter
