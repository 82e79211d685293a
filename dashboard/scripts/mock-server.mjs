#!/usr/bin/env node
// A stand-in for lockstep-server that speaks the dashboard's side of the contract: it serves
// dist/, answers /status, the query API (/api/vehicles[/{vin}[/telemetry|/stats]], /api/stats),
// the session API (/api/session, /api/login, /api/logout) and /logger/*, and on /ws sends
// history, the recent log lines, telemetry, compression_stats, log and logger messages made up
// by a small simulator. For developing the page, and for the browser tests of features the real
// server does not have yet (e2e/history.e2e.mjs, e2e/login.e2e.mjs). The main browser test
// (e2e/dashboard.e2e.mjs) never uses it.
//
//   node scripts/mock-server.mjs [--port 8001] [--vehicles N --rate HZ] [--seed-minutes M]
//        [--read-auth] [--tokens viewer=viewer-token,operator=operator-token,admin=admin-token]
//
//   --vehicles      starts a simulated logger at once (e.g. 50 to look at a busy page)
//   --seed-minutes  stores M minutes of past readings (1 Hz, 2 vehicles) for the history view
//   --read-auth     reads need a session: /ws and /api/* answer 401 until POST /api/login

import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, '..', 'dist');
const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PORT ?? '8001' },
    vehicles: { type: 'string' },
    rate: { type: 'string', default: '5' },
    'seed-minutes': { type: 'string' },
    'read-auth': { type: 'boolean', default: false },
    tokens: { type: 'string', default: 'viewer=viewer-token,operator=operator-token,admin=admin-token' },
  },
});
const readAuth = args['read-auth'];
/** token -> role */
const tokens = new Map(
  args.tokens
    .split(',')
    .map((kv) => kv.split('='))
    .filter(([role, tok]) => role && tok)
    .map(([role, tok]) => [tok, role]),
);
/** session id -> role */
const sessions = new Map();
const RECENT_LOG = 50;
const recentLog = [];
/** Readings kept per vehicle for the query API. */
const STORE_CAP = 200_000;

const SIGNALS = ['speed', 'battery', 'power', 'heading', 'latitude', 'longitude', 'altitude'];
// Tolerances in the units of the default catalog (position: ~5 m in degrees).
const TOL = { speed: 1, battery: 0.3, power: 0.002, heading: 2, latitude: 0.000045, longitude: 0.00007, altitude: 1 };
const KEYFRAME_EVERY = 50;

const started = Date.now();
const history = []; // last 100 readings, oldest first
const vehicles = new Map(); // vin -> { sim, summary, stats }
const totals = { total: 0, transmitted: 0, skipped: 0, bytes: 0 };
let statsDirty = false;
let logger = { running: false, pid: null, started_at_ms: null, last_exit_code: null, last_run_s: null };
let loggerTimer = null;
const clients = new Set(); // { ws, vins: Set|null }

function vinFor(i) {
  // 17 characters from the ISO 3779 alphabet (no I, O, Q).
  return `LOCKSTEPMOCK${String(i + 1).padStart(5, '0')}`;
}

function newSim(i) {
  return {
    i,
    n: 0,
    seq: 0,
    session: Math.floor(Math.random() * 2 ** 48).toString(16).padStart(16, '0'),
    t: 0,
    lat: 52.37 + i * 0.01,
    lon: 4.89 + i * 0.01,
    heading: (i * 47) % 360,
    battery: 95 - i,
    alt: 10 + i,
    sent: {},
  };
}

