"""The training script: ``python train.py [--preset NAME] [--config FILE] [--dotted.key VALUE ...]``.

The trainer is :mod:`multimodal.training.trainer` (installed with the package, so it also runs as
``python -m multimodal.training.trainer`` or ``multimodal-train`` from any directory); this file
keeps ``python train.py`` and ``accelerate launch train.py`` working in the repository.
"""
from multimodal.training.trainer import main

if __name__ == "__main__":
    main()
