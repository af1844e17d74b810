#!/usr/bin/env node
// Self-test of the test provider: starts server.mjs on an ephemeral port for each profile and
// checks, with plain fetch, what portcullis' tests rely on. Prints "N passed, N failed".
//
//   node tests/idp/selftest.mjs

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SERVER = path.join(HERE, 'server.mjs');
const API = 'https://api.example.test';
const API_ES256 = 'https://es256.api.example.test';
const ROLES = 'https://example.com/roles';
const VERBOSE = process.argv.includes('--verbose');

let passed = 0;
let failed = 0;
let section = '';
function check(name, ok, detail) {
  if (ok) {
    passed += 1;
    if (VERBOSE) console.log(`ok   ${section}: ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${section}: ${name}${detail === undefined ? '' : ` -- ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`}`);
  }
  return ok;
}
function eq(name, actual, expected) {
  return check(name, JSON.stringify(actual) === JSON.stringify(expected), `got ${JSON.stringify(actual)}, want ${JSON.stringify(expected)}`);
}

// ---------------------------------------------------------------------------------------------
// process control
// ---------------------------------------------------------------------------------------------

const children = new Set();

// A start that prints no ready line in time (seen about once in thirty starts on a loaded
// machine, with nothing logged) is killed and tried again, at most twice: the same rule as
// the Rust harness's (tests/e2e/support/idp.rs).
async function startIdp(args) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await startIdpOnce(args);
    } catch (e) {
      if (!(e instanceof HungStart) || attempt >= 2) throw e;
      process.stderr.write(`provider start hung; retrying (${attempt + 1})\n`);
    }
  }
}

class HungStart extends Error {}

async function startIdpOnce(args) {
  const child = spawn(process.execPath, [SERVER, '--port', '0', ...(VERBOSE ? [] : ['--quiet']), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (VERBOSE) process.stderr.write(d);
  });
  const rl = createInterface({ input: child.stdout });
  const lines = [];
  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      children.delete(child);
      reject(new HungStart(`no ready line in 15s; stderr:\n${stderr}`));
    }, 15000);
    rl.on('line', (line) => {
      lines.push(line);
      if (lines.length === 1) {
        clearTimeout(timer);
        try { resolve({ line, json: JSON.parse(line) }); } catch (e) { reject(new Error(`ready line is not JSON: ${line}`)); }
      }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`idp exited with ${code}; stderr:\n${stderr}`)); });
  });
  return {
    child,
    ready: ready.json,
    readyLine: ready.line,
    base: `http://127.0.0.1:${ready.json.port}`,
    extraStdout: () => lines.slice(1),
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) { children.delete(child); resolve(); return; }
      child.once('exit', () => { children.delete(child); resolve(); });
      child.kill('SIGTERM');
    }),
  };
}
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });

// ---------------------------------------------------------------------------------------------
// HTTP, cookies, JWT
// ---------------------------------------------------------------------------------------------

class Jar {
  constructor() { this.cookies = new Map(); }

  absorb(res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';');
      const i = pair.indexOf('=');
      const name = pair.slice(0, i).trim();
      const value = pair.slice(i + 1).trim();
      const expired = attrs.some((a) => /^\s*expires=/i.test(a) && new Date(a.split('=')[1]) < new Date())
        || attrs.some((a) => /^\s*max-age=0\s*$/i.test(a));
      if (!value || expired) this.cookies.delete(name); else this.cookies.set(name, value);
    }
  }

  header() { return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; '); }
}

async function req(url, { method = 'GET', form, json, jar, headers = {}, basic, bearer } = {}) {
  const h = { ...headers };
  let body;
  if (form) {
    h['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  } else if (json) {
    h['content-type'] = 'application/json';
    body = JSON.stringify(json);
  }
  if (basic) h.authorization = `Basic ${Buffer.from(`${encodeURIComponent(basic[0])}:${encodeURIComponent(basic[1])}`).toString('base64')}`;
  if (bearer) h.authorization = `Bearer ${bearer}`;
  if (jar && jar.cookies.size) h.cookie = jar.header();
  const res = await fetch(url, { method, headers: h, body, redirect: 'manual' });
  if (jar) jar.absorb(res);
  const text = await res.text();
  let data;
  try { data = JSON.parse(text); } catch { data = undefined; }
  return {
    status: res.status, headers: res.headers, text, json: data, location: res.headers.get('location'),
  };
}

const b64uJson = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
const isJwt = (t) => typeof t === 'string' && t.split('.').length === 3;
function decodeJwt(t) {
  const [h, p] = t.split('.');
  return { header: b64uJson(h), payload: b64uJson(p) };
}
function verifyJwt(token, jwks) {
  const [h, p, s] = token.split('.');
  const header = b64uJson(h);
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  if (!jwk) return false;
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const alg = { RS256: 'sha256', ES256: 'sha256' }[header.alg];
  if (!alg) return false;
  return crypto.verify(alg, Buffer.from(`${h}.${p}`), header.alg === 'ES256'
    ? { key, dsaEncoding: 'ieee-p1363' } : key, Buffer.from(s, 'base64url'));
}

function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  return { verifier, challenge };
}

