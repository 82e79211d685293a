// The server's HTTP query API (`/api/*`): wire shapes, URL builders, tolerant parsers and a small
// client. No DOM, no React; `fetch` is injected so tests drive it with canned answers.

import { SIGNALS, type Signal, type SignalValues, type VehicleSummary } from './protocol';

export interface FetchInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  /** Always same-origin: the session cookie goes only to the page's own server. */
  credentials?: 'same-origin';
}

export type FetchLike = (
  input: string,
  init?: FetchInit,
) => Promise<{
  ok: boolean;
  status: number;
  json(): Promise<unknown>;
}>;

/** `GET /api/vehicles` page. */
export interface VehiclePage {
  vehicles: VehicleSummary[];
  next_cursor: string | null;
}

/** `GET /api/vehicles/{vin}`. */
export interface VehicleDetail {
  vin: string;
  model: string | null;
  year: number | null;
  first_seen_ms: number;
  last_seen_ms: number;
  readings: number;
  sessions: number;
  resyncs: number;
  last_keyframe_ms: number | null;
}

/** One stored reading of `GET /api/vehicles/{vin}/telemetry` (raw form). */
export interface StoredReading extends SignalValues {
  timestamp: number;
  transmitted?: string[];
}

export interface RawTelemetry {
  vin: string;
  readings: StoredReading[];
  next_cursor: string | null;
}

export interface BucketStat {
  min: number;
  max: number;
  mean: number;
}

/** One bucket of the downsampled form (`&step=MS`); a signal is null when the bucket has no value for it. */
export type Bucket = { timestamp: number; count: number } & Partial<Record<Signal, BucketStat | null>>;

export interface BucketedTelemetry {
  vin: string;
  step: number;
  buckets: Bucket[];
}

export interface DayStats {
  day: string;
  readings: number;
  fields_total: number;
  fields_transmitted: number;
  fields_skipped: number;
  compression_ratio: number;
}

export interface VehicleDailyStats {
  vin: string;
  days: DayStats[];
}

/** `GET /api/stats`. */
export interface FleetStats {
  vehicles: number;
  readings: number;
  fields_total: number;
  fields_transmitted: number;
  fields_skipped: number;
  compression_ratio: number;
}

export type Role = 'viewer' | 'operator' | 'admin';

/** `GET /api/session`. */
export interface Session {
  authenticated: boolean;
  role: Role | null;
  read_auth: 'required' | 'off';
}

/** A failed API call: `status` 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

function query(params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

const vinPath = (vin: string) => `/api/vehicles/${encodeURIComponent(vin)}`;

export const urls = {
  vehicles: (limit?: number, cursor?: string | null) => `/api/vehicles${query({ limit, cursor })}`,
  vehicle: (vin: string) => vinPath(vin),
  telemetry: (vin: string, from: number, to: number, opts: { limit?: number; cursor?: string | null; step?: number } = {}) =>
    `${vinPath(vin)}/telemetry${query({ from: Math.floor(from), to: Math.ceil(to), limit: opts.limit, cursor: opts.cursor, step: opts.step })}`,
  vehicleStats: (vin: string, fromDay: string, toDay: string) => `${vinPath(vin)}/stats${query({ from: fromDay, to: toDay })}`,
  fleetStats: () => '/api/stats',
  session: () => '/api/session',
  login: () => '/api/login',
  logout: () => '/api/logout',
};

function parseSummary(v: unknown): VehicleSummary | null {
  if (!isObject(v) || typeof v.vin !== 'string') return null;
  return {
    vin: v.vin,
    first_seen_ms: num(v.first_seen_ms) ?? 0,
    last_seen_ms: num(v.last_seen_ms) ?? 0,
    readings: num(v.readings) ?? 0,
    model: str(v.model),
    year: num(v.year),
  };
}

/** `{"vehicles": [...], "next_cursor"}`; a bare array (servers before paging) is read as one last page. */
export function parseVehiclePage(body: unknown): VehiclePage {
  const list = Array.isArray(body) ? body : isObject(body) && Array.isArray(body.vehicles) ? body.vehicles : null;
  if (list === null) throw new ApiError(200, 'The server sent an unexpected vehicle list.');
  return {
    vehicles: list.map(parseSummary).filter((v): v is VehicleSummary => v !== null),
    next_cursor: isObject(body) ? str(body.next_cursor) : null,
  };
}

