#!/usr/bin/env node
// portcullis test OpenID provider: a real, certified OpenID provider (npm `oidc-provider`)
// configured for portcullis' integration tests. See README.md in this folder.
//
//   node tests/idp/server.mjs --port 0 --profile standard|auth0 [--keys-dir DIR] ...
//
// stdout carries exactly one line, once listening:
//   {"ready":true,"issuer":"http://127.0.0.1:PORT","port":PORT}
// everything else (request log, oidc-provider notices) goes to stderr.

// oidc-provider prints notices with console.info (stdout): keep stdout for the ready line only.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';
import * as querystring from 'node:querystring';

// Two known, harmless oidc-provider warnings are dropped: the Node 20 runtime notice (it wants
// Node 22 LTS; 20 runs this harness fine) and the one about a pre-read request body (the auth0
// profile and JWT introspection read bodies before oidc-provider does, on purpose).
const QUIET_WARNINGS = [/Unsupported runtime/, /already parsed request body detected/];
const consoleWarn = console.warn.bind(console);
console.warn = (...args) => {
  if (QUIET_WARNINGS.some((re) => re.test(String(args[0])))) return;
  consoleWarn(...args);
};

// ---------------------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------------------

const USAGE = `usage: node server.mjs [options]
  --port N                     listen port on 127.0.0.1 (0 = ephemeral)          [IDP_PORT, default 0]
  --profile standard|auth0     provider behaviour                                 [IDP_PROFILE, default standard]
  --keys-dir DIR               load signing keys from DIR/jwks.json, or generate and save them there
                               (absent: fresh in-memory keys)                     [IDP_KEYS_DIR]
  --access-token-ttl SECONDS   access token lifetime (user and client credentials)
                               [IDP_ACCESS_TOKEN_TTL, default 3600; auth0: 86400]
  --id-token-ttl SECONDS       ID token lifetime [IDP_ID_TOKEN_TTL, default 3600; auth0: 36000]
  --refresh-token-ttl SECONDS  refresh token lifetime [IDP_REFRESH_TOKEN_TTL, default 1209600]
  --refresh rotate|reuse|off   refresh tokens (with offline_access): rotate on every use (reuse of a
                               rotated one revokes the grant), reuse (no rotation), off (none issued);
                               bare --refresh = rotate, --no-refresh = off        [IDP_REFRESH, default rotate]
  --auth0-no-rotate            auth0 profile: no rotation, and refresh responses carry no refresh_token
                                                                                  [IDP_AUTH0_NO_ROTATE=1]
  --auth0-default-audience URL auth0 profile: the tenant's default audience (used when a request has
                               no audience)                                       [IDP_AUTH0_DEFAULT_AUDIENCE]
  --redirect-uri URL           register a redirect URI for portcullis/portcullis-post (repeatable; given:
                               only those are accepted; none given: any http://127.0.0.1:*/oauth2/callback)
                                                                                  [IDP_REDIRECT_URIS, space separated]
  --post-logout-redirect-uri URL  likewise for post_logout_redirect_uris (none given: any http loopback URL)
                                                                                  [IDP_POST_LOGOUT_REDIRECT_URIS]
  --id-token-alg RS256|ES256   ID token signing alg of the portcullis clients     [IDP_ID_TOKEN_ALG, default RS256]
  --jwks-max-age SECONDS       send Cache-Control: public, max-age=N with the JWKS (default: no
                               Cache-Control header, as oidc-provider)            [IDP_JWKS_MAX_AGE]
  --metadata-token-file FILE   discovery and JWKS answer 401 unless the request carries
                               Authorization: Bearer <FILE's content> (read at each request), as a
                               Kubernetes API server's /openid/v1/jwks   [IDP_METADATA_TOKEN_FILE]
  --tls-dir DIR                serve https with DIR/server.pem and DIR/server.key, asking clients for
                               certificates (DIR/ca.pem); mTLS-bound access tokens (RFC 8705) for the
                               client machine-mtls                                [IDP_TLS_DIR]
  --watch-stdin                exit when stdin closes (the parent test died)      [IDP_WATCH_STDIN=1]
  --quiet                      no request log on stderr                           [IDP_QUIET=1]
  --help
`;

