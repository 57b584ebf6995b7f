"""Tests of multimodal/interop/."""
