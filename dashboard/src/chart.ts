// Pure helpers for the uPlot charts (kept free of uPlot imports so they unit-test in Node).

/**
 * Fit the y axis to the data with 10 % headroom instead of uPlot's default (which pins 0 into
 * view): a battery at 93 % then shows its 0.3 % steps instead of a flat line at the top.
 */
export function yRange(_u: unknown, min: number | null, max: number | null): [number, number] {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
  const span = max - min || Math.max(Math.abs(max) * 0.01, 1);
  return [min - span * 0.1, max + span * 0.1];
}

/**
 * Indices i (into `values`) where a compass heading wraps (e.g. 359° → 2°): the line must not be
 * drawn from i-1's value to i's, or it crosses the whole chart. Null values are skipped over.
 */
export function wrapBreaks(values: (number | null)[], from = 0, to = values.length - 1): [number, number][] {
  const out: [number, number][] = [];
  let prev = -1;
  for (let i = from; i <= to; i++) {
    const v = values[i];
    if (v === null || v === undefined) continue;
    if (prev >= 0 && Math.abs(v - (values[prev] as number)) > 180) out.push([prev, i]);
    prev = i;
  }
  return out;
}
