// The history view's logic: which request answers a time range (downsampled buckets or raw
// readings), and the chart columns built from either answer. Pure; unit-tested.

import type { Api, Bucket, StoredReading } from './api';
import { SIGNALS, type Signal } from './protocol';

/** Buckets asked for across the visible range. */
export const TARGET_BUCKETS = 1000;
/** When a range holds at most this many readings, they are drawn one by one. */
export const RAW_LIMIT = 2000;
/** Shortest bucket the page asks for. */
export const MIN_STEP_MS = 1;

/** Bucket width so that about TARGET_BUCKETS buckets cover [from, to]. */
export function chooseStep(from: number, to: number, target = TARGET_BUCKETS): number {
  const span = Math.max(0, to - from);
  return Math.max(MIN_STEP_MS, Math.ceil(span / target));
}

export interface TimeRange {
  from: number;
  to: number;
}

/** A range `factor` times as wide around the same centre (factor < 1 zooms in), kept within `bounds` when given. */
export function zoom(r: TimeRange, factor: number, bounds?: TimeRange): TimeRange {
  const mid = (r.from + r.to) / 2;
  const half = Math.max(1, ((r.to - r.from) * factor) / 2);
  let from = Math.round(mid - half);
  let to = Math.round(mid + half);
  if (bounds) {
    from = Math.max(from, bounds.from);
    to = Math.min(to, bounds.to);
    if (to <= from) return { ...bounds };
  }
  return { from, to };
}

/** One signal's chart columns; x in seconds (uPlot's time scale). */
export interface BucketColumns {
  kind: 'buckets';
  x: number[];
  min: (number | null)[];
  max: (number | null)[];
  mean: (number | null)[];
}

export interface RawColumns {
  kind: 'raw';
  x: number[];
  /** Every value the server holds, joined by the line. */
  line: (number | null)[];
  transmitted: (number | null)[];
  reconstructed: (number | null)[];
  transmittedCount: number;
  reconstructedCount: number;
}

export type HistoryColumns = BucketColumns | RawColumns;

/** Buckets sorted by time → min/max band and mean line for one signal; empty buckets give gaps. */
export function bucketColumns(buckets: Bucket[], signal: Signal): BucketColumns {
  const sorted = [...buckets].sort((a, b) => a.timestamp - b.timestamp);
  const out: BucketColumns = { kind: 'buckets', x: [], min: [], max: [], mean: [] };
  for (const b of sorted) {
    const s = b[signal];
    out.x.push(b.timestamp / 1000);
    out.min.push(s ? s.min : null);
    out.max.push(s ? s.max : null);
    out.mean.push(s ? s.mean : null);
  }
  return out;
}

/** Raw readings → line plus transmitted (filled) and reconstructed (hollow) points for one signal. */
export function rawColumns(readings: StoredReading[], signal: Signal): RawColumns {
  const sorted = [...readings].sort((a, b) => a.timestamp - b.timestamp);
  const out: RawColumns = { kind: 'raw', x: [], line: [], transmitted: [], reconstructed: [], transmittedCount: 0, reconstructedCount: 0 };
  for (const r of sorted) {
    const v = r[signal];
    const value = typeof v === 'number' ? v : null;
    // A reading that does not say is counted as transmitted, like the live charts do.
    const sent = Array.isArray(r.transmitted) ? r.transmitted.includes(signal) : true;
    out.x.push(r.timestamp / 1000);
    out.line.push(value);
    out.transmitted.push(value !== null && sent ? value : null);
    out.reconstructed.push(value !== null && !sent ? value : null);
    if (value !== null) {
      if (sent) out.transmittedCount += 1;
      else out.reconstructedCount += 1;
    }
  }
  return out;
}

export type HistoryData =
  | { kind: 'buckets'; range: TimeRange; step: number; buckets: Bucket[]; readings: number }
  | { kind: 'raw'; range: TimeRange; readings: StoredReading[] };

/**
 * Loads a range: first the downsampled form (about TARGET_BUCKETS buckets); when the buckets
 * count at most RAW_LIMIT readings the raw readings are fetched instead, so zooming in far
 * enough shows each reading and whether it was transmitted or reconstructed.
 */
export async function loadRange(api: Pick<Api, 'buckets' | 'raw'>, vin: string, range: TimeRange): Promise<HistoryData> {
  const step = chooseStep(range.from, range.to);
  const b = await api.buckets(vin, range.from, range.to, step);
  const readings = b.buckets.reduce((n, x) => n + x.count, 0);
  if (readings <= RAW_LIMIT) {
    const raw = await api.raw(vin, range.from, range.to, 1000, RAW_LIMIT * 2);
    if (!raw.truncated) return { kind: 'raw', range, readings: raw.readings };
  }
  return { kind: 'buckets', range, step: b.step || step, buckets: b.buckets, readings };
}

export function historyColumns(data: HistoryData, signal: Signal): HistoryColumns {
  return data.kind === 'raw' ? rawColumns(data.readings, signal) : bucketColumns(data.buckets, signal);
}

export function readingsIn(data: HistoryData): number {
  return data.kind === 'raw' ? data.readings.length : data.readings;
}

/** Signals with a chart on the history view (position is charted as latitude/longitude lines there too). */
export const HISTORY_SIGNALS: Signal[] = [...SIGNALS];

/** Presets of the range picker, ms back from the vehicle's last reading. */
export const RANGE_PRESETS: { label: string; ms: number | null }[] = [
  { label: 'last 5 min', ms: 5 * 60_000 },
  { label: 'last hour', ms: 3_600_000 },
  { label: 'last 24 h', ms: 86_400_000 },
  { label: 'last 7 days', ms: 7 * 86_400_000 },
  { label: 'everything', ms: null },
];

/** The range of a preset for a vehicle seen from `first` to `last` (never before `first`). */
export function presetRange(first: number, last: number, ms: number | null): TimeRange {
  const to = last + 1;
  const from = ms === null ? first : Math.max(first, to - ms);
  return { from, to: Math.max(to, from + 1) };
}

/** `<input type="datetime-local">` value (local time, minute precision) ↔ ms. */
export function toLocalInput(ms: number): string {
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

export function fromLocalInput(value: string): number | null {
  if (!value) return null;
  const ms = new Date(value).getTime();
  return Number.isFinite(ms) ? ms : null;
}
