import { describe, expect, it } from 'vitest';
import { parseServerMessage } from '../src/protocol';
import { reading, VIN_A } from './fixtures';

describe('parseServerMessage', () => {
  it('accepts each message type of the contract', () => {
    const r = reading(VIN_A, 1000);
    expect(parseServerMessage(JSON.stringify({ type: 'telemetry', data: r }))).toEqual({ type: 'telemetry', data: r });
    expect(parseServerMessage(JSON.stringify({ type: 'history', data: [r, r] }))?.type).toBe('history');
    expect(parseServerMessage(JSON.stringify({ type: 'compression_stats', data: { total_readings: 7, transmitted_readings: 3, skipped_readings: 4, compression_ratio: 4 / 7 } }))?.type).toBe('compression_stats');
    expect(parseServerMessage(JSON.stringify({ type: 'log', data: { level: 'info', source: 'server', message: 'hi', timestamp: 1 } }))?.type).toBe('log');
    expect(parseServerMessage(JSON.stringify({ type: 'logger', data: { running: true, pid: 9, started_at_ms: 1, last_exit_code: null, last_run_s: null } }))?.type).toBe('logger');
    expect(parseServerMessage(JSON.stringify({ type: 'lagged', data: { dropped: 12 } }))).toEqual({ type: 'lagged', data: { dropped: 12 } });
  });

  it('ignores garbage, unknown types and malformed data', () => {
    expect(parseServerMessage('not json')).toBeNull();
    expect(parseServerMessage('[1,2]')).toBeNull();
    expect(parseServerMessage(JSON.stringify({ type: 'something_new', data: {} }))).toBeNull();
    expect(parseServerMessage(JSON.stringify({ type: 'telemetry', data: { vehicle_vin: 'X' } }))).toBeNull();
    expect(parseServerMessage(JSON.stringify({ type: 'lagged', data: {} }))).toBeNull();
  });

  it('drops malformed readings inside history but keeps the rest', () => {
    const r = reading(VIN_A, 1000);
    const msg = parseServerMessage(JSON.stringify({ type: 'history', data: [r, { nope: 1 }, null] }));
    expect(msg).toEqual({ type: 'history', data: [r] });
  });
});