// The scripted login: authorize -> interaction -> POST form -> resume -> redirect_uri?code=
async function scriptedLogin(disco, {
  jar = new Jar(), clientId = 'portcullis', redirectUri, scope = 'openid email profile offline_access groups',
  login = 'alice', password = `${login}-pw`, extra = {}, withPkce = true,
} = {}) {
  const state = crypto.randomBytes(8).toString('hex');
  const nonce = crypto.randomBytes(8).toString('hex');
  const { verifier, challenge } = pkce();
  const params = new URLSearchParams({
    client_id: clientId, response_type: 'code', redirect_uri: redirectUri, scope, state, nonce, ...extra,
  });
  if (withPkce) { params.set('code_challenge', challenge); params.set('code_challenge_method', 'S256'); }
  const steps = [];
  let r = await req(`${disco.authorization_endpoint}?${params}`, { jar });
  steps.push(r);
  let url = r.location && new URL(r.location, disco.authorization_endpoint).href;
  let interactionPage;
  if (url && url.includes('/interaction/')) {
    interactionPage = await req(url, { jar });
    steps.push(interactionPage);
    r = await req(url, { method: 'POST', form: { login, password }, jar });
    steps.push(r);
    if (r.status !== 303) return { error: 'login POST failed', steps, interactionPage };
    url = new URL(r.location, url).href; // resume: {authorization_endpoint}/{uid}
    r = await req(url, { jar });
    steps.push(r);
    url = r.location && new URL(r.location, url).href;
  }
  if (!url || !url.startsWith(redirectUri)) return { error: 'no redirect to the client', steps, interactionPage };
  const cb = new URL(url);
  return {
    jar, state, nonce, verifier, callback: cb, code: cb.searchParams.get('code'), steps, interactionPage,
  };
}

// ---------------------------------------------------------------------------------------------
// standard profile
// ---------------------------------------------------------------------------------------------

