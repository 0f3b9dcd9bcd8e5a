"""A throwaway SeaweedFS S3 server for tests: the launcher lives in :mod:`service.s3local` (also
used by ``hyperctl cluster up``); this module keeps the tests' import path."""
from service.s3local import HOST, START_TIMEOUT_S, S3Server, WeedProcess, free_ports, weed_binary  # noqa: F401
