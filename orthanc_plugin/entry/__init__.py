"""The script that Orthanc's Python plugin loads (``PythonScript`` / ``Python.Path``)."""
