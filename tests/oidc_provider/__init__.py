"""A real OpenID provider (npm `oidc-provider` under Node.js) run by the identity tests."""
