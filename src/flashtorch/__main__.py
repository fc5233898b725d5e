"""``python -m flashtorch``: the ``flashtorch`` command (also what ``torchrun -m`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
