"""Run the README's marked code blocks exactly as a user would, from the clone's root.

A fenced block preceded by the line ``<!-- ci: run -->`` is executed: ```python blocks with
the current interpreter, ```sh / ```bash / ``` blocks with bash -e. Each runs in the clone's
root (where a user who just ran the README's install command stands), in a fresh process.
A failing block prints its text and output and makes the script exit 1.

    python .ci/readme_check.py [README.md]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "<!-- ci: run -->"


def blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line) of every marked fenced block."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            m = re.match(r"^```(\w*)\s*$", lines[j].strip()) if j < len(lines) else None
            if not m:
                raise SystemExit(f"readme_check: line {i + 1}: {MARK} is not followed by a fenced block")
            k = j + 1
            while k < len(lines) and lines[k].strip() != "```":
                k += 1
            out.append((m.group(1) or "sh", "\n".join(lines[j + 1:k]), j + 1))
            i = k
        i += 1
    return out


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "README.md")
    with open(path, encoding="utf-8") as fh:
        found = blocks(fh.read())
    if not found:
        print(f"readme_check: no block marked {MARK} in {path}")
        return 1
    failed = 0
    for lang, code, line in found:
        if lang == "python":
            cmd = [sys.executable, "-c", code]
        elif lang in ("sh", "bash", "shell", "console"):
            cmd = ["bash", "-e", "-c", code]
        else:
            print(f"readme_check: line {line}: cannot run a ```{lang} block")
            return 1
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        status = "ok" if r.returncode == 0 else f"FAILED (exit {r.returncode})"
        print(f"readme_check: README line {line} ({lang}): {status}")
        if r.returncode != 0:
            failed += 1
            print("---- block ----\n" + code + "\n---- output ----\n" + r.stdout + r.stderr + "\n----")
    print(f"readme_check: {len(found) - failed} of {len(found)} README blocks ran clean from {ROOT}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
