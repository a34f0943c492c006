"""`python -m fastcifar` runs the CLI (also what `torchrun -m fastcifar train ...` starts)."""

from fastcifar.cli import main

if __name__ == "__main__":
    main()
