"""Tests of what radiologists give back."""
