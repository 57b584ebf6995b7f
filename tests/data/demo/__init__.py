"""Tests of data/demo/."""
