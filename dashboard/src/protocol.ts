// Wire shapes of the lockstep-server WebSocket and HTTP API (see the shared contract), plus a
// tolerant parser: the page must survive a server that adds fields or sends something odd.

/** The signals the default catalog carries, in channel order. */
export const SIGNALS = ['speed', 'battery', 'power', 'heading', 'latitude', 'longitude', 'altitude'] as const;
export type Signal = (typeof SIGNALS)[number];

export const SIGNAL_UNITS: Record<Signal, string> = {
  speed: 'km/h',
  battery: '%',
  power: 'kW',
  heading: 'deg',
  latitude: 'deg',
  longitude: 'deg',
  altitude: 'm',
};

/** A value per signal; null (or missing) where the reading has none. */
export type SignalValues = { [S in Signal]?: number | null };

/** One committed reading as the server broadcasts it (`telemetry`, and each element of `history`). */
export interface TelemetryReading extends SignalValues {
  timestamp: number;
  vehicle_vin: string;
  /** Fields whose value travelled on the wire. */
  transmitted?: string[];
  /** Fields the server reconstructed with the shared predictor. */
  predicted_fields?: string[];
  session_id?: string;
  seq?: number;
}

export interface VehicleStats {
  readings: number;
  fields_total: number;
  fields_transmitted: number;
  fields_skipped: number;
  bytes_received: number;
  compression_ratio: number;
}

export interface CompressionStats {
  /** Readings (servers before `fields_total` existed sent the field count here). */
  total_readings: number;
  /** Fields (readings × signals); absent from older servers. */
  fields_total?: number;
  transmitted_readings: number;
  skipped_readings: number;
  compression_ratio: number;
  bytes_received?: number;
  /** Fleet readings, when the server sends them (needed for "bytes saved" once `vehicles` is partial). */
  readings?: number;
  /**
   * Per-vehicle statistics. For a large fleet the server sends only the vehicles this page is
   * subscribed to, so a vehicle missing here keeps its last known numbers.
   */
  vehicles?: Record<string, VehicleStats>;
}

export type LogLevel = 'info' | 'warn' | 'error';

export interface LogEntry {
  level: LogLevel;
  source: string;
  message: string;
  timestamp: number;
}

/** Same shape as `GET /logger/status`. */
export interface LoggerStatus {
  running: boolean;
  pid: number | null;
  started_at_ms: number | null;
  last_exit_code: number | null;
  last_run_s: number | null;
}

/** One element of `GET /api/vehicles` → `vehicles`. */
export interface VehicleSummary {
  vin: string;
  first_seen_ms: number;
  last_seen_ms: number;
  readings: number;
  model?: string | null;
  year?: number | null;
}

/** Body of `POST /logger/start` and of the WS `start_logger` message. */
export interface LoggerStartRequest {
  vehicles?: number;
  rate?: number;
  duration_s?: number;
  replay?: string[];
  format?: 'twizy' | 'cycling' | 'csv';
  speed?: number;
}

export type ServerMessage =
  | { type: 'history'; data: TelemetryReading[] }
  | { type: 'telemetry'; data: TelemetryReading }
  | { type: 'compression_stats'; data: CompressionStats }
  | { type: 'log'; data: LogEntry }
  | { type: 'logger'; data: LoggerStatus }
  | { type: 'lagged'; data: { dropped: number } }
  | { type: 'gap'; data: Gap };

/**
 * Messages from other server instances were lost on the way (several instances behind a load
 * balancer share the live stream through Redis): `missed` is how many when known, `null` when not.
 */
export interface Gap {
  missed: number | null;
  reason: 'bridge_down' | 'dropped' | 'late';
}

const GAP_REASONS: readonly string[] = ['bridge_down', 'dropped', 'late'];

export type ClientMessage =
  | { type: 'subscribe'; vins: string[] }
  | ({ type: 'start_logger' } & LoggerStartRequest)
  | { type: 'stop_logger' };

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function isReading(v: unknown): v is TelemetryReading {
  return isObject(v) && typeof v.timestamp === 'number' && typeof v.vehicle_vin === 'string';
}

/**
 * Parses one text frame. Returns `null` for anything that is not a known, well-formed message
 * (unknown types are ignored so a newer server does not break an older page).
 */
export function parseServerMessage(text: string): ServerMessage | null {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObject(raw) || typeof raw.type !== 'string') return null;
  const data = raw.data;
  switch (raw.type) {
    case 'history':
      return Array.isArray(data) ? { type: 'history', data: data.filter(isReading) } : null;
    case 'telemetry':
      return isReading(data) ? { type: 'telemetry', data } : null;
    case 'compression_stats':
      return isObject(data) && typeof data.total_readings === 'number'
        ? { type: 'compression_stats', data: data as unknown as CompressionStats }
        : null;
    case 'log':
      return isObject(data) && typeof data.message === 'string'
        ? { type: 'log', data: data as unknown as LogEntry }
        : null;
    case 'logger':
      return isObject(data) && typeof data.running === 'boolean'
        ? { type: 'logger', data: data as unknown as LoggerStatus }
        : null;
    case 'lagged':
      return isObject(data) && typeof data.dropped === 'number'
        ? { type: 'lagged', data: { dropped: data.dropped } }
        : null;
    case 'gap':
      return isObject(data) &&
        (data.missed === null || typeof data.missed === 'number') &&
        typeof data.reason === 'string' &&
        GAP_REASONS.includes(data.reason)
        ? { type: 'gap', data: { missed: data.missed as number | null, reason: data.reason as Gap['reason'] } }
        : null;
    default:
      return null;
  }
}
