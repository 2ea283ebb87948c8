"""The ``forcedphot`` command's entry point (``[project.scripts]`` and ``python -m forcedphot``).

It installs the Ctrl-C and SIGTERM handlers (:mod:`forcedphot.exits`) before importing anything
else of forcedphot, so an interrupt while the command line and its libraries load ends the
command like any other interrupt: one line and exit 130. Each command imports what it uses
(DuckDB, pyarrow, astropy, numba...) when it runs: ``--help`` imports none of them.
"""

from __future__ import annotations


def main() -> None:
    from forcedphot import exits

    exits.install()
    try:
        from forcedphot.cli import main as cli_main
    except KeyboardInterrupt:
        exits.close(exits.EXIT_INTERRUPTED)
    cli_main()