function parseOptions(argv, env) {
  const truthy = (v) => v !== undefined && v !== '' && !/^(0|false|no|off)$/i.test(v);
  const splitList = (v) => (v ? v.split(/[\s,]+/).filter(Boolean) : []);
  const o = {
    port: env.IDP_PORT ?? '0',
    profile: env.IDP_PROFILE ?? 'standard',
    keysDir: env.IDP_KEYS_DIR || undefined,
    accessTokenTtl: env.IDP_ACCESS_TOKEN_TTL,
    idTokenTtl: env.IDP_ID_TOKEN_TTL,
    refreshTokenTtl: env.IDP_REFRESH_TOKEN_TTL,
    refresh: env.IDP_REFRESH ?? 'rotate',
    auth0NoRotate: truthy(env.IDP_AUTH0_NO_ROTATE),
    auth0DefaultAudience: env.IDP_AUTH0_DEFAULT_AUDIENCE || undefined,
    redirectUris: splitList(env.IDP_REDIRECT_URIS),
    postLogoutRedirectUris: splitList(env.IDP_POST_LOGOUT_REDIRECT_URIS),
    idTokenAlg: env.IDP_ID_TOKEN_ALG ?? 'RS256',
    jwksMaxAge: env.IDP_JWKS_MAX_AGE || undefined,
    metadataTokenFile: env.IDP_METADATA_TOKEN_FILE || undefined,
    tlsDir: env.IDP_TLS_DIR || undefined,
    watchStdin: truthy(env.IDP_WATCH_STDIN),
    quiet: truthy(env.IDP_QUIET),
  };
  let fromArgsRedirect = false;
  let fromArgsPostLogout = false;
  const args = [...argv];
  while (args.length) {
    let arg = args.shift();
    let inline;
    if (arg.startsWith('--') && arg.includes('=')) {
      inline = arg.slice(arg.indexOf('=') + 1);
      arg = arg.slice(0, arg.indexOf('='));
    }
    const value = () => {
      if (inline !== undefined) return inline;
      if (!args.length || args[0].startsWith('--')) throw new Error(`${arg} needs a value`);
      return args.shift();
    };
    switch (arg) {
      case '--port': o.port = value(); break;
      case '--profile': o.profile = value(); break;
      case '--keys-dir': o.keysDir = value(); break;
      case '--access-token-ttl': o.accessTokenTtl = value(); break;
      case '--id-token-ttl': o.idTokenTtl = value(); break;
      case '--refresh-token-ttl': o.refreshTokenTtl = value(); break;
      case '--refresh':
        if (inline !== undefined) o.refresh = inline;
        else if (args.length && !args[0].startsWith('--')) o.refresh = args.shift();
        else o.refresh = 'rotate';
        break;
      case '--no-refresh': o.refresh = 'off'; break;
      case '--auth0-no-rotate': o.auth0NoRotate = inline === undefined ? true : truthy(inline); break;
      case '--auth0-default-audience': o.auth0DefaultAudience = value(); break;
      case '--redirect-uri':
        if (!fromArgsRedirect) { o.redirectUris = []; fromArgsRedirect = true; }
        o.redirectUris.push(value());
        break;
      case '--post-logout-redirect-uri':
        if (!fromArgsPostLogout) { o.postLogoutRedirectUris = []; fromArgsPostLogout = true; }
        o.postLogoutRedirectUris.push(value());
        break;
      case '--id-token-alg': o.idTokenAlg = value(); break;
      case '--jwks-max-age': o.jwksMaxAge = value(); break;
      case '--metadata-token-file': o.metadataTokenFile = value(); break;
      case '--tls-dir': o.tlsDir = value(); break;
      case '--watch-stdin': o.watchStdin = true; break;
      case '--quiet': o.quiet = true; break;
      case '--help': case '-h': process.stderr.write(USAGE); process.exit(0); break;
      default: throw new Error(`unknown option ${arg}`);
    }
  }

  const int = (name, v, min) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, got ${v}`);
    return n;
  };
  o.port = int('--port', o.port, 0);
  if (!['standard', 'auth0'].includes(o.profile)) throw new Error(`--profile must be standard or auth0, got ${o.profile}`);
  const auth0 = o.profile === 'auth0';
  o.accessTokenTtl = int('--access-token-ttl', o.accessTokenTtl ?? (auth0 ? 86400 : 3600), 1);
  o.idTokenTtl = int('--id-token-ttl', o.idTokenTtl ?? (auth0 ? 36000 : 3600), 1);
  o.refreshTokenTtl = int('--refresh-token-ttl', o.refreshTokenTtl ?? 14 * 24 * 3600, 1);
  const refresh = String(o.refresh).toLowerCase();
  if (['rotate', 'on', 'true', '1', 'yes'].includes(refresh)) o.refresh = 'rotate';
  else if (['reuse', 'norotate', 'no-rotate'].includes(refresh)) o.refresh = 'reuse';
  else if (['off', 'false', '0', 'no', 'none'].includes(refresh)) o.refresh = 'off';
  else throw new Error(`--refresh must be rotate, reuse or off, got ${o.refresh}`);
  if (auth0 && o.auth0NoRotate && o.refresh === 'rotate') o.refresh = 'reuse';
  if (o.jwksMaxAge !== undefined) o.jwksMaxAge = int('--jwks-max-age', o.jwksMaxAge, 0);
  if (!['RS256', 'ES256'].includes(o.idTokenAlg)) throw new Error('--id-token-alg must be RS256 or ES256');
  for (const u of [...o.redirectUris, ...o.postLogoutRedirectUris]) {
    try { new URL(u); } catch { throw new Error(`not a URL: ${u}`); }
  }
  return o;
}

let opts;
try {
  opts = parseOptions(process.argv.slice(2), process.env);
} catch (err) {
  process.stderr.write(`idp: ${err.message}\n${USAGE}`);
  process.exit(2);
}
const AUTH0 = opts.profile === 'auth0';

const { default: Provider, errors } = await import('oidc-provider');

const log = (...parts) => process.stderr.write(`[idp ${opts.profile}] ${parts.join(' ')}\n`);

// ---------------------------------------------------------------------------------------------
// the directory: users, clients, resource servers
// ---------------------------------------------------------------------------------------------

const API = 'https://api.example.test';
const API_ES256 = 'https://es256.api.example.test';
const API_SCOPES = ['read:items', 'write:items'];
const ROLES_CLAIM = 'https://example.com/roles';
const UPDATED_AT = 1700000000; // 2023-11-14T22:13:20Z

const manyGroups = ['staff'];
for (let i = 1; i <= 150; i += 1) manyGroups.push(`many-group-${String(i).padStart(3, '0')}-with-a-long-name`);

// login -> user. `sub` is "user-<login>" (standard) or "auth0|<login>" (auth0).
const USERS = {
  alice: {
    password: 'alice-pw', email: 'alice@example.com', email_verified: true, name: 'Alice Example',
    given_name: 'Alice', family_name: 'Example', groups: ['staff', 'admins'], permissions: ['read:items', 'write:items'],
  },
  bob: {
    password: 'bob-pw', email: 'bob@example.com', email_verified: true, name: 'Bob Example',
    given_name: 'Bob', family_name: 'Example', groups: ['staff'], permissions: ['read:items'],
  },
  mallory: {
    password: 'mallory-pw', email: 'mallory@example.com', email_verified: false, name: 'Mallory Example',
    given_name: 'Mallory', family_name: 'Example', groups: [], permissions: [],
  },
  many: {
    password: 'many-pw', email: 'many@example.com', email_verified: true, name: 'Many Groups',
    given_name: 'Many', family_name: 'Groups', groups: manyGroups, permissions: ['read:items'],
  },
  zoe: {
    password: 'zoe-pw', email: 'zoe@example.com', email_verified: true, name: 'Zoë Ünïcode',
    given_name: 'Zoë', family_name: 'Ünïcode', groups: ['staff', 'r&d, europe'], permissions: ['read:items'],
  },
};
const subFor = (login) => (AUTH0 ? `auth0|${login}` : `user-${login}`);
const SUBS = new Map(Object.keys(USERS).map((login) => [subFor(login), login]));

function accountClaims(login) {
  const u = USERS[login];
  const claims = {
    sub: subFor(login),
    email: u.email,
    email_verified: u.email_verified,
    name: u.name,
    given_name: u.given_name,
    family_name: u.family_name,
    preferred_username: login,
    updated_at: AUTH0 ? new Date(UPDATED_AT * 1000).toISOString() : UPDATED_AT,
    groups: u.groups,
  };
  if (AUTH0) {
    claims.nickname = login;
    claims[ROLES_CLAIM] = u.groups;
  }
  return claims;
}

const LOOPBACK_CALLBACK = /^http:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?\/oauth2\/callback$/;
const LOOPBACK_ANY = /^http:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d{1,5})?(\/[^#]*)?$/;
const strictRedirects = opts.redirectUris.length > 0;
const strictPostLogout = opts.postLogoutRedirectUris.length > 0;

const USER_SCOPES = 'openid email profile offline_access groups read:items write:items';
const loginClient = (clientId, secret, authMethod) => ({
  client_id: clientId,
  client_secret: secret,
  client_name: `portcullis (${authMethod})`,
  application_type: 'web',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: strictRedirects ? opts.redirectUris : ['http://127.0.0.1/oauth2/callback'],
  post_logout_redirect_uris: strictPostLogout ? opts.postLogoutRedirectUris : ['http://127.0.0.1/'],
  token_endpoint_auth_method: authMethod,
  id_token_signed_response_alg: opts.idTokenAlg,
  scope: USER_SCOPES,
});
const serviceClient = (clientId, secret, scope, authMethod = 'client_secret_basic') => ({
  client_id: clientId,
  client_secret: secret,
  grant_types: scope === undefined ? [] : ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: authMethod,
  ...(scope === undefined ? {} : { scope }),
});
const CLIENTS = [
  loginClient('portcullis', 'portcullis-secret', 'client_secret_basic'),
  loginClient('portcullis-post', 'portcullis-secret', 'client_secret_post'),
  serviceClient('rs', 'rs-secret', undefined),
  serviceClient('rs-post', 'rs-secret', undefined, 'client_secret_post'),
  serviceClient('machine', 'machine-secret', 'read:items write:items'),
  serviceClient('machine-ro', 'machine-ro-secret', 'read:items'),
];
// Over TLS (--tls-dir): a client whose access tokens are bound to the client certificate of
// its token request (RFC 8705 §3, cnf.x5t#S256).
if (opts.tlsDir) {
  CLIENTS.push({
    ...serviceClient('machine-mtls', 'machine-mtls-secret', 'read:items write:items'),
    tls_client_certificate_bound_access_tokens: true,
  });
}
const FIRST_PARTY = new Set(['portcullis', 'portcullis-post']);
const CLIENT_PERMISSIONS = { machine: ['read:items', 'write:items'], 'machine-ro': ['read:items'] };

// resource indicator (standard) / audience (auth0) -> how its access tokens look
const RESOURCES = {
  [API]: { alg: 'RS256' },
  [API_ES256]: { alg: 'ES256' },
};
const OIDC_SCOPES = ['openid', 'email', 'profile', 'offline_access', 'groups'];
const OFFLINE_MARKER = 'x_portcullis_offline_access';

// ---------------------------------------------------------------------------------------------
// signing keys
// ---------------------------------------------------------------------------------------------

function generateKey(alg) {
  const { privateKey } = alg === 'RS256'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { kid: `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`, use: 'sig', alg, ...jwk };
}

function loadOrCreateKeys(dir) {
  let keys = [];
  const file = dir ? path.join(dir, 'jwks.json') : undefined;
  if (file && fs.existsSync(file)) {
    keys = JSON.parse(fs.readFileSync(file, 'utf8')).keys;
    if (!Array.isArray(keys)) throw new Error(`${file}: no "keys" array`);
  }
  let changed = false;
  for (const alg of ['RS256', 'ES256']) {
    if (!keys.some((k) => k.alg === alg && k.d)) {
      keys.push(generateKey(alg));
      changed = true;
    }
  }
  if (file && changed) saveKeys(dir, keys);
  return keys;
}

function saveKeys(dir, keys) {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'jwks.json');
  fs.writeFileSync(`${file}.tmp`, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(`${file}.tmp`, file);
  const pub = keys.map(({ d, p, q, dp, dq, qi, ...rest }) => rest);
  fs.writeFileSync(path.join(dir, 'jwks.public.json'), `${JSON.stringify({ keys: pub }, null, 2)}\n`);
}

let signingKeys = loadOrCreateKeys(opts.keysDir);

// ---------------------------------------------------------------------------------------------
// storage: an unbounded in-memory adapter, shared by every Provider instance of this process
// (so a key rotation by /__test/rotate-keys keeps sessions and tokens)
// ---------------------------------------------------------------------------------------------

const store = new Map(); // key -> { payload, exp }
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest']);
const nowSec = () => Math.floor(Date.now() / 1000);
function storeGet(key) {
  const e = store.get(key);
  if (!e) return undefined;
  if (e.exp && e.exp <= nowSec()) { store.delete(key); return undefined; }
  return e.payload;
}
function storeSet(key, payload, ttl) {
  store.set(key, { payload, exp: ttl ? nowSec() + ttl : undefined });
}
class MemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async destroy(id) { store.delete(this.key(id)); }

  async consume(id) {
    const p = storeGet(this.key(id));
    if (p) p.consumed = nowSec();
  }

  async find(id) { return storeGet(this.key(id)); }

  async findByUid(uid) {
    const id = storeGet(`sessionUid:${uid}`);
    return id ? this.find(id) : undefined;
  }

  async findByUserCode(userCode) {
    const id = storeGet(`userCode:${userCode}`);
    return id ? this.find(id) : undefined;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (this.model === 'Session') storeSet(`sessionUid:${payload.uid}`, id, expiresIn);
    const { grantId, userCode } = payload;
    if (GRANTABLE.has(this.model) && grantId) {
      const grantKey = `grant:${grantId}`;
      const list = storeGet(grantKey) || [];
      list.push(key);
      storeSet(grantKey, list, expiresIn);
    }
    if (userCode) storeSet(`userCode:${userCode}`, id, expiresIn);
    storeSet(key, payload, expiresIn);
  }

  async revokeByGrantId(grantId) {
    const grantKey = `grant:${grantId}`;
    for (const key of storeGet(grantKey) || []) store.delete(key);
    store.delete(grantKey);
  }
}

// JWT access tokens are not stored by oidc-provider; remember the ones revoked at the
// revocation endpoint so that our JWT introspection can report them inactive.
const revokedJwtIds = new Set();

// ---------------------------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------------------------

const b64uJson = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
const isJwt = (t) => typeof t === 'string' && /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(t);
const html = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

// Verifies a JWT signed by this provider's current keys; returns its payload or throws.
function verifyOwnJwt(token, issuer) {
  const [h, p, s] = token.split('.');
  const header = b64uJson(h);
  const key = signingKeys.find((k) => k.kid === header.kid);
  if (!key || key.alg !== header.alg) throw new Error('unknown key');
  const { d, p: _p, q, dp, dq, qi, ...pub } = key;
  const keyObject = crypto.createPublicKey({ key: pub, format: 'jwk' });
  const ok = crypto.verify('sha256', Buffer.from(`${h}.${p}`), header.alg === 'ES256'
    ? { key: keyObject, dsaEncoding: 'ieee-p1363' } : keyObject, Buffer.from(s, 'base64url'));
  if (!ok) throw new Error('bad signature');
  const payload = b64uJson(p);
  if (payload.iss !== issuer) throw new Error('wrong issuer');
  if (typeof payload.exp !== 'number' || payload.exp <= nowSec()) throw new Error('expired');
  return payload;
}

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// The raw request body, read once per request; oidc-provider then reads it from ctx.req.body
// (its documented fallback for a body consumed by upstream middleware).
async function rawBody(ctx) {
  if (ctx.state.rawBody === undefined) {
    ctx.state.rawBody = await readBody(ctx.req);
    ctx.req.body = ctx.state.rawBody;
  }
  return ctx.state.rawBody;
}

async function formOf(ctx) {
  if (ctx.is('application/x-www-form-urlencoded')) return querystring.parse(await rawBody(ctx));
  if (ctx.is('application/json')) {
    try { return JSON.parse(await rawBody(ctx)); } catch { return {}; }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// pages
// ---------------------------------------------------------------------------------------------

const PAGE_STYLE = 'body{font-family:sans-serif;max-width:28em;margin:3em auto}label{display:block;margin:.6em 0}'
  + 'input{width:100%;padding:.3em}button{margin-top:1em;padding:.4em 1.2em}#error{color:#b00}';
function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${html(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>${PAGE_STYLE}</style></head>
<body>${body}</body></html>
`;
}

