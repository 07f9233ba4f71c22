"""Rewrite the generated fault tables in docs/scenario-format.md from the fault registry.

.venv/bin/python scripts/fault_table.py          # rewrite the file
.venv/bin/python scripts/fault_table.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.model.fault_table import replace_block  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "scenario-format.md"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only report whether it is up to date")
    args = p.parse_args()
    text = DOC.read_text(encoding="utf-8")
    fresh = replace_block(text)
    if args.check:
        if fresh != text:
            print(f"{DOC} is out of date: run scripts/fault_table.py", file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        DOC.write_text(fresh, encoding="utf-8")
        print(f"rewrote the fault tables in {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
