"""Tests of data/preprocess/."""
