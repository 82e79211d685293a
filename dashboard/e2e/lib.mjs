// Shared pieces of the browser tests: servers in a temp dir on a free port, a Chromium page whose
// console errors and page errors fail the test, condition waits with deadlines, and readers of
// what a person sees (visible text, canvas pixels).

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const dashboardDir = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const STEP_TIMEOUT = Number(process.env.E2E_STEP_TIMEOUT_MS ?? 30_000);

export function step(msg) {
  console.log(`[e2e ${new Date().toISOString().slice(11, 19)}] ${msg}`);
}

export async function freePort() {
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

/** Polls `fn` until it returns something truthy; throws after the deadline with the last error. */
export async function waitFor(what, fn, timeoutMs = STEP_TIMEOUT, everyMs = 100) {
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

export function expect(cond, message) {
  if (!cond) throw new Error(message);
}

/**
 * The `--target` argument of a test script: `real` (default) or, only where `allowMock`, `mock`.
 * Deliberately not an environment variable, so nothing in the environment can swap the server.
 */
export function targetFromArgs({ allowMock }) {
  const i = process.argv.indexOf('--target');
  const target = i >= 0 ? process.argv[i + 1] : 'real';
  if (target !== 'real' && !(allowMock && target === 'mock')) {
    throw new Error(`--target ${target}: this test runs against ${allowMock ? '`real` or `mock`' : 'the real server only'}`);
  }
  return target;
}

function spawnLogged(cmd, args, { cwd, env, logPath }) {
  const out = createWriteStream(logPath);
  const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(out);
  child.stderr.pipe(out);
  child.exited = new Promise((res) => child.on('exit', (code, signal) => res({ code, signal })));
  child.logPath = logPath;
  return child;
}

/** The real lockstep-server with a fresh SQLite database in `workDir`; `extraEnv` adds settings. */
export function startRealServer(port, workDir, { logName = 'server.log', extraEnv = {} } = {}) {
  const cmd = resolve(dashboardDir, process.env.LOCKSTEP_SERVER_BIN ?? '../target/debug/lockstep-server');
  const edge = resolve(dashboardDir, process.env.LOCKSTEP_EDGE_BIN ?? '../target/debug/lockstep-edge');
  for (const [name, p] of [['LOCKSTEP_SERVER_BIN', cmd], ['LOCKSTEP_EDGE_BIN', edge]]) {
    if (!existsSync(p)) throw new Error(`${name}: ${p} does not exist (build it with \`cargo build -p lockstep-server -p lockstep-edge\`)`);
  }
  const logPath = join(workDir, logName);
  step(`starting the real server ${cmd} on port ${port} (log ${logPath})`);
  return spawnLogged(cmd, [], {
    cwd: workDir,
    logPath,
    env: {
      ...process.env,
      PORT: String(port),
      DATABASE_URL: `sqlite://${join(workDir, 'lockstep.db')}`,
      LOCKSTEP_DATA_DIR: join(workDir, 'data'),
      LOCKSTEP_EDGE_BIN: edge,
      RUST_LOG: process.env.RUST_LOG ?? 'info',
      ...extraEnv,
    },
  });
}

/** scripts/mock-server.mjs serving dist/ (for features the real server does not have yet). */
export function startMockServer(port, workDir, args = [], { logName = 'mock.log' } = {}) {
  if (!existsSync(join(dashboardDir, 'dist', 'index.html'))) throw new Error('dist/ is missing: run `npm run build` first');
  const logPath = join(workDir, logName);
  step(`starting the MOCK server on port ${port} ${args.join(' ')} (log ${logPath})`);
  return spawnLogged(process.execPath, [join(dashboardDir, 'scripts', 'mock-server.mjs'), '--port', String(port), ...args], {
    cwd: workDir,
    logPath,
    env: { ...process.env },
  });
}

export async function stopServer(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const done = await Promise.race([child.exited, new Promise((r) => setTimeout(() => r(null), 10_000))]);
  if (!done) child.kill('SIGKILL');
}

export async function waitUp(server, base) {
  let exited = null;
  server.exited.then((e) => (exited = e));
  await waitFor(
    `the server to answer GET ${base}/status`,
    async () => {
      if (exited) throw new Error(`server exited early (${JSON.stringify(exited)})`);
      return (await fetch(`${base}/status`)).ok;
    },
    60_000,
    200,
  );
}

/**
 * Chromium with a page whose console errors and uncaught page errors are collected; `check()`
 * throws if any arrived. `allow(re)` tolerates console errors matching `re` until the returned
 * function is called (for steps that provoke them on purpose, e.g. a server restart).
 */
export async function openBrowser() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-quic'],
  });
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  page.setDefaultTimeout(STEP_TIMEOUT);
  const errors = [];
  const allowed = new Set();
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const url = m.location()?.url;
    const text = url ? `${m.text()} [${url}]` : m.text();
    if ([...allowed].some((re) => re.test(text))) {
      step(`(expected console error: ${text})`);
      return;
    }
    errors.push(`console error: ${text}`);
  });
  return {
    browser,
    page,
    errors,
    allow(re) {
      allowed.add(re);
      return () => allowed.delete(re);
    },
    check() {
      if (errors.length) throw new Error(`the page reported errors:\n  ${errors.join('\n  ')}`);
    },
  };
}

