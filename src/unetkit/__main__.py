"""``python -m unetkit`` runs the command-line interface (and is what ``torchrun -m`` launches)."""

from unetkit.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
