"""``python -m structvpr``: the command-line interface."""

from structvpr.cli import main

if __name__ == "__main__":
    main()
