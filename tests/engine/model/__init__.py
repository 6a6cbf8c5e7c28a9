"""Tests of the engine's model room."""
