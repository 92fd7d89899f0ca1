"""`python -m serving` is the same as the `model-server` command."""

from serving.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
