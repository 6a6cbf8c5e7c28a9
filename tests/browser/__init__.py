"""Tests in a real browser (headless Chromium): the admins' page and OHIF."""
