"""How the gateway reaches workers: gRPC clients, channel security, and the pool that routes by load."""