function loginPage(uid, details, error, login = '') {
  const { params } = details;
  return page('Sign in', `
<h1>Sign in</h1>
<p>to <b>${html(params.client_id)}</b>${params.scope ? ` (scope: <code>${html(params.scope)}</code>)` : ''}</p>
${error ? `<p id="error" role="alert">${html(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${html(uid)}" autocomplete="off">
  <label>Username <input id="login" name="login" type="text" value="${html(login)}" autofocus required></label>
  <label>Password <input id="password" name="password" type="password" required></label>
  <button id="submit" type="submit">Sign in</button>
</form>
<p><a id="abort" href="/interaction/${html(uid)}/abort">Cancel</a></p>
<p><small>test users: alice / alice-pw, bob / bob-pw, mallory / mallory-pw</small></p>`);
}

// ---------------------------------------------------------------------------------------------
// the Provider
// ---------------------------------------------------------------------------------------------

function buildProvider(issuer) {

  const routes = AUTH0 ? {
    authorization: '/authorize',
    token: '/oauth/token',
    userinfo: '/userinfo',
    jwks: '/.well-known/jwks.json',
    revocation: '/oauth/revoke',
    end_session: '/oidc/logout',
    // not advertised, not used by Auth0: moved out of the way
    introspection: '/__disabled/introspection',
    pushed_authorization_request: '/oauth/par',
  } : {};

  const claims = AUTH0 ? {
    openid: ['sub', ROLES_CLAIM],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'nickname', 'preferred_username', 'updated_at'],
    groups: ['groups'],
  } : {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username', 'updated_at'],
    groups: ['groups'],
  };

  const resourceScope = AUTH0 ? [...OIDC_SCOPES, ...API_SCOPES].join(' ') : API_SCOPES.join(' ');

  const configuration = {
    adapter: MemoryAdapter,
    clients: CLIENTS,
    jwks: { keys: signingKeys },
    claims,
    scopes: [...OIDC_SCOPES, ...API_SCOPES],
    conformIdTokenClaims: false, // scope claims in the ID token too, as most providers do
    responseTypes: ['code'], // no implicit / hybrid flows
    allowOmittingSingleRegisteredRedirectUri: false,
    clientDefaults: { id_token_signed_response_alg: opts.idTokenAlg },
    cookies: {
      // unsigned cookies keep the scripted login simple; nothing here protects real users
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    routes,
    // oidc-provider's SSRF guard refuses loopback and other special-use addresses (its
    // dispatcher destroys such sockets): back-channel logout POSTs to a relying party on
    // 127.0.0.1 would fail with "fetch failed". A test provider talks to 127.0.0.1 only,
    // so its own calls go through the plain global fetch.
    fetch: (url, options) => {
      const { dispatcher: _ssrfGuard, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
    // marks an authorization request that asked for offline_access (see offlineAccessMarker)
    extraParams: [OFFLINE_MARKER],
    pkce: { required: () => !AUTH0 },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: !AUTH0,
        allowedPolicy: async () => true,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (ctx, client, token) => client.clientId === token.clientId
          || client.clientId === 'rs' || client.clientId === 'rs-post',
      },
      userinfo: { enabled: true },
      // RFC 8705 certificate-bound access tokens, over TLS only: the certificate is the one
      // the client presented in the handshake (node's https server asks for it), when it
      // chains to DIR/ca.pem.
      mTLS: {
        enabled: !!opts.tlsDir,
        certificateBoundAccessTokens: !!opts.tlsDir,
        getCertificate: (ctx) => {
          const socket = ctx.req.socket;
          if (!socket.authorized || typeof socket.getPeerX509Certificate !== 'function') return undefined;
          return socket.getPeerX509Certificate();
        },
      },
      // OIDC Back-Channel Logout 1.0: logout tokens go to the clients registered with a
      // backchannel_logout_uri (see /__test/backchannel-logout) when a session ends at the
      // end-session endpoint (confirmed with logout=yes) or through /__test/end-session.
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.type = 'html';
          ctx.body = page('Sign out', `
<h1>Sign out from ${html(ctx.host)}?</h1>
${form}
<button id="submit" type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>
<button id="stay" type="submit" form="op.logoutForm">No, stay signed in</button>
<script>(function(){var f=document.getElementById('op.logoutForm');var i=document.createElement('input');
i.type='hidden';i.name='logout';i.value='yes';f.appendChild(i);
document.getElementById('submit').removeAttribute('name');
HTMLFormElement.prototype.submit.call(f);})();</script>`);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<h1 id="signed-out">Signed out</h1>');
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, client, oneOf) => oneOf ?? undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator) => {
          const rs = RESOURCES[indicator];
          if (!rs) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
          return {
            scope: resourceScope,
            audience: indicator,
            accessTokenTTL: opts.accessTokenTtl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: rs.alg } },
          };
        },
      },
    },
    ttl: {
      AccessToken: opts.accessTokenTtl,
      ClientCredentials: opts.accessTokenTtl,
      IdToken: opts.idTokenTtl,
      RefreshToken: opts.refreshTokenTtl,
      AuthorizationCode: 60,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
    },
    issueRefreshToken: async (ctx, client, source) => opts.refresh !== 'off'
      && client.grantTypeAllowed('refresh_token') && source.scopes.has('offline_access'),
    rotateRefreshToken: () => opts.refresh === 'rotate',
    expiresWithSession: async () => false,

    findAccount: async (ctx, sub) => {
      const login = SUBS.get(sub);
      if (!login) return undefined;
      return {
        accountId: sub,
        claims: async () => accountClaims(login),
      };
    },

    // No consent page: the test clients get what they ask for, within the user's permissions.
    loadExistingGrant: async (ctx) => {
      const { client, session, provider } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      let grant = grantId ? await provider.Grant.find(grantId) : undefined;
      if (grant && grant.accountId !== session.accountId) grant = undefined;
      if (!FIRST_PARTY.has(client.clientId) || !session.accountId) return grant;
      grant ||= new provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      // offline_access without prompt=consent: honoured, as Auth0, Okta and Keycloak do
      const { params } = ctx.oidc;
      if (params[OFFLINE_MARKER] && client.grantTypeAllowed('refresh_token')) {
        const scopes = new Set((params.scope || '').split(' ').filter(Boolean));
        scopes.add('offline_access');
        params.scope = [...scopes].join(' ');
      }
      const requested = [...ctx.oidc.requestParamScopes];
      const login = SUBS.get(session.accountId);
      const permissions = new Set(login ? USERS[login].permissions : []);
      const permitted = (s) => !API_SCOPES.includes(s) || permissions.has(s);
      // what the user may not have is rejected (left out of tokens), never a consent prompt
      const oidcRequested = [...ctx.oidc.requestParamOIDCScopes];
      const oidcGranted = oidcRequested.filter(permitted);
      const oidcRejected = oidcRequested.filter((s) => !permitted(s));
      if (oidcGranted.length) grant.addOIDCScope(oidcGranted.join(' '));
      if (oidcRejected.length) grant.rejectOIDCScope(oidcRejected.join(' '));
      const claimsParam = [...ctx.oidc.requestParamClaims];
      if (claimsParam.length) grant.addOIDCClaims(claimsParam);
      for (const [indicator, rs] of Object.entries(ctx.oidc.resourceServers || {})) {
        const rsRequested = requested.filter((s) => rs.scopes.has(s));
        const rsGranted = rsRequested.filter(permitted);
        const rsRejected = rsRequested.filter((s) => !permitted(s));
        if (rsGranted.length) grant.addResourceScope(indicator, rsGranted.join(' '));
        if (rsRejected.length) grant.rejectResourceScope(indicator, rsRejected.join(' '));
      }
      await grant.save();
      return grant;
    },

    extraTokenClaims: async (ctx, token) => {
      if (token.accountId) {
        const login = SUBS.get(token.accountId);
        if (!login) return undefined;
        const u = USERS[login];
        if (AUTH0) return { [ROLES_CLAIM]: u.groups };
        return {
          preferred_username: login, email: u.email, email_verified: u.email_verified, groups: u.groups,
        };
      }
      // client credentials: RFC 9068 says sub = the client; also for opaque tokens' introspection
      return AUTH0 ? undefined : { sub: token.clientId };
    },

    formats: {
      customizers: {
        jwt: AUTH0 ? async (ctx, token, jwt) => {
          const p = jwt.payload;
          const clientId = p.client_id;
          const scopes = (p.scope || '').split(' ').filter(Boolean);
          const machine = token.kind === 'ClientCredentials';
          const out = {
            iss: p.iss,
            sub: machine ? `${clientId}@clients` : p.sub,
            aud: !machine && scopes.includes('openid') ? [p.aud, `${issuer}userinfo`] : p.aud,
            iat: p.iat,
            exp: p.exp,
            ...(machine ? { gty: 'client-credentials' } : {}),
            scope: p.scope,
            azp: clientId,
            // RBAC: a user's permissions on the API whatever the scope asked; a machine's granted scopes
            permissions: machine || !SUBS.has(p.sub)
              ? scopes.filter((s) => API_SCOPES.includes(s))
              : [...USERS[SUBS.get(p.sub)].permissions],
          };
          if (!machine && p[ROLES_CLAIM]) out[ROLES_CLAIM] = p[ROLES_CLAIM];
          if (p.cnf) out.cnf = p.cnf; // DPoP / mTLS binding stays visible
          jwt.payload = out;
          jwt.header = { typ: 'JWT' };
        } : undefined,
      },
    },

    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<h1>Something went wrong</h1>${
        Object.entries(out).map(([k, v]) => `<p><b>${html(k)}</b>: <span id="${html(k)}">${html(v)}</span></p>`).join('')}`);
    },
  };

  const provider = new Provider(issuer, configuration);
  provider.proxy = false;

  // Redirect URIs: explicit ones when given, otherwise any loopback /oauth2/callback.
  const { Client } = provider;
  const origRedirect = Client.prototype.redirectUriAllowed;
  const origPostLogout = Client.prototype.postLogoutRedirectUriAllowed;
  Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    if (origRedirect.call(this, value)) return true;
    return !strictRedirects && FIRST_PARTY.has(this.clientId) && LOOPBACK_CALLBACK.test(value);
  };
  Client.prototype.postLogoutRedirectUriAllowed = function postLogoutRedirectUriAllowed(value) {
    if (origPostLogout.call(this, value)) return true;
    return !strictPostLogout && FIRST_PARTY.has(this.clientId) && LOOPBACK_ANY.test(value);
  };

  provider.on('server_error', (ctx, err) => log('server_error', ctx.path, err.stack || err));
  provider.on('backchannel.success', (ctx, client, accountId, sid) => {
    backchannel.ok += 1;
    log('backchannel.success', client.clientId, accountId, sid ? 'with sid' : 'without sid');
  });
  provider.on('backchannel.error', (ctx, err, client) => {
    backchannel.error += 1;
    backchannel.last_error = String(err.message || err);
    log('backchannel.error', client.clientId, backchannel.last_error);
  });
  provider.on('grant.error', (ctx, err) => log('grant.error', err.error || '', err.error_description || err.message, err.error_detail || ''));
  provider.on('authorization.error', (ctx, err) => log('authorization.error', err.error || '', err.error_description || err.message));

  if (opts.jwksMaxAge !== undefined) {
    const jwksPath = provider.pathFor('jwks');
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === jwksPath && ctx.status === 200) ctx.set('Cache-Control', `public, max-age=${opts.jwksMaxAge}`);
    });
  }
  provider.use(idTokenOverrides(provider));
  provider.use(strictClientAuth(provider));
  provider.use(offlineAccessMarker(provider));
  provider.use(interactionRoutes(provider));
  if (AUTH0) provider.use(auth0Middleware(provider, issuer));
  else provider.use(standardMiddleware(provider, issuer));
  return provider;
}

