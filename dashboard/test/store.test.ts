import { describe, expect, it } from 'vitest';
import type { CompressionStats, ServerMessage } from '../src/protocol';
import {
  canOperate,
  chartData,
  chartedVins,
  chartPlan,
  cleanLogMessage,
  needsLogin,
  readingsHeld,
  initialState,
  MAX_CHARTED,
  MAX_LOG,
  MAX_POINTS,
  overallStats,
  reduce,
  Store,
  track,
  transmittedSet,
  vehicleList,
  vehicleStats,
  type DashboardState,
} from '../src/store';
import { reading, VIN_A, VIN_B } from './fixtures';

const msg = (state: DashboardState, m: ServerMessage, now = 5000) => reduce(state, { kind: 'message', msg: m, now });

describe('history', () => {
  it('loads readings oldest first and records how many arrived', () => {
    const s = initialState();
    msg(s, { type: 'history', data: [reading(VIN_A, 1000), reading(VIN_B, 1100), reading(VIN_A, 1200)] });
    expect(s.historyReadings).toBe(3);
    expect(s.vehicles.get(VIN_A)!.t).toEqual([1000, 1200]);
    expect(s.vehicles.get(VIN_B)!.t).toEqual([1100]);
    expect(vehicleList(s).map((v) => v.vin)).toEqual([VIN_A, VIN_B]);
  });

  it('a history in several chunks adds up until another message comes', () => {
    const s = initialState();
    msg(s, { type: 'history', data: [reading(VIN_A, 1000), reading(VIN_B, 1100)] });
    msg(s, { type: 'history', data: [reading(VIN_A, 1200)] });
    expect(s.historyReadings).toBe(3);
    expect(s.vehicles.get(VIN_A)!.t).toEqual([1000, 1200]);
    msg(s, { type: 'lagged', data: { dropped: 1 } });
    // The next connection's history counts afresh.
    reduce(s, { kind: 'connection', phase: 'connected', attempt: 0, retryInMs: null });
    msg(s, { type: 'history', data: [reading(VIN_A, 1200)] });
    expect(s.historyReadings).toBe(1);
    msg(s, { type: 'lagged', data: { dropped: 1 } });
    msg(s, { type: 'history', data: [reading(VIN_A, 1400)] });
    expect(s.historyReadings).toBe(1);
  });

  it('an empty history is fine (0 vehicles)', () => {
    const s = initialState();
    msg(s, { type: 'history', data: [] });
    expect(s.historyReadings).toBe(0);
    expect(s.vehicles.size).toBe(0);
    expect(chartedVins(s)).toEqual([]);
    expect(overallStats(s.stats)).toBeNull();
  });

  it('history after a reconnect does not duplicate readings already held', () => {
    const s = initialState();
    for (const t of [1000, 1200, 1400]) msg(s, { type: 'telemetry', data: reading(VIN_A, t) });
    msg(s, { type: 'history', data: [reading(VIN_A, 1200), reading(VIN_A, 1400), reading(VIN_A, 1600)] });
    expect(s.vehicles.get(VIN_A)!.t).toEqual([1000, 1200, 1400, 1600]);
  });

  it('history with readings of an older session does not wipe the buffer', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 5000, { session_id: 'bb', seq: 1 }) });
    msg(s, { type: 'history', data: [reading(VIN_A, 1000, { session_id: 'aa', seq: 9 })] });
    expect(s.vehicles.get(VIN_A)!.t).toEqual([5000]);
  });
});

describe('telemetry', () => {
  it('appends values per signal with last-seen time', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1000, { speed: 42.5, battery: null }) }, 777);
    const v = s.vehicles.get(VIN_A)!;
    expect(v.values.speed).toEqual([42.5]);
    expect(v.values.battery).toEqual([null]);
    expect(v.lastSeenMs).toBe(1000);
    expect(v.lastReceivedAt).toBe(777);
    expect(v.received).toBe(1);
  });

  it('drops a repeated (session, seq) and an out-of-order timestamp of the same session', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1000, { seq: 1 }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1100, { seq: 1 }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 900, { seq: 2 }) });
    expect(s.vehicles.get(VIN_A)!.t).toEqual([1000]);
  });

  it('a new session that goes back in time (replay restarted) restarts the buffer', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 9000, { session_id: 'aa', seq: 5 }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1000, { session_id: 'bb', seq: 0 }) });
    const v = s.vehicles.get(VIN_A)!;
    expect(v.t).toEqual([1000]);
    expect(v.sessionId).toBe('bb');
  });

  it('seed-form readings without session info are de-duplicated by timestamp', () => {
    const s = initialState();
    const seed = (t: number) => reading(VIN_A, t, { session_id: undefined, seq: undefined });
    msg(s, { type: 'telemetry', data: seed(1000) });
    msg(s, { type: 'telemetry', data: seed(1000) });
    msg(s, { type: 'telemetry', data: seed(2000) });
    expect(s.vehicles.get(VIN_A)!.t).toEqual([1000, 2000]);
  });
});

