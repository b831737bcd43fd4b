// A real OpenID provider for Ward's identity tests: the certified `oidc-provider` package, configured
// for the client-credentials grant with JWT access tokens for one resource (the gateway's audience),
// and, for the web console's sign-in, the authorization code grant with PKCE for people (`users`: the
// provider's own login and consent pages; any password is accepted for a listed user).
// Usage: node server.js CONFIG.json   (written by provider.py: issuer, port, audience, jwks, clients,
// web_clients, users)
import fs from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const clientClaims = Object.fromEntries(config.clients.map((c) => [c.client_id, c.claims || {}]));
const userClaims = Object.fromEntries((config.users || []).map((u) => [u.login, u.claims || {}]));

const provider = new Provider(config.issuer, {
  clients: [
    ...config.clients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
    ...(config.web_clients || []).map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      grant_types: ['authorization_code'],
      redirect_uris: c.redirect_uris,
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    })),
  ],
  // people sign in on the provider's development login page; only listed logins exist
  findAccount: (ctx, id) => (id in userClaims ? { accountId: id, claims: () => ({ sub: id }) } : undefined),
  pkce: { required: () => true },
  jwks: { keys: config.jwks },
  features: {
    devInteractions: { enabled: (config.users || []).length > 0 },
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
  extraTokenClaims: (ctx, token) => (token.accountId ? userClaims[token.accountId] : clientClaims[token.clientId]) || {},
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`listening ${config.port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
