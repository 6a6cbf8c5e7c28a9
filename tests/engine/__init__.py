"""Tests of the engine (lesion_engine), one folder per room."""