describe('transmitted vs reconstructed', () => {
  it('uses `transmitted`, else everything non-null not in predicted_fields', () => {
    expect([...transmittedSet(reading(VIN_A, 1))].sort()).toEqual(['latitude', 'longitude', 'speed']);
    const noTx = reading(VIN_A, 1, { transmitted: undefined, predicted_fields: ['battery'], altitude: null });
    expect([...transmittedSet(noTx)].sort()).toEqual(['heading', 'latitude', 'longitude', 'power', 'speed']);
    const neither = reading(VIN_A, 1, { transmitted: undefined, predicted_fields: undefined });
    expect(transmittedSet(neither).size).toBe(7);
  });

  it('splits each chart into a full line, transmitted points and reconstructed points', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1000, { speed: 10, transmitted: ['speed'] }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 2000, { speed: 11, transmitted: [] }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 3000, { speed: null, transmitted: [] }) });
    const d = chartData(s, 'speed', [VIN_A]);
    expect(d.x).toEqual([1, 2, 3]);
    expect(d.series).toHaveLength(1);
    expect(d.series[0].line).toEqual([10, 11, null]);
    expect(d.series[0].transmitted).toEqual([10, null, null]);
    expect(d.series[0].reconstructed).toEqual([null, 11, null]);
    expect(d.transmittedCount).toBe(1);
    expect(d.reconstructedCount).toBe(1);
  });

  it('aligns several vehicles on the union of their timestamps', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1000, { speed: 1 }) });
    msg(s, { type: 'telemetry', data: reading(VIN_B, 1500, { speed: 2 }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 2000, { speed: 3 }) });
    const d = chartData(s, 'speed', [VIN_A, VIN_B]);
    expect(d.x).toEqual([1, 1.5, 2]);
    expect(d.series.map((x) => x.line)).toEqual([
      [1, null, 3],
      [null, 2, null],
    ]);
  });

  it('the position track marks a point transmitted when latitude or longitude was sent', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1000, { transmitted: ['longitude'] }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 2000, { transmitted: [] }) });
    msg(s, { type: 'telemetry', data: reading(VIN_A, 3000, { latitude: null }) });
    expect(track(s, VIN_A).map((p) => p.transmitted)).toEqual([true, false]);
    expect(track(s, 'NOPE')).toEqual([]);
  });
});

