"""Tests of the DICOM result writers."""
