#!/usr/bin/env node
// End-to-end test of the dashboard in Debian's Chromium (driven by playwright-core) against a
// real lockstep-server: open the page, start the logger with the button, see chart points and
// statistics arrive, stop the logger, save e2e/screenshot.png.
//
//   npm run e2e                     real server: LOCKSTEP_SERVER_BIN (default ../target/debug/lockstep-server)
//                                   with LOCKSTEP_EDGE_BIN (default ../target/debug/lockstep-edge)
//   E2E_TARGET=mock npm run e2e     the same steps against scripts/mock-server.mjs
//   E2E_PAGE=proxy npm run e2e      serve the page with `vite preview` (proxying /ws, /api, /logger,
//                                   /status to the server) instead of from the server's own `/` —
//                                   for a server binary built before the dashboard route was wired
//   CHROMIUM=/path/to/chromium      another browser binary (default /usr/bin/chromium)
//
// Every wait is on a condition with a deadline; nothing sleeps for a fixed time.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, createWriteStream, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const dashboardDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const target = process.env.E2E_TARGET ?? 'real';
const STEP_TIMEOUT = Number(process.env.E2E_STEP_TIMEOUT_MS ?? 30_000);

function step(msg) {
  console.log(`[e2e ${new Date().toISOString().slice(11, 19)}] ${msg}`);
}

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.unref();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function waitFor(what, fn, timeoutMs = STEP_TIMEOUT, everyMs = 100) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function startServer(port, workDir, logName = 'server.log') {
  const logPath = join(workDir, logName);
  const out = createWriteStream(logPath);
  let cmd, args, env;
  if (target === 'mock') {
    if (!existsSync(join(dashboardDir, 'dist', 'index.html'))) throw new Error('dist/ is missing: run `npm run build` first');
    cmd = process.execPath;
    args = [join(dashboardDir, 'scripts', 'mock-server.mjs'), '--port', String(port)];
    env = { ...process.env };
  } else {
    cmd = resolve(dashboardDir, process.env.LOCKSTEP_SERVER_BIN ?? '../target/debug/lockstep-server');
    const edge = resolve(dashboardDir, process.env.LOCKSTEP_EDGE_BIN ?? '../target/debug/lockstep-edge');
    for (const [name, p] of [['LOCKSTEP_SERVER_BIN', cmd], ['LOCKSTEP_EDGE_BIN', edge]]) {
      if (!existsSync(p)) throw new Error(`${name}: ${p} does not exist (build it with \`cargo build -p lockstep-server -p lockstep-edge\`)`);
    }
    args = [];
    env = {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: `sqlite://${join(workDir, 'lockstep.db')}`,
      LOCKSTEP_DATA_DIR: join(workDir, 'data'),
      LOCKSTEP_EDGE_BIN: edge,
      RUST_LOG: process.env.RUST_LOG ?? 'info',
    };
  }
  step(`starting ${target} server: ${cmd} ${args.join(' ')} (port ${port}, log ${logPath})`);
  const child = spawn(cmd, args, { cwd: workDir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  child.exited = new Promise((res) => child.on('exit', (code, signal) => res({ code, signal })));
  child.logPath = logPath;
  return child;
}

/** `vite preview` of dist/ on its own port, proxying the API to the server (see vite.config.ts). */
function startPreview(port, serverBase, workDir) {
  const logPath = join(workDir, 'preview.log');
  const out = createWriteStream(logPath);
  const vite = join(dashboardDir, 'node_modules', 'vite', 'bin', 'vite.js');
  step(`serving the page with vite preview on port ${port}, proxying to ${serverBase}`);
  const child = spawn(process.execPath, [vite, 'preview', '--port', String(port), '--strictPort', '--host', '127.0.0.1'], {
    cwd: dashboardDir,
    env: { ...process.env, LOCKSTEP_DEV_TARGET: serverBase },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  child.exited = new Promise((res) => child.on('exit', (code, signal) => res({ code, signal })));
  child.logPath = logPath;
  return child;
}

async function stopServer(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const done = await Promise.race([child.exited, new Promise((r) => setTimeout(() => r(null), 10_000))]);
  if (!done) child.kill('SIGKILL');
}

async function main() {
  const workDir = mkdtempSync(join(tmpdir(), 'lockstep-e2e-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  let pageBase = base;
  let preview;
  let server;
  let browser;
  const pageErrors = [];
  const consoleErrors = [];
  try {
    server = startServer(port, workDir);
    let exited = null;
    server.exited.then((e) => (exited = e));
    await waitFor('the server to answer GET /status', async () => {
      if (exited) throw new Error(`server exited early (${JSON.stringify(exited)})`);
      const r = await fetch(`${base}/status`);
      return r.ok;
    }, 60_000, 200);
    step('server is up');
    if (process.env.E2E_PAGE === 'proxy') {
      if (!existsSync(join(dashboardDir, 'dist', 'index.html'))) throw new Error('dist/ is missing: run `npm run build` first');
      const previewPort = await freePort();
      preview = startPreview(previewPort, base, workDir);
      pageBase = `http://127.0.0.1:${previewPort}`;
      await waitFor('vite preview to answer', async () => (await fetch(`${pageBase}/`)).ok, 30_000, 200);
    }

    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-quic'],
    });
    const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.setDefaultTimeout(STEP_TIMEOUT);

    const res = await page.goto(`${pageBase}/`);
    if (!res || !res.ok()) throw new Error(`GET / answered ${res && res.status()}`);
    const title = await page.title();
    if (!/Lockstep/.test(title)) throw new Error(`unexpected page title ${JSON.stringify(title)} (is the real dashboard embedded, not the placeholder?)`);
    await page.waitForSelector('[data-testid=connection][data-phase=connected]');
    step('page connected over /ws');
    await page.waitForSelector('[data-testid=logger-state][data-running=false], [data-testid=logger-state]');

    // Start a small simulated fleet with the button.
    await page.fill('[data-testid=logger-vehicles]', process.env.E2E_VEHICLES ?? '3');
    await page.fill('[data-testid=logger-rate]', String(process.env.E2E_RATE ?? 10));
    await page.click('[data-testid=logger-start]');
    step('clicked "Start logger"');
    await page.waitForSelector('[data-testid=logger-state][data-running=true]');
    step('logger reports running');

    // Charts receive points (the speed chart of the charted vehicle, and the track plot).
    const chartPoints = (sig) => page.$eval(`.chart[data-signal=${sig}]`, (el) => ({
      points: Number(el.dataset.points),
      transmitted: Number(el.dataset.transmitted ?? 0),
      reconstructed: Number(el.dataset.reconstructed ?? 0),
    }));
    const first = await waitFor('the speed chart to show 5 points', async () => {
      const c = await chartPoints('speed');
      return c.points >= 5 ? c : null;
    });
    step(`speed chart: ${JSON.stringify(first)}`);
    await waitFor('the speed chart to grow', async () => (await chartPoints('speed')).points > first.points);
    const pos = await waitFor('the position track to show points', async () => {
      const c = await chartPoints('position');
      return c.points >= 2 ? c : null;
    });
    step(`position track: ${pos.points} points`);
    const vehiclesShown = await page.$$eval('[data-testid=vehicles] tbody tr', (rows) => rows.length);
    step(`vehicle table: ${vehiclesShown} rows`);
    if (vehiclesShown < 1) throw new Error('no vehicles listed');

    // Statistics arrive and change.
    const stats = () => page.$eval('[data-testid=stats]', (el) => ({ total: Number(el.dataset.total), updates: Number(el.dataset.updates) }));
    const s1 = await waitFor('compression statistics', async () => {
      const s = await stats();
      return s.total > 0 ? s : null;
    });
    const s2 = await waitFor('compression statistics to change', async () => {
      const s = await stats();
      return s.total > s1.total ? s : null;
    });
    step(`statistics: fields ${s1.total} -> ${s2.total} (${s2.updates} updates)`);
    // Let the charts fill a little more so the screenshot shows a trace, not a handful of dots.
    const minPoints = Number(process.env.E2E_MIN_POINTS ?? 200);
    const rate = Number(process.env.E2E_RATE ?? 10);
    await waitFor(
      `the speed chart to reach ${minPoints} points`,
      async () => (await chartPoints('speed')).points >= minPoints,
      Math.max(STEP_TIMEOUT, (minPoints / rate) * 1000 + 20_000),
    );
    const speed = await chartPoints('speed');
    step(`speed chart now: ${JSON.stringify(speed)}`);
    if (speed.transmitted < 1) throw new Error('no transmitted points on the speed chart');

    // Stop.
    await page.click('[data-testid=logger-stop]');
    step('clicked "Stop logger"');
    await page.waitForSelector('[data-testid=logger-state][data-running=false]');
    step('logger reports stopped');
    await waitFor('a log message in the log panel', async () => Number(await page.$eval('[data-testid=log]', (el) => el.dataset.count)) > 0);

    const shot = join(dashboardDir, 'e2e', 'screenshot.png');
    await page.screenshot({ path: shot, fullPage: true });
    step(`screenshot saved to ${shot}`);

    // A fresh page gets the recent readings as `history` on connect and charts them at once.
    await page.reload();
    await page.waitForSelector('[data-testid=connection][data-phase=connected]');
    const history = await waitFor('history on reconnect', async () => {
      const h = await page.$eval('[data-testid=summary]', (el) => el.dataset.history);
      return h !== '' && h !== undefined ? Number(h) : null;
    });
    if (history < 1) throw new Error('the reloaded page got an empty history');
    const afterReload = await waitFor('charts drawn from history', async () => {
      const c = await chartPoints('speed');
      return c.points > 0 ? c : null;
    });
    step(`reloaded page: history of ${history} readings, speed chart ${afterReload.points} points`);

    // Reconnect: stop the server, the page says so, start it again on the same port (same
    // database), the page reconnects by itself.
    await stopServer(server);
    await page.waitForSelector('[data-testid=connection][data-phase=reconnecting]');
    step('server stopped; page shows "reconnecting"');
    server = startServer(port, workDir, 'server-restarted.log');
    await page.waitForSelector('[data-testid=connection][data-phase=connected]');
    step('server restarted; page reconnected by itself');

    if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join(' | ')}`);
    if (consoleErrors.length) step(`console errors (not fatal): ${consoleErrors.join(' | ')}`);
    step('PASS');
  } catch (e) {
    console.error(`[e2e] FAIL: ${e.message}`);
    if (pageErrors.length) console.error(`[e2e] page errors: ${pageErrors.join(' | ')}`);
    if (consoleErrors.length) console.error(`[e2e] console errors: ${consoleErrors.join(' | ')}`);
    if (server && existsSync(server.logPath)) {
      const log = readFileSync(server.logPath, 'utf8').split('\n').slice(-40).join('\n');
      console.error(`[e2e] last server log lines:\n${log}`);
    }
    process.exitCode = 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
    await stopServer(preview);
    await stopServer(server);
    if (!process.env.E2E_KEEP_TMP) rmSync(workDir, { recursive: true, force: true });
  }
}

await main();
