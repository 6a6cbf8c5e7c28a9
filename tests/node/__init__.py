"""Tests of the node (orthanc_plugin), one folder per room."""
