"""The gateway overhead benchmark (``ward bench gateway``): real gateway processes in front of an
instant gRPC worker, driven by a keep-alive HTTP load generator, with identity, quotas and the audit
log off and on."""
