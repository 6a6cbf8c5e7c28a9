"""Tests of the workers, the processing and the job queue."""
