"""Anatomy: the whole-gland model, its card and network, and the gate that keeps findings inside the prostate."""
