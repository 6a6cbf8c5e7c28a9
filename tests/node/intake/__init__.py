"""Tests of the node's intake."""