function step(sim, dtS) {
  sim.t += dtS;
  const speed = Math.max(0, 45 + 25 * Math.sin(sim.t / 9 + sim.i) + 4 * Math.sin(sim.t * 1.3));
  sim.heading = (sim.heading + 3 * Math.sin(sim.t / 5 + sim.i) + 360) % 360;
  const d = (speed / 3.6) * dtS; // metres
  sim.lat += (d * Math.cos((sim.heading * Math.PI) / 180)) / 111_320;
  sim.lon += (d * Math.sin((sim.heading * Math.PI) / 180)) / (111_320 * Math.cos((sim.lat * Math.PI) / 180));
  const power = 0.4 * speed * (1 + 0.3 * Math.sin(sim.t / 3));
  sim.battery = Math.max(5, sim.battery - power * dtS * 0.0002);
  sim.alt += Math.sin(sim.t / 20) * 0.5;
  return { speed, battery: sim.battery, power, heading: sim.heading, latitude: sim.lat, longitude: sim.lon, altitude: sim.alt };
}

function emitReading(vin, sim, now) {
  const actual = step(sim, 1 / Number(args.rate));
  const key = sim.n % KEYFRAME_EVERY === 0;
  sim.n += 1;
  sim.seq += 1;
  const reading = { timestamp: now, vehicle_vin: vin, transmitted: [], predicted_fields: [], session_id: sim.session, seq: sim.seq };
  for (const s of SIGNALS) {
    // Predictor: hold the last transmitted value; transmit when it drifts past the tolerance.
    const prev = sim.sent[s];
    if (key || prev === undefined || Math.abs(actual[s] - prev) > TOL[s]) {
      sim.sent[s] = actual[s];
      reading.transmitted.push(s);
    } else {
      reading.predicted_fields.push(s);
    }
    reading[s] = sim.sent[s];
  }
  const v = vehicles.get(vin);
  store(v, reading);
  const tx = reading.transmitted.length;
  const bytes = 12 + tx * 3;
  v.summary.last_seen_ms = now;
  v.summary.readings += 1;
  const st = v.stats;
  st.readings += 1;
  st.fields_total += SIGNALS.length;
  st.fields_transmitted += tx;
  st.fields_skipped += SIGNALS.length - tx;
  st.bytes_received += bytes;
  st.compression_ratio = st.fields_skipped / st.fields_total;
  totals.total += SIGNALS.length;
  totals.transmitted += tx;
  totals.skipped += SIGNALS.length - tx;
  totals.bytes += bytes;
  statsDirty = true;
  history.push(reading);
  if (history.length > 100) history.shift();
  broadcast({ type: 'telemetry', data: reading }, vin);
}

function store(v, reading) {
  v.readings.push(reading);
  if (v.readings.length > STORE_CAP) v.readings.splice(0, v.readings.length - STORE_CAP);
}

function ensureVehicle(vin, i) {
  if (!vehicles.has(vin)) {
    vehicles.set(vin, {
      summary: { vin, first_seen_ms: Date.now(), last_seen_ms: Date.now(), readings: 0, model: i % 2 ? 'Twizy 80' : null, year: i % 2 ? 2014 : null },
      stats: { readings: 0, fields_total: 0, fields_transmitted: 0, fields_skipped: 0, bytes_received: 0, compression_ratio: 0 },
      readings: [],
      sessions: 0,
    });
  }
  return vehicles.get(vin);
}

/** Past readings at 1 Hz for two vehicles, ending a minute ago, so the history view has data. */
function seed(minutes) {
  const end = Date.now() - 60_000;
  for (let i = 0; i < 2; i++) {
    const vin = vinFor(100 + i);
    const v = ensureVehicle(vin, i);
    const sim = newSim(i);
    const start = end - minutes * 60_000;
    v.summary.first_seen_ms = start;
    v.sessions += 1;
    for (let t = start; t <= end; t += 1000) {
      const actual = step(sim, 1);
      const key = sim.n++ % KEYFRAME_EVERY === 0;
      const r = { timestamp: t, vehicle_vin: vin, transmitted: [] };
      for (const sig of SIGNALS) {
        const prev = sim.sent[sig];
        if (key || prev === undefined || Math.abs(actual[sig] - prev) > TOL[sig]) {
          sim.sent[sig] = actual[sig];
          r.transmitted.push(sig);
        }
        r[sig] = sim.sent[sig];
      }
      store(v, r);
      const tx = r.transmitted.length;
      v.summary.readings += 1;
      v.summary.last_seen_ms = t;
      v.stats.readings += 1;
      v.stats.fields_total += SIGNALS.length;
      v.stats.fields_transmitted += tx;
      v.stats.fields_skipped += SIGNALS.length - tx;
      v.stats.bytes_received += 12 + tx * 3;
      v.stats.compression_ratio = v.stats.fields_skipped / v.stats.fields_total;
      totals.total += SIGNALS.length;
      totals.transmitted += tx;
      totals.skipped += SIGNALS.length - tx;
      totals.bytes += 12 + tx * 3;
    }
  }
}

