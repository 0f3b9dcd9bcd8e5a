"""A throwaway SeaweedFS S3 server for tests: the launcher lives in :mod:`service.localcluster.s3` (also
used by ``hyperctl cluster up``); this module keeps the tests' import path."""

from service.localcluster.s3 import HOST, START_TIMEOUT_S, S3Server, WeedProcess, free_ports, weed_binary  # noqa: F401
