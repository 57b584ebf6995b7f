"""``python -m multimodal``: the same command line as ``multimodal``."""
from multimodal.cli import main

if __name__ == "__main__":
    main()
