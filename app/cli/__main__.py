"""``python -m app.cli``: the ``distillery`` command without its console script."""

from app.cli import main

main()
