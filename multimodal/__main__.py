"""``python -m multimodal``: the same command line as ``multimodal``, with the same exit status."""
from multimodal.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
