#!/usr/bin/env node
// A stand-in for lockstep-server that speaks the dashboard's side of the contract: it serves
// dist/, answers /status, /api/vehicles and /logger/*, and on /ws sends history, telemetry,
// compression_stats, log and logger messages made up by a small simulator. For developing the
// page and for the end-to-end test (E2E_TARGET=mock) while the real server is not available.
//
//   node scripts/mock-server.mjs [--port 8001] [--vehicles N --rate HZ]   (PORT env also works;
//   --vehicles starts a simulated logger at once, e.g. --vehicles 50 to look at a busy page)

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
  },
});

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

function broadcast(msg, vin) {
  const text = JSON.stringify(msg);
  for (const c of clients) {
    if (vin && c.vins && !c.vins.has(vin)) continue;
    if (c.ws.readyState === 1) c.ws.send(text);
  }
}

function log(level, source, message) {
  broadcast({ type: 'log', data: { level, source, message, timestamp: Date.now() } });
}

function statsMessage() {
  const per = {};
  for (const [vin, v] of vehicles) per[vin] = v.stats;
  return {
    type: 'compression_stats',
    data: {
      total_readings: totals.total,
      transmitted_readings: totals.transmitted,
      skipped_readings: totals.skipped,
      compression_ratio: totals.total ? totals.skipped / totals.total : 0,
      bytes_received: totals.bytes,
      vehicles: per,
    },
  };
}

setInterval(() => {
  if (!statsDirty) return;
  statsDirty = false;
  broadcast(statsMessage());
}, 1000).unref();

function startLogger(req) {
  if (logger.running) return { code: 409, body: { status: 'already_running', pid: logger.pid } };
  const n = Math.max(1, Math.min(500, Number(req.vehicles ?? 3)));
  const rate = Math.max(0.1, Math.min(50, Number(req.rate ?? args.rate)));
  args.rate = String(rate);
  const sims = [];
  for (let i = 0; i < n; i++) {
    const vin = vinFor(i);
    if (!vehicles.has(vin)) {
      vehicles.set(vin, {
        summary: { vin, first_seen_ms: Date.now(), last_seen_ms: Date.now(), readings: 0 },
        stats: { readings: 0, fields_total: 0, fields_transmitted: 0, fields_skipped: 0, bytes_received: 0, compression_ratio: 0 },
      });
    }
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
  log('info', 'logger', `simulate --vehicles ${n} --rate ${rate}`);
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
  try {
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
    if (url.pathname === '/api/vehicles') return json(200, [...vehicles.values()].map((v) => v.summary));
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

const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws) => {
  const c = { ws, vins: null };
  clients.add(c);
  ws.send(JSON.stringify({ type: 'history', data: history }));
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

server.listen(Number(args.port), '127.0.0.1', () => {
  console.log(`mock lockstep-server listening on http://127.0.0.1:${server.address().port}`);
  if (args.vehicles) startLogger({ vehicles: Number(args.vehicles), rate: Number(args.rate) });
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
