"""A cold `mmfind query` in a fresh interpreter, and which of some modules it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROBE = """\
import json, runpy, sys
text, index, watched = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sys.argv = ["mmfind", "query", text, "--index", index, "--json", "--no-server", "-n", "20"]
try:
    runpy.run_module("mmfind", run_name="__main__")
except SystemExit as exc:
    code = exc.code
imported = sorted(m for m in watched if m in sys.modules)
print(json.dumps({"code": code, "imported": imported}), file=sys.stderr)
"""


def cold_query(
    index: Path, text: str, watched: Sequence[str], env: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The query's JSON answer, and {"code": its exit code, "imported": the `watched` modules
    it imported}."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, text, str(index), ",".join(watched)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=180,
    )
    report: dict[str, Any] = json.loads(done.stderr.strip().splitlines()[-1])
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer, report
