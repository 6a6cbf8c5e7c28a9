"""Tests of the project's shape: architecture, command line, logging."""
