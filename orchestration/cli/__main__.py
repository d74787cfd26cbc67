"""`python -m orchestration.cli`: the `lungjepa` script without the installed entry point."""

from orchestration.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
