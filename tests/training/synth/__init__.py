"""Tests of the synthetic study generator."""
