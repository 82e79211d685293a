#!/usr/bin/env node
// The dashboard's login in Debian's Chromium against a real lockstep-server with read auth
// required: the page loads without a credential, reads are 401, a viewer token traded at
// POST /api/login gives an HttpOnly, SameSite=Strict cookie that page scripts cannot read, reads
// and the WebSocket then work by that cookie alone, and logout ends it.
//
//   node e2e/login.e2e.mjs          LOCKSTEP_SERVER_BIN (default ../target/debug/lockstep-server)
//   CHROMIUM=/path/to/chromium      another browser binary (default /usr/bin/chromium)

import { execFileSync, spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const dashboardDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const bin = resolve(dashboardDir, process.env.LOCKSTEP_SERVER_BIN ?? '../target/debug/lockstep-server');

function check(cond, msg) {
  if (!cond) throw new Error(`login e2e: ${msg}`);
}

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function waitFor(what, fn, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function main() {
  check(existsSync(bin), `${bin} does not exist (cargo build -p lockstep-server)`);
  const workDir = mkdtempSync(join(tmpdir(), 'lockstep-login-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  // Only what the server needs: nothing from the caller's environment.
  const env = {
    PATH: process.env.PATH ?? '',
    PORT: String(port),
    DATABASE_URL: `sqlite://${join(workDir, 'lockstep.db')}`,
    LOCKSTEP_DATA_DIR: join(workDir, 'data'),
    LOCKSTEP_READ_AUTH: 'required',
    LOCKSTEP_DEVICE_AUTH: 'required',
  };
  const out = execFileSync(bin, ['token', 'create', '--role', 'viewer', '--label', 'browser test'], { env, cwd: workDir });
  const token = out.toString().trim().split('\n').pop();
  check(token.startsWith('lst_'), `the token is the last line of stdout: ${out}`);

  const log = join(workDir, 'server.log');
  const server = spawn(bin, [], { env, cwd: workDir, stdio: ['ignore', 'pipe', 'pipe'] });
  const sink = createWriteStream(log);
  server.stdout.pipe(sink);
  server.stderr.pipe(sink);
  let browser;
  try {
    await waitFor('the server', async () => (await fetch(`${base}/status`)).ok);
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-quic'],
    });
    const context = await browser.newContext();
    const page = await context.newPage();
    const res = await page.goto(`${base}/`);
    check(res.ok(), `the page loads without a credential (${res.status()})`);

    const call = (path, init) =>
      page.evaluate(async ([p, i]) => {
        const r = await fetch(p, i);
        return { status: r.status, body: await r.text() };
      }, [path, init ?? {}]);

    let s = await call('/api/session');
    check(JSON.parse(s.body).authenticated === false && JSON.parse(s.body).read_auth === 'required', s.body);
    check((await call('/api/vehicles')).status === 401, 'reads need a credential');
    const bad = await call('/api/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: 'lst_000000000000_00' }) });
    check(bad.status === 401, `a bad token is 401 (${bad.status})`);
    const ok = await call('/api/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) });
    check(ok.status === 204, `login: ${ok.status} ${ok.body}`);

    const cookie = (await context.cookies(base)).find((c) => c.name === 'lockstep_session');
    check(cookie && cookie.httpOnly && cookie.sameSite === 'Strict' && cookie.path === '/', `cookie attributes: ${JSON.stringify(cookie)}`);
    check(!(await page.evaluate(() => document.cookie)).includes('lockstep_session'), 'page scripts cannot read the session');
    s = await call('/api/session');
    check(JSON.parse(s.body).role === 'viewer', s.body);
    check((await call('/api/vehicles')).status === 200, 'reads work by the cookie');
    const first = await page.evaluate(
      (url) =>
        new Promise((res, rej) => {
          const ws = new WebSocket(url);
          ws.onmessage = (m) => {
            res(JSON.parse(m.data).type);
            ws.close();
          };
          ws.onerror = () => rej(new Error('the WebSocket was refused'));
        }),
      `ws://127.0.0.1:${port}/ws`,
    );
    check(first === 'history', `the WebSocket opens by the cookie (${first})`);

    check((await call('/api/logout', { method: 'POST' })).status === 204, 'logout');
    check((await call('/api/vehicles')).status === 401, 'reads need a credential again after logout');
    console.log('login e2e: ok');
  } catch (e) {
    console.error(`${e.message}\n---- server log ----\n${readFileSync(log, 'utf8')}`);
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close();
    server.kill('SIGTERM');
    await new Promise((r) => server.on('exit', r));
    rmSync(workDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