async function standardProfile(keysDir) {
  section = 'standard';
  const idp = await startIdp(['--profile', 'standard', '--keys-dir', keysDir, '--access-token-ttl', '600']);
  try {
    const { ready, base } = idp;
    check('ready line shape', /^\{"ready":true,"issuer":"http:\/\/127\.0\.0\.1:\d+","port":\d+\}$/.test(idp.readyLine), idp.readyLine);
    eq('ready issuer has no trailing slash', ready.issuer, base);

    // discovery
    const d = await req(`${base}/.well-known/openid-configuration`);
    const disco = d.json;
    eq('discovery status', d.status, 200);
    eq('discovery issuer', disco.issuer, ready.issuer);
    for (const [k, v] of Object.entries({
      authorization_endpoint: '/auth', token_endpoint: '/token', userinfo_endpoint: '/me', jwks_uri: '/jwks',
      introspection_endpoint: '/token/introspection', revocation_endpoint: '/token/revocation', end_session_endpoint: '/session/end',
    })) eq(`discovery ${k}`, disco[k], base + v);
    eq('discovery iss parameter supported', disco.authorization_response_iss_parameter_supported, true);
    check('discovery S256', disco.code_challenge_methods_supported?.includes('S256'));
    check('discovery scopes', ['openid', 'email', 'profile', 'offline_access', 'groups', 'read:items', 'write:items']
      .every((s) => disco.scopes_supported.includes(s)), disco.scopes_supported);
    check('discovery claims', ['email', 'email_verified', 'name', 'preferred_username', 'groups']
      .every((c) => disco.claims_supported.includes(c)), disco.claims_supported);

    // JWKS
    const jwks = (await req(disco.jwks_uri)).json;
    check('jwks has RS256 and ES256', ['RS256', 'ES256'].every((alg) => jwks.keys.some((k) => k.alg === alg)), jwks);
    check('jwks has no private parts', jwks.keys.every((k) => !('d' in k)));
    const saved = JSON.parse(fs.readFileSync(path.join(keysDir, 'jwks.json'), 'utf8'));
    eq('keys saved in keys-dir', saved.keys.map((k) => k.kid).sort(), jwks.keys.map((k) => k.kid).sort());

    // client credentials, JWT for a resource
    const cc = async (client, secret, extra) => req(disco.token_endpoint, {
      method: 'POST', basic: [client, secret], form: { grant_type: 'client_credentials', ...extra },
    });
    let r = await cc('machine', 'machine-secret', { scope: 'read:items write:items', resource: API });
    eq('cc+resource status', r.status, 200);
    const jwtAt = r.json?.access_token;
    check('cc+resource gives a JWT', isJwt(jwtAt), r.text);
    if (isJwt(jwtAt)) {
      const { header, payload } = decodeJwt(jwtAt);
      eq('cc JWT alg', header.alg, 'RS256');
      eq('cc JWT typ', header.typ, 'at+jwt');
      check('cc JWT signed by served JWKS', verifyJwt(jwtAt, jwks));
      eq('cc JWT iss', payload.iss, ready.issuer);
      eq('cc JWT aud', payload.aud, API);
      eq('cc JWT sub', payload.sub, 'machine');
      eq('cc JWT client_id', payload.client_id, 'machine');
      eq('cc JWT scope', payload.scope, 'read:items write:items');
      eq('cc JWT lifetime', payload.exp - payload.iat, 600);
      check('cc JWT jti', typeof payload.jti === 'string');
      eq('cc response expires_in', r.json.expires_in, 600);
    }
    r = await cc('machine-ro', 'machine-ro-secret', { scope: 'read:items', resource: API });
    eq('machine-ro scope', r.json && decodeJwt(r.json.access_token).payload.scope, 'read:items');
    r = await cc('machine-ro', 'machine-ro-secret', { scope: 'read:items write:items', resource: API });
    eq('machine-ro may not ask write:items', [r.status, r.json?.error], [400, 'invalid_scope']);
    r = await cc('machine', 'machine-secret', { scope: 'read:items', resource: API_ES256 });
    check('ES256 resource gives an ES256 JWT', r.json && decodeJwt(r.json.access_token).header.alg === 'ES256'
      && verifyJwt(r.json.access_token, jwks), r.text);
    r = await cc('machine', 'machine-secret', { scope: 'read:items', resource: 'https://unknown.example.test' });
    eq('unknown resource', [r.status, r.json?.error], [400, 'invalid_target']);
    r = await cc('machine', 'wrong', { scope: 'read:items' });
    eq('bad client secret', [r.status, r.json?.error], [401, 'invalid_client']);

    // opaque token, introspection, revocation
    r = await cc('machine', 'machine-secret', { scope: 'read:items' });
    const opaque = r.json?.access_token;
    check('cc without resource gives an opaque token', typeof opaque === 'string' && !isJwt(opaque), r.text);
    const introspect = (token, client = ['rs', 'rs-secret']) => req(disco.introspection_endpoint, {
      method: 'POST', basic: client, form: { token, token_type_hint: 'access_token' },
    });
    r = await introspect(opaque);
    eq('introspection active', r.json?.active, true);
    eq('introspection fields', r.json && [r.json.client_id, r.json.sub, r.json.scope, r.json.iss, r.json.token_type],
      ['machine', 'machine', 'read:items', ready.issuer, 'Bearer']);
    check('introspection exp', r.json?.exp > Date.now() / 1000);
    r = await req(disco.introspection_endpoint, {
      method: 'POST', form: { token: opaque, client_id: 'rs-post', client_secret: 'rs-secret' },
    });
    eq('introspection with client_secret_post', r.json?.active, true);
    r = await introspect(opaque, ['rs-post', 'rs-secret']);
    eq('rs-post must use client_secret_post', [r.status, r.json?.error], [401, 'invalid_client']);
    r = await req(disco.introspection_endpoint, {
      method: 'POST', form: { token: opaque, client_id: 'rs', client_secret: 'rs-secret' },
    });
    eq('rs must use client_secret_basic', [r.status, r.json?.error], [401, 'invalid_client']);
    r = await introspect(opaque, ['rs', 'wrong']);
    eq('introspection bad credentials', r.status, 401);
    r = await introspect('not-a-token');
    eq('introspection of garbage', r.json, { active: false });
    r = await req(disco.revocation_endpoint, {
      method: 'POST', basic: ['machine', 'machine-secret'], form: { token: opaque, token_type_hint: 'access_token' },
    });
    eq('revocation status', r.status, 200);
    r = await introspect(opaque);
    eq('revoked token inactive', r.json, { active: false });
    r = await introspect(jwtAt);
    check('JWT introspection active', r.json?.active === true && r.json.aud === API && r.json.scope === 'read:items write:items', r.json);
    await req(disco.revocation_endpoint, { method: 'POST', basic: ['machine', 'machine-secret'], form: { token: jwtAt } });
    r = await introspect(jwtAt);
    eq('revoked JWT inactive', r.json?.active, false);

    // scripted login with PKCE
    const redirectUri = 'http://127.0.0.1:45678/oauth2/callback';
    const login = await scriptedLogin(disco, { redirectUri });
    check('login: authorize -> 303 interaction', login.steps[0]?.status === 303 && /^\/interaction\/[\w-]+$/.test(login.steps[0].location), login.steps[0]?.location);
    const form = login.interactionPage?.text || '';
    check('login form fields', /name="login"/.test(form) && /name="password"/.test(form) && /id="submit"/.test(form));
    check('login: POST -> 303 resume', login.steps[2]?.status === 303 && login.steps[2].location?.startsWith(`${base}/auth/`), login.steps[2]?.location);
    check('login: code', typeof login.code === 'string' && login.code.length > 10, login.error || login.callback?.href);
    eq('login: state', login.callback?.searchParams.get('state'), login.state);
    eq('login: iss (RFC 9207)', login.callback?.searchParams.get('iss'), ready.issuer);
    const exchange = (code, verifier, client = ['portcullis', 'portcullis-secret'], uri = redirectUri) => req(disco.token_endpoint, {
      method: 'POST', basic: client, form: { grant_type: 'authorization_code', code, redirect_uri: uri, code_verifier: verifier },
    });
    r = await exchange(login.code, 'wrong-verifier-wrong-verifier-wrong-verifier-1234');
    eq('code with a wrong verifier', [r.status, r.json?.error], [400, 'invalid_grant']);
    const login2 = await scriptedLogin(disco, { redirectUri, jar: login.jar });
    eq('second authorize with the session: no login form', login2.steps.length, 1);
    r = await req(disco.token_endpoint, {
      method: 'POST',
      form: {
        grant_type: 'authorization_code', code: login2.code, redirect_uri: redirectUri, code_verifier: login2.verifier,
        client_id: 'portcullis', client_secret: 'portcullis-secret',
      },
    });
    eq('portcullis must use client_secret_basic', [r.status, r.json?.error], [401, 'invalid_client']);
    r = await exchange(login2.code, login2.verifier, ['portcullis-post', 'portcullis-secret']);
    eq('portcullis-post must use client_secret_post', [r.status, r.json?.error], [401, 'invalid_client']);
    r = await exchange(login2.code, login2.verifier);
    eq('token response status', r.status, 200);
    const tokens = r.json || {};
    check('token response has id_token, access_token, refresh_token', isJwt(tokens.id_token) && tokens.access_token && tokens.refresh_token, Object.keys(tokens));
    if (isJwt(tokens.id_token)) {
      const { header, payload } = decodeJwt(tokens.id_token);
      check('ID token signed by served JWKS', verifyJwt(tokens.id_token, jwks));
      eq('ID token alg', header.alg, 'RS256');
      eq('ID token claims', [payload.iss, payload.aud, payload.sub, payload.nonce, payload.email, payload.email_verified,
        payload.name, payload.preferred_username, payload.groups],
      [ready.issuer, 'portcullis', 'user-alice', login2.nonce, 'alice@example.com', true, 'Alice Example', 'alice', ['staff', 'admins']]);
      eq('ID token updated_at is a number', typeof payload.updated_at, 'number');
    }
    check('user access token is opaque', tokens.access_token && !isJwt(tokens.access_token));
    r = await req(disco.userinfo_endpoint, { bearer: tokens.access_token });
    eq('userinfo', r.json && [r.json.sub, r.json.email, r.json.groups], ['user-alice', 'alice@example.com', ['staff', 'admins']]);
    r = await introspect(tokens.access_token);
    eq('introspection of a user token', r.json && [r.json.active, r.json.sub, r.json.client_id, r.json.groups, r.json.email_verified],
      [true, 'user-alice', 'portcullis', ['staff', 'admins'], true]);

    // refresh (rotating)
    const refresh = (rt, client = ['portcullis', 'portcullis-secret']) => req(disco.token_endpoint, {
      method: 'POST', basic: client, form: { grant_type: 'refresh_token', refresh_token: rt },
    });
    r = await refresh(tokens.refresh_token);
    check('refresh rotates', r.status === 200 && r.json.refresh_token && r.json.refresh_token !== tokens.refresh_token, r.text);
    const rotated = r.json?.refresh_token;
    r = await refresh(tokens.refresh_token);
    eq('reused refresh token', [r.status, r.json?.error], [400, 'invalid_grant']);
    r = await refresh(rotated);
    eq('reuse revoked the grant', [r.status, r.json?.error], [400, 'invalid_grant']);
    r = await exchange(login2.code, login2.verifier);
    eq('code replay', [r.status, r.json?.error], [400, 'invalid_grant']);

    // PKCE is required
    const noPkce = await scriptedLogin(disco, { redirectUri, jar: login.jar, withPkce: false });
    eq('authorize without PKCE', noPkce.callback?.searchParams.get('error'), 'invalid_request');

    // bob, resource at authorize -> JWT access token within his permissions; client_secret_post
    const bob = await scriptedLogin(disco, {
      redirectUri, login: 'bob', clientId: 'portcullis-post',
      scope: 'openid email profile groups read:items write:items', extra: { resource: API },
    });
    r = await req(disco.token_endpoint, {
      method: 'POST',
      form: {
        grant_type: 'authorization_code', code: bob.code, redirect_uri: redirectUri, code_verifier: bob.verifier,
        client_id: 'portcullis-post', client_secret: 'portcullis-secret',
      },
    });
    check('bob: user JWT access token', isJwt(r.json?.access_token), r.text);
    if (isJwt(r.json?.access_token)) {
      const { payload } = decodeJwt(r.json.access_token);
      check('bob JWT signed', verifyJwt(r.json.access_token, jwks));
      eq('bob JWT claims', [payload.sub, payload.aud, payload.scope, payload.client_id, payload.groups, payload.email],
        ['user-bob', API, 'read:items', 'portcullis-post', ['staff'], 'bob@example.com']);
      eq('bob ID token', decodeJwt(r.json.id_token).payload.email, 'bob@example.com');
    }
    {
      const jar = new Jar();
      const q = new URLSearchParams({
        client_id: 'portcullis', response_type: 'code', redirect_uri: redirectUri, scope: 'openid', state: 'ab',
        code_challenge: pkce().challenge, code_challenge_method: 'S256',
      });
      const a = await req(`${disco.authorization_endpoint}?${q}`, { jar });
      const b = await req(`${base}${a.location}/abort`, { jar });
      const c = b.location && await req(b.location, { jar });
      const cb = c?.location ? new URL(c.location) : undefined;
      eq('abort -> error=access_denied at the client', [cb?.origin + cb?.pathname, cb?.searchParams.get('error'), cb?.searchParams.get('state')],
        [redirectUri, 'access_denied', 'ab']);
    }
    const zoe = await scriptedLogin(disco, { redirectUri, login: 'zoe' });
    r = await exchange(zoe.code, zoe.verifier);
    eq('zoe: unicode name, comma group', r.json && [decodeJwt(r.json.id_token).payload.name, decodeJwt(r.json.id_token).payload.groups],
      ['Zoë Ünïcode', ['staff', 'r&d, europe']]);
    const again = await scriptedLogin(disco, { redirectUri, jar: zoe.jar, login: 'bob', extra: { prompt: 'login' } });
    r = await exchange(again.code, again.verifier);
    eq('prompt=login: the form again, another user', r.json && decodeJwt(r.json.id_token).payload.sub, 'user-bob');
    const bad = await scriptedLogin(disco, { redirectUri, login: 'mallory', password: 'nope' });
    eq('wrong password -> 401 form', bad.steps[2]?.status, 401);
    const mal = await scriptedLogin(disco, { redirectUri, login: 'mallory' });
    r = await exchange(mal.code, mal.verifier);
    eq('mallory email unverified', r.json && decodeJwt(r.json.id_token).payload.email_verified, false);
    const many = await scriptedLogin(disco, { redirectUri, login: 'many' });
    r = await exchange(many.code, many.verifier);
    check('many: 151 groups in a large ID token', r.json && decodeJwt(r.json.id_token).payload.groups.length === 151
      && r.json.id_token.length > 6000, r.json?.id_token?.length);

    // RP-initiated logout
    const post = 'http://127.0.0.1:45678/signed-out';
    r = await req(`${disco.end_session_endpoint}?${new URLSearchParams({
      id_token_hint: tokens.id_token, post_logout_redirect_uri: post, state: 'bye', client_id: 'portcullis',
    })}`, { jar: login.jar });
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(r.text)?.[1];
    check('end_session page with xsrf', r.status === 200 && xsrf, r.status);
    r = await req(`${disco.end_session_endpoint}/confirm`, { method: 'POST', jar: login.jar, form: { xsrf, logout: 'yes' } });
    check('logout confirm -> post_logout_redirect_uri', r.status === 303 && r.location === `${post}?state=bye`, [r.status, r.location]);
    const after = await scriptedLogin(disco, { redirectUri, jar: login.jar });
    check('after logout the login form is back', after.steps[0]?.location?.startsWith('/interaction/'), after.steps[0]?.location);

    // counts and failure injection
    r = await req(`${base}/__test/counts`);
    const c = r.json || {};
    check('counts', c.discovery >= 1 && c.jwks >= 1 && c.token >= 10 && c.introspection >= 5 && c.userinfo >= 1
      && c.revocation >= 2 && c.authorization >= 1 && c.paths?.['/token'] === c.token, c);
    await req(`${base}/__test/reset-counts`, { method: 'POST' });
    await req(disco.jwks_uri);
    r = await req(`${base}/__test/counts`);
    eq('counts after reset', [r.json.jwks, r.json.token, r.json.introspection], [1, 0, 0]);
    r = await req(`${base}/__test/fail?path=/token&mode=500&count=1`, { method: 'POST' });
    eq('fail armed', r.status, 200);
    r = await cc('machine', 'machine-secret', { scope: 'read:items' });
    eq('injected 500', r.status, 500);
    r = await cc('machine', 'machine-secret', { scope: 'read:items' });
    eq('only count=1 failures', r.status, 200);
    await req(`${base}/__test/fail?path=jwks&mode=badjson&count=1`, { method: 'POST' });
    r = await req(disco.jwks_uri);
    check('injected bad JSON', r.status === 200 && r.json === undefined, r.text);
    await req(`${base}/__test/fail?path=introspection&mode=slow&ms=300`, { method: 'POST' });
    const t0 = Date.now();
    r = await introspect(opaque);
    check('injected slowness', Date.now() - t0 >= 280 && r.status === 200, Date.now() - t0);
    r = await req(`${base}/__test/counts`);
    eq('failed requests are counted', [r.json.token, r.json.jwks, r.json.introspection], [2, 2, 1]);

    // ID tokens no honest provider issues (/__test/id-token)
    const aud2 = ['portcullis', 'https://other.example.test'];
    r = await req(`${base}/__test/id-token?grant=authorization_code&claims=${encodeURIComponent(JSON.stringify({ aud: aud2, azp: null }))}`, { method: 'POST' });
    eq('id-token override armed', r.status, 200);
    r = await req(`${base}/__test/id-token?grant=implicit`, { method: 'POST' });
    eq('id-token override: unknown grant', r.status, 400);
    const odd = await scriptedLogin(disco, { redirectUri });
    r = await exchange(odd.code, odd.verifier);
    const oddId = r.json?.id_token && decodeJwt(r.json.id_token).payload;
    check('overridden ID token: several audiences, no azp, still signed', r.status === 200 && verifyJwt(r.json.id_token, jwks)
      && JSON.stringify(oddId?.aud) === JSON.stringify(aud2) && !('azp' in oddId) && oddId?.nonce === odd.nonce, oddId);
    r = await req(`${base}/__test/id-token?grant=refresh_token&claims=${encodeURIComponent(JSON.stringify({ sub: 'user-bob' }))}`, { method: 'POST' });
    eq('refresh override armed', r.status, 200);
    const odd2 = await scriptedLogin(disco, { redirectUri });
    const odd2Tokens = (await exchange(odd2.code, odd2.verifier)).json || {};
    eq('only count=1 ID tokens are changed', decodeJwt(odd2Tokens.id_token).payload.aud, 'portcullis');
    r = await refresh(odd2Tokens.refresh_token);
    const refreshedId = r.json?.id_token && decodeJwt(r.json.id_token).payload;
    check('refresh grant ID token with another sub', verifyJwt(r.json?.id_token, jwks) && refreshedId.sub === 'user-bob', refreshedId);
    await req(`${base}/__test/id-token?grant=refresh_token&drop=1`, { method: 'POST' });
    r = await refresh(r.json?.refresh_token);
    check('refresh without an ID token', r.status === 200 && r.json.access_token && !('id_token' in r.json), r.text);
    await req(`${base}/__test/id-token?grant=refresh_token&drop=1&count=0`, { method: 'POST' });
    r = await req(`${base}/__test/id-token`, { method: 'DELETE' });
    const odd3 = await scriptedLogin(disco, { redirectUri });
    r = await refresh((await exchange(odd3.code, odd3.verifier)).json?.refresh_token);
    check('cleared overrides', r.status === 200 && isJwt(r.json.id_token) && decodeJwt(r.json.id_token).payload.sub === 'user-alice', r.text);

    // key rotation in place
    const before = jwks.keys.map((k) => k.kid);
    r = await req(`${base}/__test/rotate-keys`, { method: 'POST' });
    const jwks2 = (await req(disco.jwks_uri)).json;
    check('rotate-keys: new kids only', jwks2.keys.length === 2 && jwks2.keys.every((k) => !before.includes(k.kid)), jwks2);
    r = await cc('machine', 'machine-secret', { scope: 'read:items', resource: API });
    check('token after rotation signed by new key', verifyJwt(r.json.access_token, jwks2) && !verifyJwt(r.json.access_token, jwks));
    check('no stray stdout', idp.extraStdout().length === 0, idp.extraStdout());
  } finally {
    await idp.stop();
  }

  // restart on the same keys dir = same keys; new dir = new keys
  section = 'standard restart';
  const saved = JSON.parse(fs.readFileSync(path.join(keysDir, 'jwks.json'), 'utf8')).keys.map((k) => k.kid);
  const again = await startIdp(['--keys-dir', keysDir]);
  try {
    const jwks = (await req(`${again.base}/jwks`)).json;
    eq('same keys-dir keeps the keys', jwks.keys.map((k) => k.kid), saved);
  } finally { await again.stop(); }
  const fresh = await startIdp(['--keys-dir', path.join(keysDir, 'rotated')]);
  try {
    const jwks = (await req(`${fresh.base}/jwks`)).json;
    check('new keys-dir = new keys', jwks.keys.every((k) => !saved.includes(k.kid)), jwks);
  } finally { await fresh.stop(); }
}

