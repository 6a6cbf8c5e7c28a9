"""Intake: from DICOM files to a study's roles and co-registered volumes (series, b-values, diffusion, selection rules, preprocessing)."""