// /__test/id-token: ID tokens no honest provider issues, for the relying party's checks. The
// next token responses of a grant get their id_token re-signed (same header, same key) with
// `claims` merged in (`null` removes a claim), or, with `drop`, no id_token at all.
function resignJwt(token, changes) {
  const [h, p] = token.split('.');
  const header = b64uJson(h);
  const payload = b64uJson(p);
  for (const [k, v] of Object.entries(changes)) {
    if (v === null) delete payload[k];
    else payload[k] = v;
  }
  const jwk = signingKeys.find((k) => k.kid === header.kid);
  if (!jwk) throw new Error(`no signing key ${header.kid}`);
  const input = `${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}`;
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  const sig = crypto.sign('sha256', Buffer.from(input), header.alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key);
  return `${input}.${sig.toString('base64url')}`;
}

function idTokenOverrides(provider) {
  const tokenPath = provider.pathFor('token');
  return async (ctx, next) => {
    if (ctx.method !== 'POST' || ctx.path !== tokenPath || !idTokenRules.length) return next();
    const form = await formOf(ctx);
    await next();
    const body = ctx.body;
    if (ctx.status !== 200 || !body || typeof body !== 'object' || typeof body.id_token !== 'string') return undefined;
    const rule = idTokenRules.find((r) => r.grant === form?.grant_type && r.remaining > 0);
    if (!rule) return undefined;
    rule.remaining -= 1;
    if (rule.remaining <= 0) idTokenRules.splice(idTokenRules.indexOf(rule), 1);
    if (rule.drop) {
      const { id_token: _dropped, ...rest } = body;
      ctx.body = rest;
    } else {
      ctx.body = { ...body, id_token: resignJwt(body.id_token, rule.claims) };
    }
    log('id_token of a', form.grant_type, 'grant', rule.drop ? 'dropped' : `changed: ${Object.keys(rule.claims).join(' ')}`);
    return undefined;
  };
}

