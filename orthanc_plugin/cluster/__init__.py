"""Several Orthanc servers on one PostgreSQL database (cluster mode): the dispatcher lease, the state the
servers share, and the per-study locks around result replacement."""
