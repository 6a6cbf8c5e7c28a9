"""Tests of the node's sub-commands."""
