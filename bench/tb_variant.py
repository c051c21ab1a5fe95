"""``tokenbridge serve`` with another gunicorn worker class, for the worker-model comparison.

``serve.py`` hard-codes ``worker_class = "gthread"``; until it has a flag, this runs the unchanged ``serve.main``
with its gunicorn application class swapped for one that overrides only the worker class (sync: one thread).

    python bench/tb_variant.py --worker-class sync -- --manifests DIR --bind 127.0.0.1:9002 ...
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor_app import with_worker_class  # noqa: E402


def main(argv: list[str]) -> int:
    worker_class = "gthread"
    if argv[:1] == ["--worker-class"]:
        worker_class, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    from tokenbridge_exchange import serve

    serve.Server = with_worker_class(serve.Server, worker_class)
    return serve.main(argv)


if __name__ == "__main__":
    sys.argv[0] = "tokenbridge-serve"
    sys.exit(main(sys.argv[1:]))
