"""``python -m melange.cli``: the same as the ``melange`` command."""

from melange.cli import main

if __name__ == "__main__":
    main()
