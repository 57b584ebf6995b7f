"""Tests of encoders/."""
