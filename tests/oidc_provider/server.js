// A real OpenID provider for Ward's identity tests: the certified `oidc-provider` package, configured
// for the client-credentials grant with JWT access tokens for one resource (the gateway's audience).
// Usage: node server.js CONFIG.json   (written by provider.py: issuer, port, audience, jwks, clients)
import fs from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const clientClaims = Object.fromEntries(config.clients.map((c) => [c.client_id, c.claims || {}]));

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  jwks: { keys: config.jwks },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({
        scope: 'inference',
        audience: resource,
        accessTokenTTL: config.token_ttl_s || 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: config.alg || 'RS256' } },
      }),
    },
  },
  ttl: { ClientCredentials: config.token_ttl_s || 300 },
  // the claims an IdP would add from its directory: groups and roles of the service account
  extraTokenClaims: (ctx, token) => clientClaims[token.clientId] || {},
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${config.port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
