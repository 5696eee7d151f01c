"""``python -m compaudit`` runs the CLI."""

from compaudit.cli import main

main()
