"""The Dockerfile's build context, as its build stage sees it: for the tests that build the image's wheel."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def copy_build_context(context: Path) -> list[str]:
    """Copy what the Dockerfile's build stage COPYs from the repository into ``context``; returns those sources."""
    dockerfile = (REPO / "Dockerfile").read_text()
    context.mkdir()
    copied = re.findall(r"^COPY (?!--from)(\S+(?: \S+)*) \S+$", dockerfile, re.MULTILINE)
    sources = [s for line in copied for s in line.split()]
    for source in sources:
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(src, context / source)
    return sources
