"""``python -m finsent.cli``: the same as the ``finsent`` console script."""

from finsent.cli import main

main()