// oidc-provider accepts client_secret_basic and client_secret_post for a client registered with
// either. The clients that portcullis itself uses (portcullis, portcullis-post, rs, rs-post) get
// exactly their registered method, so that a test notices when the proxy sends the other one.
const STRICT_AUTH = new Map(CLIENTS.filter((c) => FIRST_PARTY.has(c.client_id) || c.client_id.startsWith('rs'))
  .map((c) => [c.client_id, c.token_endpoint_auth_method]));
function strictClientAuth(provider) {
  const paths = new Set(['token', 'revocation', ...(AUTH0 ? [] : ['introspection'])].map((n) => provider.pathFor(n)));
  return async (ctx, next) => {
    if (ctx.method !== 'POST' || !paths.has(ctx.path)) return next();
    const form = await formOf(ctx);
    const basic = /^Basic\s+(\S+)$/i.exec(ctx.get('Authorization') || '');
    let clientId = form?.client_id;
    if (basic) {
      try {
        clientId = decodeURIComponent(Buffer.from(basic[1], 'base64').toString('utf8').split(':')[0].replace(/\+/g, '%20'));
      } catch { /* oidc-provider answers that one */ }
    }
    const used = basic ? 'client_secret_basic' : form?.client_secret !== undefined ? 'client_secret_post' : undefined;
    const registered = STRICT_AUTH.get(clientId);
    if (used && registered && used !== registered) {
      ctx.status = 401;
      if (basic) ctx.set('WWW-Authenticate', `Basic realm="${provider.issuer}"`);
      ctx.body = AUTH0 ? { error: 'access_denied', error_description: 'Unauthorized' } : {
        error: 'invalid_client',
        error_description: `client authentication failed: ${clientId} is registered with ${registered}, not ${used}`,
      };
      return undefined;
    }
    return next();
  };
}

// oidc-provider follows OIDC Core 11 to the letter: offline_access is dropped unless the request
// has prompt=consent. Real providers (Auth0, Okta, Keycloak, Entra) issue a refresh token for
// offline_access alone, and portcullis sends no prompt=consent, so mark such requests here
// (an extra parameter that survives the login interaction); loadExistingGrant puts the scope back.
function offlineAccessMarker(provider) {
  const authorizationPath = provider.pathFor('authorization');
  return async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === authorizationPath && typeof ctx.query.scope === 'string'
      && ctx.query.scope.split(' ').includes('offline_access')) {
      ctx.query = { ...ctx.query, [OFFLINE_MARKER]: '1' };
    }
    return next();
  };
}

