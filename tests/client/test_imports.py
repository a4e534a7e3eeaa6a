"""The client install stays light: importing it never pulls torch or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_client_never_imports_torch() -> None:
    code = (
        "import cbpt.client.cli, cbpt.client.rpc.sdk, cbpt.client.tuning.tuner, cbpt.client.files.artifacts, "
        "cbpt.client.tuning.checkpoint, cbpt.client.optimizers; import sys; "
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
