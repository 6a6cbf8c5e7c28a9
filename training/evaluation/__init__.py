"""Evaluation with picai_eval, and its plots."""
