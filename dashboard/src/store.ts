// Dashboard state and the reducer that applies server messages and UI actions to it.
//
// Plain TypeScript with no DOM or React so the unit tests drive it directly. The state is
// mutated in place (bounded column buffers per vehicle; 50 vehicles at 10 Hz would otherwise
// allocate a lot) and every change bumps `version`, which React watches through `Store`.

import type { Role, Session } from './api';
import {
  SIGNALS,
  type CompressionStats,
  type LogEntry,
  type LogLevel,
  type LoggerStatus,
  type ServerMessage,
  type Signal,
  type TelemetryReading,
  type VehicleStats,
  type VehicleSummary,
} from './protocol';

/** Points kept per vehicle; older ones fall off the front. */
export const MAX_POINTS = 600;
/** Log lines kept. */
export const MAX_LOG = 300;
/** Vehicles drawn in the charts at once; more are paged through, never silently left out. */
export const MAX_CHARTED = 8;

export type ConnectionPhase = 'connecting' | 'connected' | 'reconnecting';

/** One vehicle's recent readings, as parallel columns (index i = i-th kept reading). */
export interface VehicleState {
  vin: string;
  /** Reading timestamps (ms since the epoch, the vehicle's clock). */
  t: number[];
  /** Value per signal; `null` where the field was null (absent) in the reading. */
  values: Record<Signal, (number | null)[]>;
  /** Whether the value travelled on the wire (true) or was reconstructed by the predictor (false). */
  transmitted: Record<Signal, boolean[]>;
  /** Newest reading timestamp known, from telemetry or from `GET /api/vehicles`. */
  lastSeenMs: number | null;
  /** Page clock (Date.now()) when the last reading for this vehicle arrived. */
  lastReceivedAt: number | null;
  /** Readings received by this page (not bounded). */
  received: number;
  /** Readings the server has stored for this vehicle (`GET /api/vehicles`). */
  storedReadings: number | null;
  sessionId: string | null;
  lastSeq: number | null;
  stats: VehicleStats | null;
}

/** What the server said about read access (`GET /api/session`). */
export interface AuthState {
  /** False until the first answer: the page shows neither the login form nor data yet. */
  checked: boolean;
  readAuth: 'required' | 'off';
  authenticated: boolean;
  role: Role | null;
  busy: boolean;
  error: string | null;
}

export interface DashboardState {
  auth: AuthState;
  connection: {
    phase: ConnectionPhase;
    /** Consecutive failed attempts since the last successful connection. */
    attempt: number;
    /** Delay before the next attempt while reconnecting. */
    retryInMs: number | null;
    /** Number of successful connections so far. */
    connects: number;
  };
  vehicles: Map<string, VehicleState>;
  /** Vehicles the page is subscribed to; empty means all. */
  selected: string[];
  stats: CompressionStats | null;
  /** Vehicles listed in the latest `compression_stats` (a bounded message lists only some). */
  statsVins: string[];
  /** Compression statistics updates received. */
  statsUpdates: number;
  logs: LogEntry[];
  logger: LoggerStatus | null;
  loggerError: string | null;
  loggerBusy: boolean;
  lagged: { events: number; dropped: number };
  /**
   * Readings of the last history, or null before one arrived. The server sends the history in
   * consecutive `history` messages (chunks of a few KiB); they add up until another message comes.
   */
  historyReadings: number | null;
  /** The last message was a `history` chunk (the next one continues the same history). */
  historyOpen: boolean;
  version: number;
}

export type Action =
  | { kind: 'message'; msg: ServerMessage; now: number }
  | { kind: 'connection'; phase: ConnectionPhase; attempt: number; retryInMs: number | null }
  | { kind: 'select'; vins: string[] }
  | { kind: 'vehicles'; list: VehicleSummary[] }
  | { kind: 'logger_status'; status: LoggerStatus }
  | { kind: 'logger_request'; busy: boolean; error: string | null }
  | { kind: 'local_log'; level: LogLevel; message: string; now: number }
  | { kind: 'session'; session: Session }
  | { kind: 'auth_request'; busy: boolean; error: string | null };