/** The visible text of the first element matching `selector` ('' when there is none). */
export async function textOf(page, selector) {
  const el = await page.$(selector);
  return el ? (await el.innerText()).trim() : '';
}

/**
 * Pixels of every canvas inside `selector`: a cheap hash (changes when anything drawn changes),
 * the number of pixels that are not background, and, per colour in `colors` ('#rrggbb'), how
 * many pixels are within `tolerance` of it per channel.
 */
export async function canvasPixels(page, selector, colors = [], tolerance = 40) {
  return page.$eval(
    selector,
    (root, { colors, tolerance }) => {
      const rgb = colors.map((c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)));
      let hash = 2166136261;
      let inked = 0;
      const matches = colors.map(() => 0);
      for (const canvas of root.querySelectorAll('canvas')) {
        if (!canvas.width || !canvas.height) continue;
        const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 0; i < d.length; i += 4) {
          const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
          hash = Math.imul(hash ^ (r | (g << 8) | (b << 16) | (a << 24)), 16777619);
          if (a > 0 && !(r > 245 && g > 245 && b > 245)) inked += 1;
          if (a < 200) continue;
          rgb.forEach(([cr, cg, cb], k) => {
            if (Math.abs(r - cr) <= tolerance && Math.abs(g - cg) <= tolerance && Math.abs(b - cb) <= tolerance) matches[k] += 1;
          });
        }
      }
      return { hash: hash >>> 0, inked, matches };
    },
    { colors, tolerance },
  );
}

/** A temp dir, removed at the end unless E2E_KEEP_TMP is set. */
export function tempDir() {
  const dir = mkdtempSync(join(tmpdir(), 'lockstep-e2e-'));
  return { dir, remove: () => (process.env.E2E_KEEP_TMP ? step(`kept ${dir}`) : rmSync(dir, { recursive: true, force: true })) };
}

export function tailOf(path, lines = 40) {
  return existsSync(path) ? readFileSync(path, 'utf8').split('\n').slice(-lines).join('\n') : '';
}

/** Colours the page gives charted vehicles, in order (src/format.ts VEHICLE_COLORS). */
export const VEHICLE_COLORS = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#000000', '#882255'];

/** Runs `body(ctx)` with a temp dir and reports PASS/FAIL with the server log on failure. */
export async function run(name, body) {
  const tmp = tempDir();
  const ctx = { workDir: tmp.dir, servers: [], browser: null };
  try {
    await body(ctx);
    step(`${name}: PASS`);
  } catch (e) {
    console.error(`[e2e] ${name}: FAIL: ${e.message}`);
    for (const s of ctx.servers) if (s?.logPath) console.error(`[e2e] last lines of ${s.logPath}:\n${tailOf(s.logPath)}`);
    process.exitCode = 1;
  } finally {
    if (ctx.browser) await ctx.browser.close().catch(() => {});
    for (const s of ctx.servers) await stopServer(s);
    tmp.remove();
  }
}
