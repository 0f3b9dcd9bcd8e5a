"""Developer tooling, outside the product's core: a local multi-node Ray cluster with MLflow and
S3 servers on 127.0.0.1 (:mod:`.cluster`, behind ``hyperctl cluster``) and the SeaweedFS S3
launcher it and the tests use (:mod:`.s3`)."""