// /interaction/:uid: our scriptable login form (devInteractions is off)
function interactionRoutes(provider) {
  return async (ctx, next) => {
    const m = /^\/interaction\/([A-Za-z0-9_-]+)(\/abort)?$/.exec(ctx.path);
    if (!m) return next();
    const [, uid, abort] = m;
    ctx.set('Cache-Control', 'no-store');
    let details;
    try {
      details = await provider.interactionDetails(ctx.req, ctx.res);
    } catch (err) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', `<h1>Login session expired</h1><p id="error">${html(err.error_description || err.message)}</p>`);
      return undefined;
    }
    if (details.uid !== uid) {
      ctx.status = 400;
      ctx.type = 'html';
      ctx.body = page('Error', '<h1>Login session mismatch</h1><p id="error">interaction cookie does not match the URL</p>');
      return undefined;
    }
    const finish = async (result) => {
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
      ctx.status = 303;
      ctx.redirect(returnTo);
    };

    if (abort && ctx.method === 'GET') {
      return finish({ error: 'access_denied', error_description: 'End-User aborted interaction' });
    }

    const { prompt } = details;
    if (prompt.name === 'consent') {
      // not reached with the first-party clients (loadExistingGrant grants); grant anyway
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
      if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
      if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      return finish({ consent: { grantId } });
    }
    if (prompt.name !== 'login') {
      ctx.status = 400;
      ctx.body = { error: 'unsupported_prompt', prompt: prompt.name };
      return undefined;
    }

    if (ctx.method === 'GET') {
      ctx.type = 'html';
      ctx.body = loginPage(uid, details);
      return undefined;
    }
    if (ctx.method !== 'POST') {
      ctx.status = 405;
      return undefined;
    }
    const form = querystring.parse(await readBody(ctx.req));
    const login = String(form.login ?? '');
    const user = USERS[login];
    if (!user || String(form.password ?? '') !== user.password) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = loginPage(uid, details, 'Wrong username or password.', login);
      return undefined;
    }
    const accountId = subFor(login);
    if (details.session?.accountId && details.session.accountId !== accountId) {
      // Another user than the session's (prompt=login): oidc-provider would first send the browser
      // through an auto-submitted logout form; end the old session here instead, so that the
      // scripted sequence stays the same.
      const old = details.session.uid ? await provider.Session.findByUid(details.session.uid) : undefined;
      if (old) await old.destroy();
      delete details.session;
      await details.save(details.exp - nowSec());
    }
    return finish({ login: { accountId, amr: ['pwd'], remember: true } });
  };
}

// standard profile: RFC 7662 introspection of our own JWT access tokens (oidc-provider keeps no
// state for them and would answer "inactive"), and revocation of those JWTs.
function standardMiddleware(provider, issuer) {
  const introspectionPath = provider.pathFor('introspection');
  const revocationPath = provider.pathFor('revocation');
  return async (ctx, next) => {
    const introspecting = ctx.method === 'POST' && ctx.path === introspectionPath;
    const revoking = ctx.method === 'POST' && ctx.path === revocationPath;
    if (!introspecting && !revoking) return next();
    if (!ctx.is('application/x-www-form-urlencoded')) return next();
    const form = await formOf(ctx);
    const token = typeof form.token === 'string' ? form.token : undefined;
    let payload;
    if (isJwt(token)) {
      try { payload = verifyOwnJwt(token, issuer); } catch { payload = undefined; }
    }
    await next(); // client authentication, then oidc-provider refuses JWTs: unsupported_token_type
    if (!isJwt(token) || ctx.body?.error !== 'unsupported_token_type') return undefined;
    ctx.status = 200;
    if (revoking) {
      if (payload?.jti) revokedJwtIds.add(payload.jti);
      ctx.body = '';
      return undefined;
    }
    ctx.body = payload && !revokedJwtIds.has(payload.jti)
      ? { ...payload, active: true, token_type: 'Bearer' }
      : { active: false };
    return undefined;
  };
}

// auth0 profile: audience -> resource, Auth0's error statuses, /v2/logout, no `iss` in the
// authorization response, Auth0's discovery document, /userinfo for JWT access tokens.
function auth0Middleware(provider, issuer) {
  const userinfoAud = `${issuer}userinfo`;
  return async (ctx, next) => {
    const p = ctx.path;

    if (p === '/v2/logout' && ctx.method === 'GET') return auth0Logout(provider, ctx);

    if (p === '/.well-known/openid-configuration') {
      await next();
      if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
        const d = { ...ctx.body };
        delete d.end_session_endpoint;
        delete d.introspection_endpoint;
        delete d.introspection_endpoint_auth_methods_supported;
        delete d.introspection_endpoint_auth_signing_alg_values_supported;
        delete d.authorization_response_iss_parameter_supported;
        delete d.pushed_authorization_request_endpoint;
        delete d.require_pushed_authorization_requests;
        delete d.dpop_signing_alg_values_supported;
        delete d.backchannel_logout_supported;
        delete d.backchannel_logout_session_supported;
        ctx.body = d;
      }
      return undefined;
    }
    if (p === '/.well-known/oauth-authorization-server') {
      ctx.status = 404;
      return undefined;
    }

    if (p === '/authorize' || p.startsWith('/authorize/')) {
      if (ctx.method === 'GET') {
        const q = { ...ctx.query };
        if (q.audience !== undefined || (opts.auth0DefaultAudience && p === '/authorize')) {
          const audience = q.audience ?? opts.auth0DefaultAudience;
          delete q.audience;
          if (audience) q.resource = audience;
          ctx.query = q;
        }
      }
      await next();
      const loc = ctx.response.get('Location');
      if (loc && /[?&#]iss=/.test(loc)) {
        const u = new URL(loc);
        u.searchParams.delete('iss');
        if (u.hash.includes('iss=')) {
          const h = new URLSearchParams(u.hash.slice(1));
          h.delete('iss');
          u.hash = h.toString();
        }
        ctx.set('Location', u.href);
      }
      return undefined;
    }

    if (p === '/oauth/token' && ctx.method === 'POST') {
      const form = await formOf(ctx);
      if (ctx.is('application/json')) ctx.req.headers['content-type'] = 'application/x-www-form-urlencoded';
      if (form) {
        if (form.audience === undefined && opts.auth0DefaultAudience && form.grant_type === 'client_credentials') {
          form.audience = opts.auth0DefaultAudience;
        }
        if (form.audience !== undefined) {
          if (form.audience) form.resource = form.audience;
          delete form.audience;
        }
        if (form.grant_type === 'client_credentials' && !form.scope) {
          // Auth0 gives a machine every scope it was granted on the API when none is asked for
          let clientId = form.client_id;
          const basic = /^Basic\s+(\S+)$/i.exec(ctx.get('Authorization'));
          if (basic) {
            try { clientId = decodeURIComponent(Buffer.from(basic[1], 'base64').toString().split(':')[0]); } catch { /* */ }
          }
          if (CLIENT_PERMISSIONS[clientId]) form.scope = CLIENT_PERMISSIONS[clientId].join(' ');
        }
        if (form.grant_type === 'client_credentials' && !form.resource) {
          ctx.status = 403;
          ctx.body = {
            error: 'access_denied',
            error_description: 'No audience parameter was provided, and no default audience has been configured',
          };
          return undefined;
        }
        ctx.req.body = querystring.stringify(form);
      }
      await next();
      if (ctx.body && typeof ctx.body === 'object') {
        if (ctx.status === 400 && ctx.body.error === 'invalid_grant') ctx.status = 403;
        else if (ctx.status === 401 && ctx.body.error === 'invalid_client') {
          ctx.body = { error: 'access_denied', error_description: 'Unauthorized' };
        } else if (ctx.status === 200 && form?.grant_type === 'refresh_token' && opts.auth0NoRotate) {
          const { refresh_token: _dropped, ...rest } = ctx.body;
          ctx.body = rest;
        }
      }
      return undefined;
    }

    if (p === '/userinfo' && (ctx.method === 'GET' || ctx.method === 'POST')) {
      const m = /^Bearer\s+(\S+)$/i.exec(ctx.get('Authorization'));
      if (m && isJwt(m[1])) return auth0JwtUserinfo(ctx, m[1], issuer, userinfoAud);
    }

    return next();
  };
}

