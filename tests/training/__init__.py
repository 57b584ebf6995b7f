"""Tests of multimodal/training/."""
