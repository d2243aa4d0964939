"""``python -m mlexec.cli``."""

from mlexec.cli import main

main()