// ---------------------------------------------------------------------------------------------
// standard profile options: strict redirect URIs, ES256 ID tokens, non-rotating refresh, short TTL
// ---------------------------------------------------------------------------------------------

async function standardOptions() {
  section = 'standard options';
  const redirectUri = 'http://127.0.0.1:45681/oauth2/callback';
  const idp = await startIdp([
    '--redirect-uri', redirectUri, '--post-logout-redirect-uri', 'http://127.0.0.1:45681/',
    '--id-token-alg', 'ES256', '--refresh', 'reuse', '--access-token-ttl', '2', '--id-token-ttl', '120',
    '--jwks-max-age', '60',
  ]);
  try {
    const disco = (await req(`${idp.base}/.well-known/openid-configuration`)).json;
    const jwksRes = await req(disco.jwks_uri);
    const jwks = jwksRes.json;
    eq('--jwks-max-age', jwksRes.headers.get('cache-control'), 'public, max-age=60');
    const other = await scriptedLogin(disco, { redirectUri: 'http://127.0.0.1:45682/oauth2/callback' });
    eq('unregistered redirect_uri: error page, no redirect', [other.steps[0]?.status, other.steps[0]?.location], [400, null]);
    const login = await scriptedLogin(disco, { redirectUri, login: 'bob' });
    let r = await req(disco.token_endpoint, {
      method: 'POST', basic: ['portcullis', 'portcullis-secret'],
      form: { grant_type: 'authorization_code', code: login.code, redirect_uri: redirectUri, code_verifier: login.verifier },
    });
    const tokens = r.json || {};
    check('ES256 ID token', isJwt(tokens.id_token) && decodeJwt(tokens.id_token).header.alg === 'ES256'
      && verifyJwt(tokens.id_token, jwks), r.text);
    eq('ID token ttl', isJwt(tokens.id_token) && (decodeJwt(tokens.id_token).payload.exp - decodeJwt(tokens.id_token).payload.iat), 120);
    eq('access token ttl', tokens.expires_in, 2);
    for (let i = 1; i <= 2; i += 1) {
      r = await req(disco.token_endpoint, {
        method: 'POST', basic: ['portcullis', 'portcullis-secret'], form: { grant_type: 'refresh_token', refresh_token: tokens.refresh_token },
      });
      eq(`--refresh reuse #${i}: same refresh token back`, [r.status, r.json?.refresh_token], [200, tokens.refresh_token]);
    }
    r = await req(disco.introspection_endpoint, { method: 'POST', basic: ['rs', 'rs-secret'], form: { token: tokens.access_token } });
    eq('fresh token active', r.json?.active, true);
    await new Promise((res) => { setTimeout(res, 3100); });
    r = await req(disco.introspection_endpoint, { method: 'POST', basic: ['rs', 'rs-secret'], form: { token: tokens.access_token } });
    eq('expired token inactive', r.json?.active, false);
  } finally {
    await idp.stop();
  }

  section = 'standard --refresh off';
  const off = await startIdp(['--refresh', 'off']);
  try {
    const disco = (await req(`${off.base}/.well-known/openid-configuration`)).json;
    const redirectUri = 'http://127.0.0.1:45683/oauth2/callback';
    const login = await scriptedLogin(disco, { redirectUri });
    const r = await req(disco.token_endpoint, {
      method: 'POST', basic: ['portcullis', 'portcullis-secret'],
      form: { grant_type: 'authorization_code', code: login.code, redirect_uri: redirectUri, code_verifier: login.verifier },
    });
    check('no refresh token', r.status === 200 && !('refresh_token' in r.json), r.text);
  } finally {
    await off.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// auth0 profile
// ---------------------------------------------------------------------------------------------

async function auth0Profile(keysDir) {
  section = 'auth0';
  const idp = await startIdp(['--profile', 'auth0', '--keys-dir', keysDir]);
  try {
    const { ready } = idp;
    const iss = ready.issuer;
    check('ready line shape', /^\{"ready":true,"issuer":"http:\/\/127\.0\.0\.1:\d+\/","port":\d+\}$/.test(idp.readyLine), idp.readyLine);
    eq('issuer has a trailing slash', iss, `${idp.base}/`);

    const d = await req(`${idp.base}/.well-known/openid-configuration`);
    const disco = d.json;
    eq('discovery issuer', disco.issuer, iss);
    for (const [k, v] of Object.entries({
      authorization_endpoint: 'authorize', token_endpoint: 'oauth/token', userinfo_endpoint: 'userinfo',
      jwks_uri: '.well-known/jwks.json', revocation_endpoint: 'oauth/revoke',
    })) eq(`discovery ${k}`, disco[k], iss + v);
    check('no introspection_endpoint', !('introspection_endpoint' in disco));
    check('no end_session_endpoint', !('end_session_endpoint' in disco));
    check('no authorization_response_iss_parameter_supported', !('authorization_response_iss_parameter_supported' in disco));
    const jwks = (await req(disco.jwks_uri)).json;
    check('jwks at /.well-known/jwks.json', jwks?.keys?.length === 2);
    eq('no introspection route', (await req(`${idp.base}/token/introspection`, { method: 'POST', form: { token: 'x' } })).status, 404);

    // client credentials with audience
    const cc = (client, secret, extra, asJson) => req(disco.token_endpoint, asJson ? {
      method: 'POST', json: { grant_type: 'client_credentials', client_id: client, client_secret: secret, ...extra },
    } : {
      method: 'POST', basic: [client, secret], form: { grant_type: 'client_credentials', ...extra },
    });
    let r = await cc('machine', 'machine-secret', { audience: API, scope: 'read:items write:items' });
    eq('cc+audience status', r.status, 200);
    const at = r.json?.access_token;
    if (check('cc+audience gives a JWT', isJwt(at), r.text)) {
      const { header, payload } = decodeJwt(at);
      eq('header typ JWT', header.typ, 'JWT');
      eq('header alg', header.alg, 'RS256');
      check('signed by served JWKS', verifyJwt(at, jwks));
      eq('iss with slash', payload.iss, iss);
      eq('sub', payload.sub, 'machine@clients');
      eq('aud is a string', payload.aud, API);
      eq('azp', payload.azp, 'machine');
      eq('gty', payload.gty, 'client-credentials');
      eq('scope', payload.scope, 'read:items write:items');
      eq('permissions', payload.permissions, ['read:items', 'write:items']);
      check('no jti, no client_id', !('jti' in payload) && !('client_id' in payload), payload);
      eq('lifetime 24h', payload.exp - payload.iat, 86400);
    }
    r = await cc('machine-ro', 'machine-ro-secret', { audience: API, scope: 'read:items' }, true);
    eq('JSON body + client_secret in body', r.json && decodeJwt(r.json.access_token).payload.permissions, ['read:items']);
    r = await cc('machine-ro', 'machine-ro-secret', { audience: API });
    eq('cc without scope gets the granted ones', r.json && decodeJwt(r.json.access_token).payload.scope, 'read:items');
    r = await cc('machine', 'machine-secret', { scope: 'read:items' });
    eq('cc without audience', [r.status, r.json?.error], [403, 'access_denied']);
    r = await cc('machine', 'wrong', { audience: API });
    eq('bad client secret', [r.status, r.json?.error], [401, 'access_denied']);

    // login with audience: JWT access token with aud [API, userinfo]
    const redirectUri = 'http://127.0.0.1:45679/oauth2/callback';
    const login = await scriptedLogin(disco, {
      redirectUri, scope: 'openid email profile offline_access read:items write:items', extra: { audience: API },
    });
    check('login code', typeof login.code === 'string', [login.error, login.steps.map((s) => [s.status, s.location])]);
    check('resume at /authorize/:uid', login.steps[2]?.location?.startsWith(`${iss}authorize/`), login.steps[2]?.location);
    check('no iss in the authorization response', login.callback && !login.callback.searchParams.has('iss'), login.callback?.href);
    eq('state', login.callback?.searchParams.get('state'), login.state);
    const exchange = (code, verifier) => req(disco.token_endpoint, {
      method: 'POST', basic: ['portcullis', 'portcullis-secret'],
      form: { grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier },
    });
    r = await exchange(login.code, login.verifier);
    const tokens = r.json || {};
    if (check('user access token is a JWT', isJwt(tokens.access_token), r.text)) {
      const { header, payload } = decodeJwt(tokens.access_token);
      check('user JWT signed', verifyJwt(tokens.access_token, jwks));
      eq('user JWT typ', header.typ, 'JWT');
      eq('user JWT aud array', payload.aud, [API, `${iss}userinfo`]);
      eq('user JWT sub', payload.sub, 'auth0|alice');
      eq('user JWT azp', payload.azp, 'portcullis');
      eq('user JWT roles claim', payload[ROLES], ['staff', 'admins']);
      eq('user JWT permissions', payload.permissions, ['read:items', 'write:items']);
      check('user JWT scope', payload.scope.split(' ').includes('openid') && payload.scope.includes('read:items'), payload.scope);
      check('user JWT: no jti, no client_id', !('jti' in payload) && !('client_id' in payload));
    }
    if (check('id token', isJwt(tokens.id_token))) {
      const { payload } = decodeJwt(tokens.id_token);
      check('ID token signed', verifyJwt(tokens.id_token, jwks));
      eq('ID token claims', [payload.iss, payload.sub, payload.aud, payload.nonce, payload.email, payload[ROLES]],
        [iss, 'auth0|alice', 'portcullis', login.nonce, 'alice@example.com', ['staff', 'admins']]);
      check('ID token updated_at is an ISO string', typeof payload.updated_at === 'string'
        && !Number.isNaN(Date.parse(payload.updated_at)), payload.updated_at);
      eq('ID token lifetime 10h', payload.exp - payload.iat, 36000);
    }
    r = await req(disco.userinfo_endpoint, { bearer: tokens.access_token });
    eq('userinfo with the JWT', r.json && [r.json.sub, r.json.email, r.json.updated_at], ['auth0|alice', 'alice@example.com', '2023-11-14T22:13:20.000Z']);

    // refresh: rotation with reuse detection, invalid_grant as 403
    const refresh = (rt) => req(disco.token_endpoint, {
      method: 'POST', basic: ['portcullis', 'portcullis-secret'], form: { grant_type: 'refresh_token', refresh_token: rt },
    });
    r = await refresh(tokens.refresh_token);
    check('refresh rotates', r.status === 200 && r.json.refresh_token && r.json.refresh_token !== tokens.refresh_token, r.text);
    check('refreshed access token is still a JWT', isJwt(r.json?.access_token));
    r = await refresh(tokens.refresh_token);
    eq('reused refresh token -> 403', [r.status, r.json?.error], [403, 'invalid_grant']);
    r = await exchange(login.code, login.verifier);
    eq('code replay: invalid_grant is 403', [r.status, r.json?.error], [403, 'invalid_grant']);

    // login without audience: opaque token, good at /userinfo only
    const plain = await scriptedLogin(disco, { redirectUri, jar: login.jar, scope: 'openid email profile' });
    eq('SSO: no login form the second time', plain.steps.length, 1);
    r = await exchange(plain.code, plain.verifier);
    const opaque = r.json?.access_token;
    check('no audience -> opaque access token', typeof opaque === 'string' && !isJwt(opaque), r.text);
    r = await req(disco.userinfo_endpoint, { bearer: opaque });
    eq('userinfo with the opaque token', r.json && [r.json.sub, r.json.email, r.json[ROLES]], ['auth0|alice', 'alice@example.com', ['staff', 'admins']]);
    r = await req(disco.userinfo_endpoint, { bearer: 'garbage' });
    eq('userinfo with garbage', r.status, 401);

    // /v2/logout
    const returnTo = 'http://127.0.0.1:45679/bye';
    r = await req(`${iss}v2/logout?${new URLSearchParams({ client_id: 'portcullis', returnTo })}`, { jar: login.jar });
    eq('/v2/logout redirects to returnTo', [r.status, r.location], [302, returnTo]);
    const after = await scriptedLogin(disco, { redirectUri, jar: login.jar });
    check('after /v2/logout the login form is back', after.steps[0]?.location?.startsWith('/interaction/'), after.steps[0]?.location);
    r = await req(`${iss}v2/logout?${new URLSearchParams({ client_id: 'portcullis', returnTo: 'https://evil.example/' })}`);
    eq('/v2/logout refuses a foreign returnTo', r.status, 400);

    r = await req(`${idp.base}/__test/counts`);
    const c = r.json || {};
    check('counts', c.discovery === 1 && c.jwks === 1 && c.token >= 8 && c.userinfo === 3 && c.logout === 2
      && c.introspection === 0 && c.paths?.['/oauth/token'] === c.token, c);
    check('no stray stdout', idp.extraStdout().length === 0, idp.extraStdout());
  } finally {
    await idp.stop();
  }

  section = 'auth0 --auth0-no-rotate';
  const nr = await startIdp(['--profile', 'auth0', '--auth0-no-rotate', '--keys-dir', keysDir]);
  try {
    const disco = (await req(`${nr.base}/.well-known/openid-configuration`)).json;
    const redirectUri = 'http://127.0.0.1:45680/oauth2/callback';
    const login = await scriptedLogin(disco, { redirectUri, login: 'bob', scope: 'openid email offline_access' });
    let r = await req(disco.token_endpoint, {
      method: 'POST', basic: ['portcullis', 'portcullis-secret'],
      form: { grant_type: 'authorization_code', code: login.code, redirect_uri: redirectUri, code_verifier: login.verifier },
    });
    const rt = r.json?.refresh_token;
    check('refresh token issued', typeof rt === 'string', r.text);
    for (let i = 1; i <= 2; i += 1) {
      r = await req(disco.token_endpoint, {
        method: 'POST', basic: ['portcullis', 'portcullis-secret'], form: { grant_type: 'refresh_token', refresh_token: rt },
      });
      check(`refresh #${i}: access token, no refresh_token`, r.status === 200 && r.json.access_token && !('refresh_token' in r.json), r.text);
    }
  } finally {
    await nr.stop();
  }
}

// ---------------------------------------------------------------------------------------------

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'portcullis-idp-selftest-'));
let crashed = false;
try {
  await standardProfile(path.join(tmp, 'standard-keys'));
  await standardOptions();
  await auth0Profile(path.join(tmp, 'auth0-keys'));
} catch (err) {
  crashed = true;
  failed += 1;
  console.log(`FAIL ${section}: crashed: ${err.stack || err}`);
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed || crashed ? 1 : 0);
