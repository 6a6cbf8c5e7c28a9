"""Tests of the imported PI-CAI models against their reference pipelines."""
