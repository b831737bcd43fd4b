"""Ward's command line: one entry point for the worker, the gateway and the tools around them."""