describe('buffer bounds', () => {
  it(`keeps the newest ${MAX_POINTS} points per vehicle, columns aligned`, () => {
    const s = initialState();
    for (let i = 1; i <= MAX_POINTS + 150; i++) msg(s, { type: 'telemetry', data: reading(VIN_A, i * 100, { seq: i }) });
    const v = s.vehicles.get(VIN_A)!;
    expect(v.t).toHaveLength(MAX_POINTS);
    expect(v.t[0]).toBe(151 * 100);
    expect(v.t[MAX_POINTS - 1]).toBe((MAX_POINTS + 150) * 100);
    for (const col of [...Object.values(v.values), ...Object.values(v.transmitted)]) expect(col).toHaveLength(MAX_POINTS);
    expect(v.received).toBe(MAX_POINTS + 150);
  });

  it('50 vehicles stay bounded; watching all charts every vehicle, a page at a time', () => {
    const s = initialState();
    const vins = Array.from({ length: 50 }, (_, i) => `LOCKSTEPTEST${String(i).padStart(5, '0')}`);
    for (let k = 1; k <= 700; k++) for (const vin of vins) msg(s, { type: 'telemetry', data: reading(vin, k * 100, { seq: k }) });
    expect(s.vehicles.size).toBe(50);
    for (const v of s.vehicles.values()) expect(v.t.length).toBe(MAX_POINTS);
    const pages = Math.ceil(50 / MAX_CHARTED);
    expect(chartPlan(s).pages).toBe(pages);
    const seen = Array.from({ length: pages }, (_, p) => chartPlan(s, p).vins).flat();
    expect(seen).toEqual(vins);
    expect(chartPlan(s, 99).page).toBe(pages - 1);
    expect(chartPlan(s, -3).vins).toEqual(vins.slice(0, MAX_CHARTED));
    reduce(s, { kind: 'select', vins: vins.slice(10, 20) });
    expect(chartedVins(s)).toEqual(vins.slice(10, 10 + MAX_CHARTED));
    expect(chartPlan(s, 1).vins).toEqual(vins.slice(10 + MAX_CHARTED, 20));
  });

  it('watching all with three vehicles charts all three', () => {
    const s = initialState();
    for (const vin of [VIN_B, VIN_A, 'LOCKSTEPTEST00003']) msg(s, { type: 'telemetry', data: reading(vin, 1000) });
    expect(chartPlan(s)).toEqual({ vins: [VIN_A, VIN_B, 'LOCKSTEPTEST00003'], pool: [VIN_A, VIN_B, 'LOCKSTEPTEST00003'], page: 0, pages: 1 });
    expect(readingsHeld(s)).toBe(3);
  });

  it(`keeps the newest ${MAX_LOG} log lines`, () => {
    const s = initialState();
    for (let i = 0; i < MAX_LOG + 20; i++) msg(s, { type: 'log', data: { level: 'info', source: 'server', message: `m${i}`, timestamp: i } });
    expect(s.logs).toHaveLength(MAX_LOG);
    expect(s.logs[0].message).toBe('m20');
  });
});

describe('statistics', () => {
  const stats: CompressionStats = {
    total_readings: 700,
    transmitted_readings: 200,
    skipped_readings: 500,
    compression_ratio: 500 / 700,
    bytes_received: 1500,
    vehicles: {
      [VIN_A]: { readings: 100, fields_total: 700, fields_transmitted: 200, fields_skipped: 500, bytes_received: 1500, compression_ratio: 500 / 700 },
    },
  };

  it('stores overall and per-vehicle statistics and counts updates', () => {
    const s = initialState();
    msg(s, { type: 'compression_stats', data: stats });
    msg(s, { type: 'compression_stats', data: { ...stats, total_readings: 701 } });
    expect(s.statsUpdates).toBe(2);
    expect(s.stats!.total_readings).toBe(701);
    expect(s.vehicles.get(VIN_A)!.stats!.fields_skipped).toBe(500);
  });

  it('derives skipped % and bytes saved against raw readings', () => {
    const o = overallStats(stats)!;
    expect(o.skippedPct).toBeCloseTo(71.43, 2);
    // raw = 100 readings * 25 B + 700 fields * 8 B = 8100 B; received 1500.
    expect(o.bytesSaved).toBe(6600);
    const v = vehicleStats(stats.vehicles![VIN_A])!;
    expect(v.bytesSaved).toBe(6600);
    expect(v.fieldsTransmitted).toBe(200);
  });

  it('reads fields from fields_total and readings from total_readings when the server sends both', () => {
    const o = overallStats({
      total_readings: 100,
      fields_total: 700,
      transmitted_readings: 200,
      skipped_readings: 500,
      compression_ratio: 5 / 7,
      bytes_received: 1500,
    })!;
    expect(o.fieldsTotal).toBe(700);
    expect(o.skippedPct).toBeCloseTo(71.43, 2);
    // raw = 100 readings * 25 B + 700 fields * 8 B = 8100 B; received 1500.
    expect(o.bytesSaved).toBe(6600);
  });

  it('unknown bytes or zero fields give no numbers rather than nonsense', () => {
    const o = overallStats({ total_readings: 0, transmitted_readings: 0, skipped_readings: 0, compression_ratio: 0 })!;
    expect(o.skippedPct).toBeNull();
    expect(o.bytesSaved).toBeNull();
    expect(vehicleStats(null)).toBeNull();
  });
});