function auth0JwtUserinfo(ctx, token, issuer, userinfoAud) {
  let payload;
  try {
    payload = verifyOwnJwt(token, issuer);
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud];
    if (!aud.includes(userinfoAud)) throw new Error('audience');
  } catch {
    ctx.status = 401;
    ctx.set('WWW-Authenticate', 'Bearer realm="auth0", error="invalid_token", error_description="Invalid token"');
    ctx.type = 'text/plain';
    ctx.body = 'Unauthorized';
    return;
  }
  const login = SUBS.get(payload.sub);
  const scopes = new Set((payload.scope || '').split(' '));
  const all = accountClaims(login);
  const out = { sub: payload.sub };
  const byScope = {
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'nickname', 'preferred_username', 'updated_at'],
    groups: ['groups'],
  };
  for (const [scope, names] of Object.entries(byScope)) {
    if (scopes.has(scope)) for (const n of names) out[n] = all[n];
  }
  out[ROLES_CLAIM] = all[ROLES_CLAIM];
  ctx.set('Cache-Control', 'no-store');
  ctx.body = out;
}

async function auth0Logout(provider, ctx) {
  const { client_id: clientId, returnTo } = ctx.query;
  let allowed = !returnTo;
  if (returnTo && typeof returnTo === 'string') {
    const candidates = clientId ? [await provider.Client.find(String(clientId))] : await Promise.all(
      CLIENTS.map((c) => provider.Client.find(c.client_id)),
    );
    allowed = candidates.some((c) => c && c.postLogoutRedirectUriAllowed(returnTo));
  }
  if (!allowed) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>Oops!, something went wrong</h1><p id="error">invalid_request: The "returnTo" querystring parameter "${html(returnTo)}" is not defined as a valid URL in "Allowed Logout URLs".</p>`);
    return;
  }
  const cookieName = provider.cookieName('session');
  const sid = ctx.cookies.get(cookieName);
  if (sid) {
    const session = await provider.Session.find(sid);
    if (session) await session.destroy();
  }
  ctx.cookies.set(cookieName, null, { path: '/' });
  if (returnTo) {
    ctx.status = 302;
    ctx.redirect(returnTo);
  } else {
    ctx.type = 'text/plain';
    ctx.body = 'OK';
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP server: test-control endpoints, request counts, failure injection, then the provider
// ---------------------------------------------------------------------------------------------

function endpointPaths(provider) {
  const r = (name) => provider.pathFor(name);
  const names = {
    discovery: ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server'],
    jwks: [r('jwks')],
    token: [r('token')],
    userinfo: [r('userinfo')],
    introspection: AUTH0 ? [] : [r('introspection')],
    revocation: [r('revocation')],
    authorization: [r('authorization')],
    end_session: [r('end_session')],
  };
  if (AUTH0) names.logout = ['/v2/logout'];
  return names;
}

const COUNT_NAMES = ['discovery', 'jwks', 'token', 'introspection', 'userinfo', 'revocation', 'authorization',
  'interaction', 'end_session', 'logout'];
let provider;
let handler;
let pathNames; // path -> logical name
const counts = new Map(); // path -> n
const failures = []; // { path, mode, remaining, ms }
const idTokenRules = []; // { grant, claims, drop, remaining }: see idTokenOverrides
const backchannel = { ok: 0, error: 0, last_error: null }; // logout token deliveries

// Ends every provider session of `accountId` through oidc-provider's API, as an
// administrator would: a logout token (Client#backchannelLogout) to each client of the
// session registered with a backchannel_logout_uri, then the session destroyed.
async function endSessionsOf(accountId) {
  const out = { sessions: 0, sent: 0, errors: [] };
  for (const [key, entry] of [...store]) {
    if (!key.startsWith('Session:')) continue;
    const session = storeGet(key);
    if (!session || session.accountId !== accountId) continue;
    out.sessions += 1;
    for (const [clientId, authorization] of Object.entries(session.authorizations || {})) {
      const client = await provider.Client.find(clientId);
      if (!client?.backchannelLogoutUri) continue;
      try {
        await client.backchannelLogout(accountId, authorization.sid);
        backchannel.ok += 1;
        out.sent += 1;
      } catch (err) {
        backchannel.error += 1;
        backchannel.last_error = String(err.message || err);
        out.errors.push(backchannel.last_error);
      }
    }
    store.delete(key);
    if (entry?.payload?.uid) store.delete(`sessionUid:${entry.payload.uid}`);
  }
  return out;
}

function nameOfPath(p) {
  if (pathNames.has(p)) return pathNames.get(p);
  if (p.startsWith('/interaction/')) return 'interaction';
  const auth = [...pathNames].find(([k, v]) => v === 'authorization' && p.startsWith(`${k}/`));
  if (auth) return 'authorization';
  return undefined;
}

function countsBody() {
  const body = {};
  for (const name of COUNT_NAMES) body[name] = 0;
  for (const name of new Set(pathNames.values())) body[name] = 0;
  for (const [p, n] of counts) {
    const name = nameOfPath(p);
    if (name) body[name] = (body[name] || 0) + n;
  }
  body.paths = Object.fromEntries(counts);
  return body;
}

function resolveFailPath(value) {
  if (!value) return undefined;
  if (value.startsWith('/')) return value;
  const entry = [...pathNames].find(([, name]) => name === value);
  return entry ? entry[0] : undefined;
}

function sendJson(res, status, body, headers = {}) {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Cache-Control': 'no-store',
    'Content-Length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

async function testControl(req, res, url) {
  const p = url.pathname;
  if (p === '/__test/counts' && req.method === 'GET') return sendJson(res, 200, countsBody());
  if (p === '/__test/reset-counts' && req.method === 'POST') { counts.clear(); return sendJson(res, 200, { ok: true }); }
  if (p === '/__test/fail' && req.method === 'POST') {
    const target = resolveFailPath(url.searchParams.get('path'));
    const mode = url.searchParams.get('mode') || '500';
    if (!target) return sendJson(res, 400, { error: 'path must be a path (/token) or a name (token, jwks, ...)' });
    if (!['500', '503', 'slow', 'badjson', 'nokeys', 'invalid_grant', 'close'].includes(mode)) {
      return sendJson(res, 400, { error: 'mode must be 500, 503, slow, badjson, nokeys, invalid_grant or close' });
    }
    const count = Number(url.searchParams.get('count') ?? '1');
    const ms = Number(url.searchParams.get('ms') ?? '3000');
    if (!Number.isInteger(count) || count < 0 || !Number.isFinite(ms) || ms < 0) {
      return sendJson(res, 400, { error: 'count must be an integer >= 0 (0 = until cleared), ms >= 0' });
    }
    const rule = { path: target, mode, remaining: count === 0 ? Infinity : count, ms };
    failures.push(rule);
    return sendJson(res, 200, { ok: true, path: target, mode, count, ms });
  }
  if (p === '/__test/id-token' && req.method === 'POST') {
    const grant = url.searchParams.get('grant') || 'authorization_code';
    if (!['authorization_code', 'refresh_token'].includes(grant)) {
      return sendJson(res, 400, { error: 'grant must be authorization_code or refresh_token' });
    }
    const drop = /^(1|true|yes)$/i.test(url.searchParams.get('drop') || '');
    let claims = {};
    if (url.searchParams.has('claims')) {
      try { claims = JSON.parse(url.searchParams.get('claims')); } catch { claims = undefined; }
      if (!claims || typeof claims !== 'object' || Array.isArray(claims)) {
        return sendJson(res, 400, { error: 'claims must be a JSON object' });
      }
    }
    const count = Number(url.searchParams.get('count') ?? '1');
    if (!Number.isInteger(count) || count < 0) {
      return sendJson(res, 400, { error: 'count must be an integer >= 0 (0 = until cleared)' });
    }
    idTokenRules.push({ grant, claims, drop, remaining: count === 0 ? Infinity : count });
    return sendJson(res, 200, { ok: true, grant, claims, drop, count });
  }
  if (p === '/__test/id-token' && req.method === 'DELETE') {
    idTokenRules.length = 0;
    return sendJson(res, 200, { ok: true });
  }
  if ((p === '/__test/fail' && req.method === 'DELETE') || (p === '/__test/reset-fail' && req.method === 'POST')) {
    failures.length = 0;
    return sendJson(res, 200, { ok: true });
  }
  if (p === '/__test/reset' && req.method === 'POST') {
    counts.clear();
    failures.length = 0;
    idTokenRules.length = 0;
    Object.assign(backchannel, { ok: 0, error: 0, last_error: null });
    return sendJson(res, 200, { ok: true });
  }
  if (p === '/__test/backchannel-logout' && (req.method === 'POST' || req.method === 'DELETE')) {
    const uri = req.method === 'POST' ? url.searchParams.get('uri') : undefined;
    if (req.method === 'POST') {
      try { new URL(uri); } catch { return sendJson(res, 400, { error: 'uri must be a URL' }); }
    }
    const required = /^(1|true|yes)$/i.test(url.searchParams.get('session_required') ?? '1');
    for (const c of CLIENTS.filter((x) => FIRST_PARTY.has(x.client_id))) {
      if (uri) {
        c.backchannel_logout_uri = uri;
        c.backchannel_logout_session_required = required;
      } else {
        delete c.backchannel_logout_uri;
        delete c.backchannel_logout_session_required;
      }
    }
    installProvider(provider.issuer);
    return sendJson(res, 200, { ok: true, uri: uri ?? null, session_required: uri ? required : null });
  }
  if (p === '/__test/backchannel' && req.method === 'GET') return sendJson(res, 200, backchannel);
  if (p === '/__test/end-session' && req.method === 'POST') {
    const login = url.searchParams.get('login');
    if (!USERS[login]) return sendJson(res, 400, { error: 'login must be a known user' });
    return sendJson(res, 200, await endSessionsOf(subFor(login)));
  }
  if (p === '/__test/keys' && req.method === 'GET') return sendJson(res, 200, { keys: signingKeys });
  if (p === '/__test/rotate-keys' && req.method === 'POST') {
    const keep = /^(1|true|yes)$/i.test(url.searchParams.get('keep') || '');
    const fresh = [generateKey('RS256'), generateKey('ES256')];
    signingKeys = keep ? [...fresh, ...signingKeys] : fresh;
    if (opts.keysDir) saveKeys(opts.keysDir, signingKeys);
    installProvider(provider.issuer);
    log('rotated signing keys:', signingKeys.map((k) => k.kid).join(' '));
    return sendJson(res, 200, { ok: true, kids: signingKeys.map((k) => k.kid) });
  }
  if (p === '/__test/config' && req.method === 'GET') {
    return sendJson(res, 200, {
      profile: opts.profile,
      issuer: provider.issuer,
      refresh: opts.refresh,
      access_token_ttl: opts.accessTokenTtl,
      id_token_ttl: opts.idTokenTtl,
      endpoints: Object.fromEntries([...pathNames].map(([k, v]) => [v, k])),
    });
  }
  return sendJson(res, 404, { error: 'unknown test-control endpoint' });
}

function installProvider(issuer) {
  provider = buildProvider(issuer);
  handler = provider.callback();
  pathNames = new Map();
  for (const [name, paths] of Object.entries(endpointPaths(provider))) {
    for (const p of paths) pathNames.set(p, name);
  }
}

const onRequest = async (req, res) => {
  const started = process.hrtime.bigint();
  let url;
  try {
    url = new URL(req.url, 'http://127.0.0.1');
  } catch {
    res.writeHead(400).end();
    return;
  }
  if (!opts.quiet) {
    res.on('finish', () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      // never log the query string (codes, tokens)
      log(req.method, url.pathname, res.statusCode, `${ms.toFixed(1)}ms`);
    });
  }
  if (url.pathname.startsWith('/__test/')) {
    try {
      await testControl(req, res, url);
    } catch (err) {
      sendJson(res, 500, { error: String(err.message || err) });
    }
    return;
  }
  counts.set(url.pathname, (counts.get(url.pathname) || 0) + 1);

  if (opts.metadataTokenFile && ['discovery', 'jwks'].includes(nameOfPath(url.pathname))) {
    let want = '';
    try { want = fs.readFileSync(opts.metadataTokenFile, 'utf8').trim(); } catch { /* no file: nobody passes */ }
    if (!want || req.headers.authorization !== `Bearer ${want}`) {
      sendJson(res, 401, { kind: 'Status', status: 'Failure', message: 'Unauthorized', code: 401 });
      return;
    }
  }

  const rule = failures.find((f) => f.path === url.pathname && f.remaining > 0);
  if (rule) {
    rule.remaining -= 1;
    if (rule.remaining <= 0) failures.splice(failures.indexOf(rule), 1);
    switch (rule.mode) {
      case '500':
        sendJson(res, 500, { error: 'server_error', error_description: 'injected failure' });
        return;
      case '503':
        sendJson(res, 503, { error: 'temporarily_unavailable', error_description: 'injected failure' }, { 'Retry-After': '1' });
        return;
      case 'badjson': {
        const text = '{"this is": not json';
        res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
        res.end(text);
        return;
      }
      case 'nokeys':
        // Well-formed JSON, but the only key is an HMAC secret, which no relying party may
        // take from a JWKS: a key set with no usable signature key.
        sendJson(res, 200, { keys: [{ kty: 'oct', kid: 'injected', k: 'c2VjcmV0' }] });
        return;
      case 'invalid_grant':
        // As a token endpoint refuses a revoked or expired grant (RFC 6749 section 5.2).
        sendJson(res, 400, { error: 'invalid_grant', error_description: 'injected failure' });
        return;
      case 'close':
        req.socket.destroy();
        return;
      case 'slow':
        await new Promise((r) => { setTimeout(r, rule.ms); });
        if (req.socket.destroyed) return;
        break;
      default:
    }
  }
  handler(req, res);
};
const tlsFile = (name) => fs.readFileSync(path.join(opts.tlsDir, name));
const server = opts.tlsDir
  ? https.createServer({
    key: tlsFile('server.key'),
    cert: tlsFile('server.pem'),
    ca: tlsFile('ca.pem'),
    requestCert: true,
    rejectUnauthorized: false,
  }, onRequest)
  : http.createServer(onRequest);
server.keepAliveTimeout = 5000;

server.on('error', (err) => {
  log('listen failed:', err.message);
  process.exit(1);
});

server.listen(opts.port, '127.0.0.1', () => {
  const { port } = server.address();
  const scheme = opts.tlsDir ? 'https' : 'http';
  const issuer = AUTH0 ? `${scheme}://127.0.0.1:${port}/` : `${scheme}://127.0.0.1:${port}`;
  try {
    installProvider(issuer);
  } catch (err) {
    log('configuration failed:', err.stack || err);
    process.exit(1);
  }
  log(`listening: issuer ${issuer}, keys ${signingKeys.map((k) => k.kid).join(' ')}`
    + `${opts.keysDir ? ` (${opts.keysDir})` : ' (in memory)'}, refresh ${opts.refresh}`);
  process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);
});

function shutdown(signal) {
  log(`${signal}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (opts.watchStdin) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}
