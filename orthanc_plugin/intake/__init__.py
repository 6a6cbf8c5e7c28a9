"""Intake: following Orthanc's changes, judging studies stable and complete, and recording labels and verdicts."""