export function initialState(): DashboardState {
  return {
    auth: { checked: false, readAuth: 'off', authenticated: false, role: null, busy: false, error: null },
    connection: { phase: 'connecting', attempt: 0, retryInMs: null, connects: 0 },
    vehicles: new Map(),
    selected: [],
    stats: null,
    statsVins: [],
    statsUpdates: 0,
    logs: [],
    logger: null,
    loggerError: null,
    loggerBusy: false,
    lagged: { events: 0, dropped: 0 },
    historyReadings: null,
    historyOpen: false,
    version: 0,
  };
}

function emptyVehicle(vin: string): VehicleState {
  const values = {} as Record<Signal, (number | null)[]>;
  const transmitted = {} as Record<Signal, boolean[]>;
  for (const s of SIGNALS) {
    values[s] = [];
    transmitted[s] = [];
  }
  return {
    vin,
    t: [],
    values,
    transmitted,
    lastSeenMs: null,
    lastReceivedAt: null,
    received: 0,
    storedReadings: null,
    sessionId: null,
    lastSeq: null,
    stats: null,
  };
}

function vehicle(state: DashboardState, vin: string): VehicleState {
  let v = state.vehicles.get(vin);
  if (!v) {
    v = emptyVehicle(vin);
    state.vehicles.set(vin, v);
  }
  return v;
}

function clearPoints(v: VehicleState): void {
  v.t.length = 0;
  for (const s of SIGNALS) {
    v.values[s].length = 0;
    v.transmitted[s].length = 0;
  }
}

/**
 * Which fields of a reading were transmitted. Uses `transmitted` when present; otherwise every
 * non-null field not listed in `predicted_fields` counts as transmitted (the honest default for
 * a reading that says nothing).
 */
export function transmittedSet(r: TelemetryReading): Set<string> {
  if (Array.isArray(r.transmitted)) return new Set(r.transmitted);
  const predicted = new Set(Array.isArray(r.predicted_fields) ? r.predicted_fields : []);
  return new Set(SIGNALS.filter((s) => r[s] != null && !predicted.has(s)));
}

/**
 * Appends one reading to its vehicle's buffer. Returns false when it was dropped as already
 * seen: the same session with a seq not above the last one, or (without session information,
 * or while applying `history`) a timestamp not after the newest kept one. A live reading from a
 * different session that goes back in time (a replay started again) restarts the buffer.
 */
export function applyReading(state: DashboardState, r: TelemetryReading, now: number, fromHistory: boolean): boolean {
  const v = vehicle(state, r.vehicle_vin);
  const lastT = v.t.length ? v.t[v.t.length - 1] : null;
  const session = typeof r.session_id === 'string' ? r.session_id : null;
  const seq = typeof r.seq === 'number' ? r.seq : null;
  if (session !== null && seq !== null && session === v.sessionId && v.lastSeq !== null && seq <= v.lastSeq) {
    return false;
  }
  if (lastT !== null && r.timestamp <= lastT) {
    const newSession = !fromHistory && session !== null && v.sessionId !== null && session !== v.sessionId;
    if (!newSession) return false;
    clearPoints(v);
  }
  const tx = transmittedSet(r);
  v.t.push(r.timestamp);
  for (const s of SIGNALS) {
    const value = r[s];
    v.values[s].push(typeof value === 'number' ? value : null);
    v.transmitted[s].push(tx.has(s));
  }
  if (v.t.length > MAX_POINTS) {
    const drop = v.t.length - MAX_POINTS;
    v.t.splice(0, drop);
    for (const s of SIGNALS) {
      v.values[s].splice(0, drop);
      v.transmitted[s].splice(0, drop);
    }
  }
  v.lastSeenMs = Math.max(v.lastSeenMs ?? r.timestamp, r.timestamp);
  v.lastReceivedAt = now;
  v.received += 1;
  if (session !== null) v.sessionId = session;
  if (seq !== null) v.lastSeq = seq;
  return true;
}