function broadcast(msg, vin) {
  const text = JSON.stringify(msg);
  for (const c of clients) {
    if (vin && c.vins && !c.vins.has(vin)) continue;
    if (c.ws.readyState === 1) c.ws.send(text);
  }
}

function log(level, source, message) {
  const entry = { level, source, message, timestamp: Date.now() };
  recentLog.push(entry);
  if (recentLog.length > RECENT_LOG) recentLog.shift();
  broadcast({ type: 'log', data: entry });
}

/** Fleet totals plus the vehicles `vins` names (all when null), as the bounded message does. */
function statsMessage(vins = null) {
  const per = {};
  let readings = 0;
  for (const [vin, v] of vehicles) {
    readings += v.stats.readings;
    if (!vins || vins.has(vin)) per[vin] = v.stats;
  }
  return {
    type: 'compression_stats',
    data: {
      total_readings: readings,
      fields_total: totals.total,
      transmitted_readings: totals.transmitted,
      skipped_readings: totals.skipped,
      compression_ratio: totals.total ? totals.skipped / totals.total : 0,
      bytes_received: totals.bytes,
      readings,
      vehicles: per,
    },
  };
}

setInterval(() => {
  if (!statsDirty) return;
  statsDirty = false;
  for (const c of clients) if (c.ws.readyState === 1) c.ws.send(JSON.stringify(statsMessage(c.vins)));
}, 1000).unref();

// ---- query API ---------------------------------------------------------------------------

const stamp = () => new Date().toISOString();

function fieldsOf(r) {
  let total = 0;
  for (const s of SIGNALS) if (typeof r[s] === 'number') total += 1;
  const tx = r.transmitted.filter((s) => typeof r[s] === 'number').length;
  return { total, tx };
}

function inRange(v, from, to) {
  // Readings are kept in time order: binary search the start.
  const rs = v.readings;
  let lo = 0;
  let hi = rs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (rs[mid].timestamp < from) lo = mid + 1;
    else hi = mid;
  }
  let end = lo;
  while (end < rs.length && rs[end].timestamp < to) end++;
  return rs.slice(lo, end);
}

