"""`python -m effects`: the command line (durable runs: `python -m effects runs --help`)."""

from effects.durable._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
