"""The gateway overhead benchmark: an instant gRPC worker, a load generator, plain and governed gateways."""
