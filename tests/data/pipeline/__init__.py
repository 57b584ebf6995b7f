"""Tests of data/pipeline/."""