export function parseVehicleDetail(body: unknown): VehicleDetail {
  if (!isObject(body) || typeof body.vin !== 'string') throw new ApiError(200, 'The server sent an unexpected vehicle.');
  return {
    vin: body.vin,
    model: str(body.model),
    year: num(body.year),
    first_seen_ms: num(body.first_seen_ms) ?? 0,
    last_seen_ms: num(body.last_seen_ms) ?? 0,
    readings: num(body.readings) ?? 0,
    sessions: num(body.sessions) ?? 0,
    resyncs: num(body.resyncs) ?? 0,
    last_keyframe_ms: num(body.last_keyframe_ms),
  };
}

function parseStat(v: unknown): BucketStat | null {
  if (!isObject(v)) return null;
  const min = num(v.min);
  const max = num(v.max);
  const mean = num(v.mean);
  return min === null || max === null || mean === null ? null : { min, max, mean };
}

/** Either form of the telemetry answer, told apart by `buckets`. */
export function parseTelemetry(body: unknown): RawTelemetry | BucketedTelemetry {
  if (!isObject(body) || typeof body.vin !== 'string') throw new ApiError(200, 'The server sent unexpected telemetry.');
  if (Array.isArray(body.buckets)) {
    const buckets: Bucket[] = [];
    for (const b of body.buckets) {
      if (!isObject(b) || num(b.timestamp) === null) continue;
      const out: Bucket = { timestamp: b.timestamp as number, count: num(b.count) ?? 0 };
      for (const s of SIGNALS) out[s] = parseStat(b[s]);
      buckets.push(out);
    }
    return { vin: body.vin, step: num(body.step) ?? 0, buckets };
  }
  if (!Array.isArray(body.readings)) throw new ApiError(200, 'The server sent unexpected telemetry.');
  const readings = body.readings.filter((r): r is StoredReading => isObject(r) && num(r.timestamp) !== null);
  return { vin: body.vin, readings, next_cursor: str(body.next_cursor) };
}

export const isBucketed = (t: RawTelemetry | BucketedTelemetry): t is BucketedTelemetry => 'buckets' in t;

export function parseDailyStats(body: unknown): VehicleDailyStats {
  if (!isObject(body) || typeof body.vin !== 'string' || !Array.isArray(body.days)) throw new ApiError(200, 'The server sent unexpected statistics.');
  const days = body.days
    .filter((d): d is Record<string, unknown> => isObject(d) && typeof d.day === 'string')
    .map((d) => ({
      day: d.day as string,
      readings: num(d.readings) ?? 0,
      fields_total: num(d.fields_total) ?? 0,
      fields_transmitted: num(d.fields_transmitted) ?? 0,
      fields_skipped: num(d.fields_skipped) ?? 0,
      compression_ratio: num(d.compression_ratio) ?? 0,
    }));
  return { vin: body.vin, days };
}

export function parseFleetStats(body: unknown): FleetStats {
  if (!isObject(body)) throw new ApiError(200, 'The server sent unexpected statistics.');
  return {
    vehicles: num(body.vehicles) ?? 0,
    readings: num(body.readings) ?? 0,
    fields_total: num(body.fields_total) ?? 0,
    fields_transmitted: num(body.fields_transmitted) ?? 0,
    fields_skipped: num(body.fields_skipped) ?? 0,
    compression_ratio: num(body.compression_ratio) ?? 0,
  };
}

const ROLES: readonly Role[] = ['viewer', 'operator', 'admin'];

/** `GET /api/session`; anything unexpected (an older server without the route) means no read auth. */
export function parseSession(body: unknown): Session {
  if (!isObject(body)) return { authenticated: false, role: null, read_auth: 'off' };
  const role = ROLES.includes(body.role as Role) ? (body.role as Role) : null;
  return {
    authenticated: body.authenticated === true,
    role,
    read_auth: body.read_auth === 'required' ? 'required' : 'off',
  };
}

/** The server's sentence from a `{"status":"error","error":"…"}` body, or a generic one. */
export function errorText(body: unknown, status: number): string {
  if (isObject(body)) {
    if (typeof body.error === 'string') return body.error;
    if (body.status === 'already_running') return `The logger is already running (pid ${String(body.pid)}).`;
  }
  return `The server answered HTTP ${status}.`;
}

