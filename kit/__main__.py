"""`python -m kit` is the `fedkseed` console script."""

from kit.cli import main

if __name__ == "__main__":
    main()
