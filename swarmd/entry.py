"""One program, two commands: ``swarmd`` and ``swarmctl`` chosen by the name it runs as.

The PyInstaller binary (``pyinstaller.spec``) starts here. Installed as
``/usr/local/bin/swarmd`` with a symlink ``swarmctl -> swarmd``, ``argv[0]`` picks the
command: a name starting with ``swarmctl`` runs ``swarmctl.cli:main``, any other name
``swarmd.cli:main``. An explicit first argument ``swarmctl`` or ``swarmd`` wins over the
name (``swarmd-dir/swarmd swarmctl peers``), for the onedir build and for callers that
cannot make a symlink.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable
from pathlib import Path

COMMANDS = ("swarmd", "swarmctl")


def choose(argv: list[str]) -> tuple[str, list[str]]:
    """(command, the argv to hand it): ``argv[0]`` keeps the name of the chosen command."""
    name = Path(argv[0]).name if argv else "swarmd"
    if len(argv) > 1 and argv[1] in COMMANDS:
        command = argv[1]
        return command, [command, *argv[2:]]
    command = "swarmctl" if name.startswith("swarmctl") else "swarmd"
    return command, [name or command, *argv[1:]]


def _main_of(command: str) -> Callable[..., object]:
    if command == "swarmctl":
        from swarmctl.cli import main as ctl_main

        return ctl_main
    from swarmd.cli import main as daemon_main

    return daemon_main


def main() -> None:
    # The python executor starts its workers with spawn/forkserver: in a frozen binary
    # they re-run this executable, and freeze_support() turns such a run into the worker
    # before any command line parsing (a no-op when not frozen).
    multiprocessing.freeze_support()
    command, argv = choose(sys.argv)
    sys.argv = argv
    _main_of(command)(prog_name=command)


if __name__ == "__main__":
    main()