// A line from a child process that logs with its own clock starts with an RFC 3339 time and a
// level ("2026-12-01T05:25:24.123Z  INFO simulating…"); the page shows the entry's time and
// colours by level already, so both go.
const SEP = String.raw`(?:\s|\x1b\[[0-9;]*m)`;
const LEADING_STAMP = new RegExp(
  String.raw`^(?:\x1b\[[0-9;]*m)*\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?` +
    `${SEP}+(?:(?:TRACE|DEBUG|INFO|WARN|ERROR)${SEP}+)?`,
);
const ANSI = /\x1b\[[0-9;]*m/g;

/** The message without a leading timestamp/level of its own and without terminal colour codes. */
export function cleanLogMessage(message: string): string {
  return message.replace(LEADING_STAMP, '').replace(ANSI, '');
}

const sameLog = (a: LogEntry, b: LogEntry) =>
  a.timestamp === b.timestamp && a.message === b.message && a.source === b.source && a.level === b.level;

/**
 * Adds a log line in time order. The server repeats its recent lines after every (re)connect, so
 * a line already held (same time, source, level and text) is dropped. Returns whether it was added.
 */
export function pushLog(state: DashboardState, raw: LogEntry): boolean {
  const entry: LogEntry = { ...raw, message: cleanLogMessage(raw.message) };
  const logs = state.logs;
  let i = logs.length;
  while (i > 0 && logs[i - 1].timestamp > entry.timestamp) i--;
  // Equal timestamps sit just before i.
  for (let j = i - 1; j >= 0 && logs[j].timestamp === entry.timestamp; j--) if (sameLog(logs[j], entry)) return false;
  if (i === 0 && logs.length >= MAX_LOG) return false; // older than everything kept
  logs.splice(i, 0, entry);
  if (logs.length > MAX_LOG) logs.splice(0, logs.length - MAX_LOG);
  return true;
}

function applyMessage(state: DashboardState, msg: ServerMessage, now: number): void {
  const continues = state.historyOpen;
  state.historyOpen = msg.type === 'history';
  switch (msg.type) {
    case 'history': {
      for (const r of msg.data) applyReading(state, r, now, true);
      state.historyReadings = (continues ? (state.historyReadings ?? 0) : 0) + msg.data.length;
      break;
    }
    case 'telemetry':
      applyReading(state, msg.data, now, false);
      break;
    case 'compression_stats':
      state.stats = msg.data;
      state.statsUpdates += 1;
      // Vehicles left out of a bounded message keep their last known numbers.
      state.statsVins = Object.keys(msg.data.vehicles ?? {}).sort();
      for (const [vin, s] of Object.entries(msg.data.vehicles ?? {})) {
        if (s && typeof s === 'object' && typeof s.fields_total === 'number') vehicle(state, vin).stats = s;
      }
      break;
    case 'log':
      pushLog(state, msg.data);
      break;
    case 'logger':
      state.logger = msg.data;
      state.loggerBusy = false;
      break;
    case 'lagged':
      state.lagged.events += 1;
      state.lagged.dropped += msg.data.dropped;
      pushLog(state, {
        level: 'warn',
        source: 'dashboard',
        message: `The server dropped ${msg.data.dropped} message(s) for this page because it fell behind; charts may have gaps.`,
        timestamp: now,
      });
      break;
    case 'gap':
      state.lagged.events += 1;
      state.lagged.dropped += msg.data.missed ?? 0;
      pushLog(state, {
        level: 'warn',
        source: 'dashboard',
        message:
          msg.data.reason === 'bridge_down'
            ? 'The server lost its link to the other instances: readings they receive do not reach this page until it returns; charts may have gaps.'
            : `${msg.data.missed ?? 'Some'} message(s) from other server instances were lost (${msg.data.reason}); charts may have gaps.`,
        timestamp: now,
      });
      break;
  }
}

/** Applies an action to the state in place and bumps `version`. */
export function reduce(state: DashboardState, action: Action): void {
  switch (action.kind) {
    case 'message':
      applyMessage(state, action.msg, action.now);
      break;
    case 'connection':
      // A new connection starts a new history.
      state.historyOpen = false;
      if (action.phase === 'connected' && state.connection.phase !== 'connected') state.connection.connects += 1;
      state.connection.phase = action.phase;
      state.connection.attempt = action.attempt;
      state.connection.retryInMs = action.retryInMs;
      break;
    case 'select':
      state.selected = [...new Set(action.vins)].sort();
      break;
    case 'vehicles':
      for (const s of action.list) {
        const v = vehicle(state, s.vin);
        v.storedReadings = s.readings;
        v.lastSeenMs = Math.max(v.lastSeenMs ?? s.last_seen_ms, s.last_seen_ms);
      }
      break;
    case 'logger_status':
      state.logger = action.status;
      break;
    case 'logger_request':
      state.loggerBusy = action.busy;
      state.loggerError = action.error;
      break;
    case 'local_log':
      pushLog(state, { level: action.level, source: 'dashboard', message: action.message, timestamp: action.now });
      break;
    case 'session':
      state.auth.checked = true;
      state.auth.readAuth = action.session.read_auth;
      state.auth.authenticated = action.session.authenticated;
      state.auth.role = action.session.role;
      break;
    case 'auth_request':
      state.auth.busy = action.busy;
      state.auth.error = action.error;
      break;
  }
  state.version += 1;
}

// ---- derived views -------------------------------------------------------------------------

/** Vehicles sorted by VIN (stable order for 50 rows). */
export function vehicleList(state: DashboardState): VehicleState[] {
  return [...state.vehicles.values()].sort((a, b) => (a.vin < b.vin ? -1 : a.vin > b.vin ? 1 : 0));
}

/** Readings currently held (and charted) by this page, over all vehicles. */
export function readingsHeld(state: DashboardState): number {
  let n = 0;
  for (const v of state.vehicles.values()) n += v.t.length;
  return n;
}

/** Which vehicles the charts show. */
export interface ChartPlan {
  /** The vehicles drawn now (one page of `pool`). */
  vins: string[];
  /** Every vehicle that is to be charted: the watched ones, or all vehicles with readings. */
  pool: string[];
  /** Zero-based page shown, and the number of pages (MAX_CHARTED vehicles each). */
  page: number;
  pages: number;
}

/**
 * The watched vehicles (or, when watching all, every vehicle with readings on the page), by VIN,
 * MAX_CHARTED per page; `page` is clamped into range.
 */
export function chartPlan(state: DashboardState, page = 0): ChartPlan {
  const pool = state.selected.length > 0 ? state.selected : vehicleList(state).filter((v) => v.t.length > 0).map((v) => v.vin);
  const pages = Math.max(1, Math.ceil(pool.length / MAX_CHARTED));
  const p = Math.min(Math.max(0, Math.floor(page)), pages - 1);
  return { vins: pool.slice(p * MAX_CHARTED, (p + 1) * MAX_CHARTED), pool, page: p, pages };
}

/** The vehicles drawn on the first chart page. */
export function chartedVins(state: DashboardState): string[] {
  return chartPlan(state).vins;
}

/** Whether the logger may be started/stopped from this page: always without read auth, else operator or admin. */
export function canOperate(state: DashboardState): boolean {
  if (state.auth.readAuth === 'off') return true;
  return state.auth.authenticated && (state.auth.role === 'operator' || state.auth.role === 'admin');
}

/** Whether the page must ask for a token before it can show anything. */
export function needsLogin(state: DashboardState): boolean {
  return state.auth.checked && state.auth.readAuth === 'required' && !state.auth.authenticated;
}

/** Per charted vehicle: the full reconstructed line, transmitted points only, reconstructed points only. */
export interface VinSeries {
  vin: string;
  line: (number | null)[];
  transmitted: (number | null)[];
  reconstructed: (number | null)[];
}

/** uPlot-ready columns for one signal: x in seconds, one triple of series per vehicle. */
export interface ChartData {
  x: number[];
  series: VinSeries[];
  transmittedCount: number;
  reconstructedCount: number;
}

export function chartData(state: DashboardState, signal: Signal, vins: string[]): ChartData {
  const vs = vins.map((vin) => state.vehicles.get(vin)).filter((v): v is VehicleState => v !== undefined);
  // Union of timestamps; with one vehicle this is just its own column.
  const times = vs.length === 1 ? vs[0].t : [...new Set(vs.flatMap((v) => v.t))].sort((a, b) => a - b);
  const index = new Map<number, number>();
  times.forEach((t, i) => index.set(t, i));
  let transmittedCount = 0;
  let reconstructedCount = 0;
  const series = vs.map((v) => {
    const n = times.length;
    const line: (number | null)[] = new Array(n).fill(null);
    const tx: (number | null)[] = new Array(n).fill(null);
    const rec: (number | null)[] = new Array(n).fill(null);
    const values = v.values[signal];
    const sent = v.transmitted[signal];
    for (let i = 0; i < v.t.length; i++) {
      const j = index.get(v.t[i])!;
      const value = values[i];
      line[j] = value;
      if (value === null) continue;
      if (sent[i]) {
        tx[j] = value;
        transmittedCount += 1;
      } else {
        rec[j] = value;
        reconstructedCount += 1;
      }
    }
    return { vin: v.vin, line, transmitted: tx, reconstructed: rec };
  });
  return { x: times.map((t) => t / 1000), series, transmittedCount, reconstructedCount };
}

/** A position track: lat/lon pairs with the transmitted flag of the latitude field. */
export interface TrackPoint {
  lat: number;
  lon: number;
  transmitted: boolean;
}

export function track(state: DashboardState, vin: string): TrackPoint[] {
  const v = state.vehicles.get(vin);
  if (!v) return [];
  const out: TrackPoint[] = [];
  for (let i = 0; i < v.t.length; i++) {
    const lat = v.values.latitude[i];
    const lon = v.values.longitude[i];
    if (lat === null || lon === null) continue;
    out.push({ lat, lon, transmitted: v.transmitted.latitude[i] || v.transmitted.longitude[i] });
  }
  return out;
}

/**
 * Wire bytes a reading would take uncompressed, for the "bytes saved" estimate: every non-null
 * field as an 8-byte double plus a 25-byte header (17-character VIN + 8-byte timestamp).
 */
export const RAW_BYTES_PER_FIELD = 8;
export const RAW_BYTES_PER_READING = 25;

export interface StatsView {
  fieldsTotal: number;
  fieldsTransmitted: number;
  fieldsSkipped: number;
  /** Skipped fields as a percentage of all non-null fields (0..100), null with no data. */
  skippedPct: number | null;
  bytesReceived: number | null;
  /** Estimated raw size minus received bytes (never negative), null when unknown. */
  bytesSaved: number | null;
}

function view(total: number, transmitted: number, skipped: number, readings: number | null, bytes: number | null): StatsView {
  const raw = readings === null ? null : readings * RAW_BYTES_PER_READING + total * RAW_BYTES_PER_FIELD;
  return {
    fieldsTotal: total,
    fieldsTransmitted: transmitted,
    fieldsSkipped: skipped,
    skippedPct: total > 0 ? (100 * skipped) / total : null,
    bytesReceived: bytes,
    bytesSaved: raw !== null && bytes !== null ? Math.max(0, raw - bytes) : null,
  };
}

export function overallStats(stats: CompressionStats | null): StatsView | null {
  if (!stats) return null;
  // Fleet readings: sent by the server, or (older servers, which list every vehicle) the sum.
  const perVehicle = Object.values(stats.vehicles ?? {}).filter((v) => v && typeof v.readings === 'number');
  // Current servers send `fields_total` and count readings in `total_readings`; older ones
  // sent the field count as `total_readings` and no reading count.
  const hasFields = typeof stats.fields_total === 'number';
  const readings = hasFields
    ? stats.total_readings
    : typeof stats.readings === 'number'
      ? stats.readings
      : perVehicle.length
        ? perVehicle.reduce((n, v) => n + v.readings, 0)
        : null;
  return view(
    hasFields ? (stats.fields_total as number) : stats.total_readings,
    stats.transmitted_readings,
    stats.skipped_readings,
    readings,
    typeof stats.bytes_received === 'number' ? stats.bytes_received : null,
  );
}

export function vehicleStats(s: VehicleStats | null): StatsView | null {
  if (!s) return null;
  return view(s.fields_total, s.fields_transmitted, s.fields_skipped, s.readings, s.bytes_received);
}

// ---- store ---------------------------------------------------------------------------------

type Listener = () => void;

/**
 * Holds the state and tells listeners about changes. `schedule` batches the notifications for
 * server messages (the page passes requestAnimationFrame so 50 vehicles at 10 Hz re-render at
 * most once a frame; tests pass a synchronous call); other actions notify at once.
 */
export class Store {
  readonly state: DashboardState = initialState();
  private listeners = new Set<Listener>();
  private pending = false;

  constructor(private schedule: (fn: () => void) => void = (fn) => fn()) {}

  dispatch = (action: Action): void => {
    reduce(this.state, action);
    if (action.kind !== 'message') {
      // User actions and connection changes show at once (a checkbox must not lag a frame).
      this.notify();
      return;
    }
    if (this.pending) return;
    this.pending = true;
    this.schedule(() => {
      this.pending = false;
      for (const l of this.listeners) l();
    });
  };

  private notify(): void {
    for (const l of this.listeners) l();
  }

  subscribe = (listener: Listener): (() => void) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  getVersion = (): number => this.state.version;
}
