"""I/O: local-or-S3 storage (:mod:`.storage`), MLflow tracking (:mod:`.tracking`, every client and
tag), and the prepared-data cache every task's preparation shares (:mod:`.datacache`)."""
