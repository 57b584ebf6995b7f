"""Tests of multimodal/apps/."""