describe('logger, log, lagged, vehicles', () => {
  it('tracks logger state from messages and requests', () => {
    const s = initialState();
    reduce(s, { kind: 'logger_request', busy: true, error: null });
    expect(s.loggerBusy).toBe(true);
    msg(s, { type: 'logger', data: { running: true, pid: 42, started_at_ms: 1, last_exit_code: null, last_run_s: null } });
    expect(s.logger!.running).toBe(true);
    expect(s.loggerBusy).toBe(false);
    reduce(s, { kind: 'logger_request', busy: false, error: 'nope' });
    expect(s.loggerError).toBe('nope');
    reduce(s, { kind: 'logger_status', status: { running: false, pid: null, started_at_ms: null, last_exit_code: 0, last_run_s: 3.5 } });
    expect(s.logger).toMatchObject({ running: false, last_exit_code: 0 });
  });

  it('appends log messages', () => {
    const s = initialState();
    msg(s, { type: 'log', data: { level: 'warn', source: 'logger', message: 'spool full', timestamp: 3 } });
    expect(s.logs).toEqual([{ level: 'warn', source: 'logger', message: 'spool full', timestamp: 3 }]);
  });

  it('lagged counts dropped messages and leaves a warning in the log', () => {
    const s = initialState();
    msg(s, { type: 'lagged', data: { dropped: 5 } });
    msg(s, { type: 'lagged', data: { dropped: 7 } });
    expect(s.lagged).toEqual({ events: 2, dropped: 12 });
    expect(s.logs).toHaveLength(2);
    expect(s.logs[1].level).toBe('warn');
    expect(s.logs[1].message).toContain('7');
  });

  it('gap counts missed messages and leaves a warning in the log', () => {
    const s = initialState();
    msg(s, { type: 'gap', data: { missed: null, reason: 'bridge_down' } });
    msg(s, { type: 'gap', data: { missed: 4, reason: 'dropped' } });
    expect(s.lagged).toEqual({ events: 2, dropped: 4 });
    expect(s.logs).toHaveLength(2);
    expect(s.logs[0].message).toContain('other instances');
    expect(s.logs[1].message).toContain('4');
  });

  it('merges GET /api/vehicles into last-seen without inventing points', () => {
    const s = initialState();
    msg(s, { type: 'telemetry', data: reading(VIN_A, 1000) });
    reduce(s, { kind: 'vehicles', list: [{ vin: VIN_A, first_seen_ms: 1, last_seen_ms: 900, readings: 10 }, { vin: VIN_B, first_seen_ms: 1, last_seen_ms: 3000, readings: 2 }] });
    expect(s.vehicles.get(VIN_A)!.lastSeenMs).toBe(1000);
    expect(s.vehicles.get(VIN_A)!.storedReadings).toBe(10);
    expect(s.vehicles.get(VIN_B)!.lastSeenMs).toBe(3000);
    expect(s.vehicles.get(VIN_B)!.t).toEqual([]);
    // Watching all: the first vehicle *with points* is charted.
    expect(chartedVins(s)).toEqual([VIN_A]);
  });

  it('select de-duplicates and sorts', () => {
    const s = initialState();
    reduce(s, { kind: 'select', vins: [VIN_B, VIN_A, VIN_B] });
    expect(s.selected).toEqual([VIN_A, VIN_B]);
  });

  it('connection phases count successful connects', () => {
    const s = initialState();
    reduce(s, { kind: 'connection', phase: 'connected', attempt: 0, retryInMs: null });
    reduce(s, { kind: 'connection', phase: 'reconnecting', attempt: 0, retryInMs: 500 });
    reduce(s, { kind: 'connection', phase: 'connected', attempt: 0, retryInMs: null });
    expect(s.connection).toEqual({ phase: 'connected', attempt: 0, retryInMs: null, connects: 2 });
  });
});

describe('Store', () => {
  it('bumps the version per action and batches message notifications through the scheduler', () => {
    const queued: (() => void)[] = [];
    const store = new Store((fn) => queued.push(fn));
    let calls = 0;
    const off = store.subscribe(() => (calls += 1));
    for (let i = 1; i <= 10; i++) store.dispatch({ kind: 'message', msg: { type: 'telemetry', data: reading(VIN_A, i * 10) }, now: 0 });
    expect(store.getVersion()).toBe(10);
    expect(queued).toHaveLength(1);
    queued.shift()!();
    expect(calls).toBe(1);
    // UI actions notify synchronously.
    store.dispatch({ kind: 'select', vins: [VIN_A] });
    expect(calls).toBe(2);
    expect(queued).toHaveLength(0);
    off();
    store.dispatch({ kind: 'select', vins: [] });
    expect(calls).toBe(2);
  });
});