function telemetry(v, q) {
  const from = Number(q.get('from'));
  const to = Number(q.get('to'));
  if (!Number.isFinite(from) || !Number.isFinite(to) || to <= from) return [400, { status: 'error', error: '`from` and `to` must be ms timestamps with from < to.' }];
  const rows = inRange(v, from, to);
  if (q.has('step')) {
    const stepMs = Number(q.get('step'));
    if (!(stepMs >= 1)) return [400, { status: 'error', error: '`step` must be at least 1 ms.' }];
    if ((to - from) / stepMs > 10_000) return [400, { status: 'error', error: 'At most 10000 buckets per request.' }];
    const buckets = new Map();
    for (const r of rows) {
      const t = from + Math.floor((r.timestamp - from) / stepMs) * stepMs;
      let b = buckets.get(t);
      if (!b) {
        b = { timestamp: t, count: 0, acc: {} };
        buckets.set(t, b);
      }
      b.count += 1;
      for (const s of SIGNALS) {
        const x = r[s];
        if (typeof x !== 'number') continue;
        const a = (b.acc[s] ??= { min: x, max: x, sum: 0, n: 0 });
        a.min = Math.min(a.min, x);
        a.max = Math.max(a.max, x);
        a.sum += x;
        a.n += 1;
      }
    }
    const out = [...buckets.values()].map((b) => {
      const o = { timestamp: b.timestamp, count: b.count };
      for (const s of SIGNALS) {
        const a = b.acc[s];
        o[s] = a ? { min: a.min, max: a.max, mean: a.sum / a.n } : null;
      }
      return o;
    });
    return [200, { vin: v.summary.vin, step: stepMs, buckets: out }];
  }
  const limit = Math.min(10_000, Math.max(1, Number(q.get('limit') ?? 1000)));
  const offset = q.get('cursor') ? Number(Buffer.from(q.get('cursor'), 'base64url').toString()) : 0;
  const page = rows.slice(offset, offset + limit).map((r) => {
    const o = { timestamp: r.timestamp, transmitted: r.transmitted };
    for (const s of SIGNALS) o[s] = r[s];
    return o;
  });
  const next = offset + limit < rows.length ? Buffer.from(String(offset + limit)).toString('base64url') : null;
  return [200, { vin: v.summary.vin, readings: page, next_cursor: next }];
}

const DAY = /^\d{4}-\d\d-\d\d$/;

function dailyStats(v, q) {
  const from = q.get('from');
  const to = q.get('to');
  if (!DAY.test(from ?? '') || !DAY.test(to ?? '')) return [400, { status: 'error', error: '`from` and `to` must be YYYY-MM-DD.' }];
  const days = new Map();
  for (const r of v.readings) {
    const day = new Date(r.timestamp).toISOString().slice(0, 10);
    if (day < from || day > to) continue;
    const d = days.get(day) ?? { day, readings: 0, fields_total: 0, fields_transmitted: 0, fields_skipped: 0, compression_ratio: 0 };
    const f = fieldsOf(r);
    d.readings += 1;
    d.fields_total += f.total;
    d.fields_transmitted += f.tx;
    d.fields_skipped += f.total - f.tx;
    d.compression_ratio = d.fields_total ? d.fields_skipped / d.fields_total : 0;
    days.set(day, d);
  }
  return [200, { vin: v.summary.vin, days: [...days.values()].sort((a, b) => (a.day < b.day ? -1 : 1)) }];
}

function vehiclePage(q) {
  const list = [...vehicles.values()].map((v) => v.summary).sort((a, b) => (a.vin < b.vin ? -1 : 1));
  const limit = Math.min(1000, Math.max(1, Number(q.get('limit') ?? 100)));
  const after = q.get('cursor');
  const start = after ? list.findIndex((v) => v.vin > after) : 0;
  const page = start < 0 ? [] : list.slice(start, start + limit);
  const next = start >= 0 && start + limit < list.length ? page[page.length - 1].vin : null;
  return [200, { vehicles: page, next_cursor: next }];
}

function fleetStats() {
  let readings = 0;
  for (const v of vehicles.values()) readings += v.stats.readings;
  return {
    vehicles: vehicles.size,
    readings,
    fields_total: totals.total,
    fields_transmitted: totals.transmitted,
    fields_skipped: totals.skipped,
    compression_ratio: totals.total ? totals.skipped / totals.total : 0,
  };
}

// ---- sessions ----------------------------------------------------------------------------

function sessionOf(req) {
  const m = /(?:^|;\s*)lockstep_session=([^;]+)/.exec(req.headers.cookie ?? '');
  return m ? sessions.get(m[1]) ?? null : null;
}

/** Whether a read may go ahead. */
function mayRead(req) {
  return !readAuth || sessionOf(req) !== null;
}

/** Logger control: with read auth, an operator or admin session; without, anyone (loopback). */
function mayOperate(req) {
  if (!readAuth) return true;
  const role = sessionOf(req);
  return role === 'operator' || role === 'admin';
}

