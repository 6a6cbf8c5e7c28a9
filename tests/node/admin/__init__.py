"""Tests of the admin API, the admins' page and the viewer's routes."""
