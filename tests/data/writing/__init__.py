"""Tests of data/writing/."""
