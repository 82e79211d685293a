import { describe, expect, it } from 'vitest';
import { wrapBreaks, yRange } from '../src/chart';

describe('chart helpers', () => {
  it('yRange pads the data instead of pinning zero', () => {
    expect(yRange(null, 90, 100)).toEqual([89, 101]);
    const [lo, hi] = yRange(null, 93, 93);
    expect(lo).toBeLessThan(93);
    expect(hi).toBeGreaterThan(93);
    expect(hi - lo).toBeCloseTo(0.2, 5);
    expect(yRange(null, null, null)).toEqual([0, 1]);
  });

  it('wrapBreaks finds heading wrap-arounds, skipping nulls', () => {
    expect(wrapBreaks([350, 355, 2, 10, null, 20, 25])).toEqual([[1, 2]]);
    expect(wrapBreaks([10, null, 355, 5])).toEqual([
      [0, 2],
      [2, 3],
    ]);
    expect(wrapBreaks([1, 2, 3], 1, 2)).toEqual([]);
  });
});