describe('log lines', () => {
  const line = (timestamp: number, message: string, source = 'server') => ({ level: 'info' as const, source, message, timestamp });

  it('strips the timestamp and level a child process printed itself (one time per line)', () => {
    expect(cleanLogMessage('2026-12-01T05:25:24.123456Z  INFO simulating 3 vehicles')).toBe('simulating 3 vehicles');
    expect(cleanLogMessage('\x1b[2m2026-12-01T05:25:24Z\x1b[0m \x1b[32m WARN\x1b[0m spool full')).toBe('spool full');
    expect(cleanLogMessage('Logger started (pid 7)')).toBe('Logger started (pid 7)');
    const s = initialState();
    msg(s, { type: 'log', data: line(5, '2026-12-01T05:25:24.1Z ERROR lockstep-edge: connection refused', 'logger') });
    expect(s.logs[0].message).toBe('lockstep-edge: connection refused');
  });

  it('recent lines repeated after a reconnect are not shown twice, and stay in time order', () => {
    const s = initialState();
    // First connect: the server replays two recent lines, then a live one arrives.
    for (const l of [line(10, 'a'), line(20, 'b'), line(30, 'live')]) msg(s, { type: 'log', data: l });
    // Reconnect: the replay repeats them and includes one the page missed while away.
    for (const l of [line(10, 'a'), line(20, 'b'), line(25, 'missed'), line(30, 'live')]) msg(s, { type: 'log', data: l });
    expect(s.logs.map((l) => l.message)).toEqual(['a', 'b', 'missed', 'live']);
    // Same time, different text is a different line.
    msg(s, { type: 'log', data: line(30, 'other') });
    expect(s.logs).toHaveLength(5);
  });
});

describe('bounded compression_stats', () => {
  const vs = (readings: number) => ({ readings, fields_total: readings * 7, fields_transmitted: readings, fields_skipped: readings * 6, bytes_received: readings * 10, compression_ratio: 6 / 7 });

  it('vehicles missing from a later message keep their numbers; the panel lists the ones sent', () => {
    const s = initialState();
    msg(s, { type: 'compression_stats', data: { total_readings: 140, transmitted_readings: 20, skipped_readings: 120, compression_ratio: 6 / 7, vehicles: { [VIN_A]: vs(10), [VIN_B]: vs(10) } } });
    msg(s, { type: 'compression_stats', data: { total_readings: 280, transmitted_readings: 40, skipped_readings: 240, compression_ratio: 6 / 7, readings: 40, bytes_received: 400, vehicles: { [VIN_B]: vs(30) } } });
    expect(s.vehicles.get(VIN_A)!.stats!.readings).toBe(10);
    expect(s.vehicles.get(VIN_B)!.stats!.readings).toBe(30);
    expect(s.statsVins).toEqual([VIN_B]);
    // Fleet readings come from the message, not from the partial per-vehicle list.
    expect(overallStats(s.stats)!.bytesSaved).toBe(40 * 25 + 280 * 8 - 400);
  });

  it('a message without any vehicles is fine', () => {
    const s = initialState();
    msg(s, { type: 'compression_stats', data: { total_readings: 7, transmitted_readings: 1, skipped_readings: 6, compression_ratio: 6 / 7 } });
    expect(s.statsVins).toEqual([]);
    expect(overallStats(s.stats)!.fieldsTotal).toBe(7);
  });
});

describe('session', () => {
  it('without read auth everything is allowed; with it, the logger needs operator or admin', () => {
    const s = initialState();
    expect(needsLogin(s)).toBe(false); // not asked yet: no form flashes up
    reduce(s, { kind: 'session', session: { authenticated: false, role: null, read_auth: 'off' } });
    expect(canOperate(s)).toBe(true);
    expect(needsLogin(s)).toBe(false);
    reduce(s, { kind: 'session', session: { authenticated: false, role: null, read_auth: 'required' } });
    expect(needsLogin(s)).toBe(true);
    expect(canOperate(s)).toBe(false);
    reduce(s, { kind: 'session', session: { authenticated: true, role: 'viewer', read_auth: 'required' } });
    expect(needsLogin(s)).toBe(false);
    expect(canOperate(s)).toBe(false);
    for (const role of ['operator', 'admin'] as const) {
      reduce(s, { kind: 'session', session: { authenticated: true, role, read_auth: 'required' } });
      expect(canOperate(s)).toBe(true);
    }
  });
});
