"""The ``tokenbridge`` command line: the one package above both components.

Imports go one way: the core (``tokenbridge``) is below the exchange server (``tokenbridge_exchange``) and the
operator (``tokenbridge_operator``), which never import each other, and this package is above all three
(``[tool.importlinter]`` in pyproject.toml; ``make lint`` and a unit test check it). :mod:`tokenbridge_cli.cli`
is the entry point (``tokenbridge``, ``python -m tokenbridge_cli``); :mod:`tokenbridge_cli.commands` holds the
developer-facing subcommands.
"""
