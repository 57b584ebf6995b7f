"""Tests of multimodal/cli/."""
