"""Tests of data/tokenization/."""