/** UTC calendar day of a timestamp, as the stats endpoint takes it. */
export function dayOf(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

/** Thin client over the query API. `onUnauthorized` hears every 401 (the session expired or was never there). */
export class Api {
  constructor(
    private readonly fetch: FetchLike,
    private readonly base = '',
    private readonly onUnauthorized: () => void = () => {},
  ) {}

  async get(path: string): Promise<unknown> {
    let res;
    try {
      res = await this.fetch(`${this.base}${path}`, { credentials: 'same-origin' });
    } catch (e) {
      throw new ApiError(0, `Could not reach the server: ${e instanceof Error ? e.message : String(e)}`);
    }
    let body: unknown = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (!res.ok) {
      if (res.status === 401) this.onUnauthorized();
      throw new ApiError(res.status, errorText(body, res.status));
    }
    return body;
  }

  /** A state-changing call: JSON body, same-origin only. Returns the parsed body (null when empty). */
  async post(path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
    let res;
    try {
      res = await this.fetch(`${this.base}${path}`, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'content-type': 'application/json', ...headers },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, `Could not reach the server: ${e instanceof Error ? e.message : String(e)}`);
    }
    let payload: unknown = null;
    if (res.status !== 204) {
      try {
        payload = await res.json();
      } catch {
        payload = null;
      }
    }
    if (!res.ok) throw new ApiError(res.status, errorText(payload, res.status));
    return { status: res.status, body: payload };
  }

  /** Every vehicle, following `next_cursor` (at most `maxPages` pages of `pageSize`). */
  async allVehicles(pageSize = 500, maxPages = 20): Promise<VehicleSummary[]> {
    const out: VehicleSummary[] = [];
    let cursor: string | null = null;
    let limit: number | undefined = pageSize;
    for (let i = 0; i < maxPages; i++) {
      let body: unknown;
      try {
        body = await this.get(urls.vehicles(limit, cursor));
      } catch (e) {
        // A server with a smaller page cap refuses our `limit`: use its default page size.
        if (!(e instanceof ApiError && e.status === 400 && limit !== undefined)) throw e;
        limit = undefined;
        body = await this.get(urls.vehicles(limit, cursor));
      }
      const page = parseVehiclePage(body);
      out.push(...page.vehicles);
      cursor = page.next_cursor;
      if (cursor === null) break;
    }
    return out;
  }

  /** `null` for an unknown VIN (404). */
  async vehicle(vin: string): Promise<VehicleDetail | null> {
    try {
      return parseVehicleDetail(await this.get(urls.vehicle(vin)));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return null;
      throw e;
    }
  }

  async buckets(vin: string, from: number, to: number, step: number): Promise<BucketedTelemetry> {
    const t = parseTelemetry(await this.get(urls.telemetry(vin, from, to, { step })));
    if (!isBucketed(t)) throw new ApiError(200, 'The server ignored `step` and sent raw readings.');
    return t;
  }

  /** Raw readings of a range, following cursors; stops (truncated) after `maxReadings`. */
  async raw(vin: string, from: number, to: number, pageSize = 1000, maxReadings = 5000): Promise<{ readings: StoredReading[]; truncated: boolean }> {
    const readings: StoredReading[] = [];
    let cursor: string | null = null;
    let limit: number | undefined = pageSize;
    for (;;) {
      let body: unknown;
      try {
        body = await this.get(urls.telemetry(vin, from, to, { limit, cursor }));
      } catch (e) {
        // As for vehicles: a `limit` above the server's cap falls back to its default.
        if (!(e instanceof ApiError && e.status === 400 && limit !== undefined)) throw e;
        limit = undefined;
        body = await this.get(urls.telemetry(vin, from, to, { limit, cursor }));
      }
      const t = parseTelemetry(body);
      if (isBucketed(t)) throw new ApiError(200, 'The server sent buckets where raw readings were asked for.');
      readings.push(...t.readings);
      cursor = t.next_cursor;
      if (cursor === null) return { readings, truncated: false };
      if (readings.length >= maxReadings) return { readings, truncated: true };
    }
  }

  async dailyStats(vin: string, fromDay: string, toDay: string): Promise<VehicleDailyStats> {
    return parseDailyStats(await this.get(urls.vehicleStats(vin, fromDay, toDay)));
  }

  async fleetStats(): Promise<FleetStats> {
    return parseFleetStats(await this.get(urls.fleetStats()));
  }

  /** The session; a server without `/api/session` (404) is treated as one without read auth. */
  async session(): Promise<Session> {
    try {
      return parseSession(await this.get(urls.session()));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) return parseSession(null);
      throw e;
    }
  }

  async login(token: string): Promise<void> {
    await this.post(urls.login(), { token });
  }

  async logout(): Promise<void> {
    await this.post(urls.logout());
  }
}
