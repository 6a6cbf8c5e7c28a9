"""Tests of the anatomical gate and the gland model."""
