"""Preprocessing, shared by training, evaluation and inference: image transforms, log-mel features, their parameters, and training augmentation."""
