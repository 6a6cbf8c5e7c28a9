"""Tests of the engine's intake."""
