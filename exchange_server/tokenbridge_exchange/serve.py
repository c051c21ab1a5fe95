"""``tokenbridge serve``: read the configuration, then hand over to gunicorn (:mod:`.gunicorn_app`).

With gevent workers (the default), the standard library is made cooperative here, first thing, before any module
that creates sockets, locks or SSL contexts is imported: the master builds objects the workers inherit (the
preloaded standalone snapshot, its sources' events and locks), and a lock made before patching would block a whole
worker instead of one request. gunicorn's gevent worker patches again after the fork, which by then changes nothing.
"""

from __future__ import annotations

import logging
import sys

from . import config as config_module


def cooperate(worker_class: str) -> None:
    """gevent workers need the standard library patched before anything else is imported or built."""
    if worker_class == "gevent":
        from gevent import monkey

        monkey.patch_all()


def main(argv: list[str]) -> int:
    config = config_module.load(argv)
    cooperate(config.worker_class)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .gunicorn_app import run

    return run(config)
