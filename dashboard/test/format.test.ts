import { describe, expect, it } from 'vitest';
import { formatAge, formatBytes, formatPct } from '../src/format';

describe('format', () => {
  it('bytes', () => {
    expect(formatBytes(null)).toBe('–');
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 1024 * 1024)).toBe('3.0 MiB');
  });
  it('percent and age', () => {
    expect(formatPct(71.428)).toBe('71.4 %');
    expect(formatPct(null)).toBe('–');
    expect(formatAge(null, 0)).toBe('–');
    expect(formatAge(0, 4_000)).toBe('4 s ago');
    expect(formatAge(0, 125_000)).toBe('2 min ago');
    expect(formatAge(10_000, 0)).toBe('0 s ago');
  });
});
