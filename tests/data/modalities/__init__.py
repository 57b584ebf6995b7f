"""Tests of data/modalities/."""