function startLogger(req) {
  if (logger.running) return { code: 409, body: { status: 'already_running', pid: logger.pid } };
  const n = Math.max(1, Math.min(500, Number(req.vehicles ?? 3)));
  const rate = Math.max(0.1, Math.min(50, Number(req.rate ?? args.rate)));
  args.rate = String(rate);
  const sims = [];
  for (let i = 0; i < n; i++) {
    const vin = vinFor(i);
    ensureVehicle(vin, i).sessions += 1;
    sims.push([vin, newSim(i)]);
  }
  const pid = 40000 + Math.floor(Math.random() * 10000);
  logger = { running: true, pid, started_at_ms: Date.now(), last_exit_code: null, last_run_s: null };
  loggerTimer = setInterval(() => {
    const now = Date.now();
    for (const [vin, sim] of sims) emitReading(vin, sim, now);
  }, 1000 / rate);
  const stopAfter = Number(req.duration_s);
  if (stopAfter > 0) setTimeout(() => logger.pid === pid && stopLogger(), stopAfter * 1000);
  broadcast({ type: 'logger', data: logger });
  log('info', 'server', `Logger started (pid ${pid}): ${n} simulated vehicle(s) at ${rate} Hz.`);
  // The edge prints its own time and level, like the real one.
  log('info', 'logger', `${stamp()}  INFO simulating ${n} vehicle(s) at ${rate} Hz`);
  return { code: 200, body: { status: 'started', pid } };
}

function stopLogger() {
  if (!logger.running) return { code: 200, body: { status: 'not_running' } };
  clearInterval(loggerTimer);
  const ran = (Date.now() - logger.started_at_ms) / 1000;
  logger = { running: false, pid: null, started_at_ms: null, last_exit_code: 0, last_run_s: ran };
  broadcast({ type: 'logger', data: logger });
  log('info', 'server', `Logger stopped after ${ran.toFixed(1)} s (exit code 0).`);
  return { code: 200, body: { status: 'stopped', exit_code: 0 } };
}

const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.png': 'image/png' };

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  return JSON.parse(text);
}

