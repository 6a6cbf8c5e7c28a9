"""The admin REST API, the admins' page and the OHIF viewer served by the node."""
