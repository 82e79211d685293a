import { describe, expect, it } from 'vitest';
import type { Bucket, StoredReading } from '../src/api';
import { bucketColumns, chooseStep, loadRange, presetRange, RAW_LIMIT, rawColumns, TARGET_BUCKETS, zoom } from '../src/history';
import { VIN_A } from './fixtures';

describe('step', () => {
  it('about a thousand buckets cover the range', () => {
    expect(chooseStep(0, 3_600_000)).toBe(3600);
    expect(Math.ceil(86_400_000 / chooseStep(0, 86_400_000))).toBeLessThanOrEqual(TARGET_BUCKETS);
    expect(chooseStep(0, 999_999)).toBe(1000);
    expect(chooseStep(5, 5)).toBe(1);
  });
});

describe('zoom and presets', () => {
  it('zooms around the centre and stays inside the vehicle’s data', () => {
    expect(zoom({ from: 1000, to: 2000 }, 0.5)).toEqual({ from: 1250, to: 1750 });
    expect(zoom({ from: 1000, to: 2000 }, 4, { from: 900, to: 2600 })).toEqual({ from: 900, to: 2600 });
    expect(presetRange(1000, 10_000, 5000)).toEqual({ from: 5001, to: 10_001 });
    expect(presetRange(1000, 10_000, null)).toEqual({ from: 1000, to: 10_001 });
    expect(presetRange(9000, 10_000, 60_000).from).toBe(9000);
  });
});

describe('columns', () => {
  it('buckets give a min/max band and a mean line, gaps where a bucket has no value', () => {
    const b: Bucket[] = [
      { timestamp: 2000, count: 0, speed: null },
      { timestamp: 1000, count: 3, speed: { min: 1, max: 5, mean: 2 } },
    ];
    expect(bucketColumns(b, 'speed')).toEqual({ kind: 'buckets', x: [1, 2], min: [1, null], max: [5, null], mean: [2, null] });
  });

  it('raw readings split into transmitted (filled) and reconstructed (hollow) points', () => {
    const r: StoredReading[] = [
      { timestamp: 2000, speed: 11, transmitted: [] },
      { timestamp: 1000, speed: 10, transmitted: ['speed'] },
      { timestamp: 3000, speed: null, transmitted: [] },
      { timestamp: 4000, speed: 12 },
    ];
    const c = rawColumns(r, 'speed');
    expect(c.x).toEqual([1, 2, 3, 4]);
    expect(c.line).toEqual([10, 11, null, 12]);
    expect(c.transmitted).toEqual([10, null, null, 12]);
    expect(c.reconstructed).toEqual([null, 11, null, null]);
    expect([c.transmittedCount, c.reconstructedCount]).toEqual([2, 1]);
  });
});

describe('loadRange', () => {
  function fakeApi(totalReadings: number) {
    const calls: string[] = [];
    return {
      calls,
      api: {
        buckets: async (_vin: string, _from: number, _to: number, step: number) => {
          calls.push(`buckets step=${step}`);
          return { vin: VIN_A, step, buckets: [{ timestamp: 0, count: totalReadings, speed: { min: 0, max: 1, mean: 0.5 } }] };
        },
        raw: async () => {
          calls.push('raw');
          return { readings: Array.from({ length: totalReadings }, (_, i) => ({ timestamp: i })), truncated: false };
        },
      },
    };
  }

  it('a wide range stays downsampled', async () => {
    const f = fakeApi(RAW_LIMIT + 1);
    const d = await loadRange(f.api, VIN_A, { from: 0, to: 86_400_000 });
    expect(d.kind).toBe('buckets');
    expect(f.calls).toEqual(['buckets step=86400']);
  });

  it('zoomed in until the readings fit, each reading is fetched', async () => {
    const f = fakeApi(40);
    const d = await loadRange(f.api, VIN_A, { from: 0, to: 60_000 });
    expect(d.kind).toBe('raw');
    expect(f.calls).toEqual(['buckets step=60', 'raw']);
  });
});
