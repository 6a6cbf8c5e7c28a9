"""End-to-end tests: whole workflows on real nodes, and the installed package."""
