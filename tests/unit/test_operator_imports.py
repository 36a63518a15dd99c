"""The operator process never imports torch: it must stay small and start fast."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_operator_loads_no_torch_or_torchserve():
    code = (
        "import sys, canaria.handlers, canaria.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'ts', 'model_archiver', 'model_handlers') or m == 'canaria.package'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