const server = createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const json = (code, body) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const cookieHeader = (id) => `lockstep_session=${id}; HttpOnly; SameSite=Strict; Path=/`;
  try {
    if (url.pathname === '/api/session') {
      const role = sessionOf(req);
      return json(200, { authenticated: role !== null, role, read_auth: readAuth ? 'required' : 'off' });
    }
    if (url.pathname === '/api/login' && req.method === 'POST') {
      if (!/^application\/json\b/.test(req.headers['content-type'] ?? '')) return json(415, { status: 'error', error: 'Send the token as JSON.' });
      const body = await readBody(req);
      const role = tokens.get(String(body.token ?? ''));
      if (!role) return json(401, { status: 'error', error: 'This token is not valid.' });
      const id = Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
      sessions.set(id, role);
      res.writeHead(204, { 'set-cookie': cookieHeader(id) });
      return res.end();
    }
    if (url.pathname === '/api/logout' && req.method === 'POST') {
      const m = /(?:^|;\s*)lockstep_session=([^;]+)/.exec(req.headers.cookie ?? '');
      if (m) sessions.delete(m[1]);
      res.writeHead(204, { 'set-cookie': `${cookieHeader('')}; Max-Age=0` });
      return res.end();
    }
    if ((url.pathname.startsWith('/api/') || url.pathname === '/logger/status') && !mayRead(req)) {
      return json(401, { status: 'error', error: 'Sign in to read from this server.' });
    }
    if (url.pathname.startsWith('/logger/') && req.method === 'POST' && !mayOperate(req)) {
      return json(403, { status: 'error', error: 'Starting and stopping the logger needs an operator or admin session.' });
    }
    if (url.pathname === '/docs') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end('<!doctype html><title>Lockstep API docs (mock)</title><h1>Lockstep API docs</h1><p>The mock server has no interactive docs.</p>');
    }
    if (url.pathname === '/api/stats') return json(200, fleetStats());
    if (url.pathname === '/api/vehicles') {
      const [code, body] = vehiclePage(url.searchParams);
      return json(code, body);
    }
    const m = /^\/api\/vehicles\/([^/]+)(\/telemetry|\/stats)?$/.exec(url.pathname);
    if (m) {
      const v = vehicles.get(decodeURIComponent(m[1]));
      if (!v) return json(404, { status: 'error', error: `No vehicle ${decodeURIComponent(m[1])}.` });
      if (m[2] === '/telemetry') {
        const [code, body] = telemetry(v, url.searchParams);
        return json(code, body);
      }
      if (m[2] === '/stats') {
        const [code, body] = dailyStats(v, url.searchParams);
        return json(code, body);
      }
      const resyncs = 0;
      const keyframes = v.readings.filter((r) => r.transmitted.length === SIGNALS.length);
      return json(200, {
        ...v.summary,
        sessions: v.sessions,
        resyncs,
        last_keyframe_ms: keyframes.length ? keyframes[keyframes.length - 1].timestamp : null,
      });
    }
    if (url.pathname === '/status') {
      return json(200, {
        status: 'healthy',
        compression_stats: statsMessage().data,
        supabase_enabled: false,
        store: { kind: 'sqlite', healthy: true, pending_batch: 0 },
        vehicles: vehicles.size,
        ws_clients: clients.size,
        uptime_s: (Date.now() - started) / 1000,
        logger,
      });
    }
    if (url.pathname === '/logger/status') return json(200, logger);
    if (url.pathname === '/logger/start' && req.method === 'POST') {
      const r = startLogger(await readBody(req));
      return json(r.code, r.body);
    }
    if (url.pathname === '/logger/stop' && req.method === 'POST') {
      const r = stopLogger();
      return json(r.code, r.body);
    }
    const rel = url.pathname === '/' ? 'index.html' : normalize(url.pathname).replace(/^[/\\]+/, '');
    if (rel.includes('..')) return json(400, { status: 'error', error: 'Bad path.' });
    const body = await readFile(join(dist, rel));
    res.writeHead(200, { 'content-type': MIME[extname(rel)] ?? 'application/octet-stream' });
    res.end(body);
  } catch (e) {
    if (e && e.code === 'ENOENT') return json(404, { status: 'error', error: `No such file: ${url.pathname}` });
    json(400, { status: 'error', error: String(e && e.message) });
  }
});

const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://x');
  if (url.pathname !== '/ws') return socket.destroy();
  if (!mayRead(req)) {
    const body = JSON.stringify({ status: 'error', error: 'Sign in to read from this server.' });
    socket.end(`HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});
wss.on('connection', (ws) => {
  const c = { ws, vins: null };
  clients.add(c);
  ws.send(JSON.stringify({ type: 'history', data: history }));
  // The recent log lines, as ordinary `log` messages (a page that reconnects has seen some).
  for (const entry of recentLog) ws.send(JSON.stringify({ type: 'log', data: entry }));
  if (totals.total) ws.send(JSON.stringify(statsMessage()));
  ws.on('message', (buf) => {
    let m;
    try {
      m = JSON.parse(String(buf));
    } catch {
      return;
    }
    if (m.type === 'subscribe') c.vins = Array.isArray(m.vins) && m.vins.length ? new Set(m.vins) : null;
    if (m.type === 'start_logger') startLogger(m);
    if (m.type === 'stop_logger') stopLogger();
  });
  ws.on('close', () => clients.delete(c));
});

if (args['seed-minutes']) seed(Number(args['seed-minutes']));

server.listen(Number(args.port), '127.0.0.1', () => {
  console.log(`mock lockstep-server listening on http://127.0.0.1:${server.address().port}${readAuth ? ' (read auth required)' : ''}`);
  log('info', 'server', `Mock server started on port ${server.address().port}.`);
  if (args.vehicles) startLogger({ vehicles: Number(args.vehicles), rate: Number(args.rate) });
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
