// Small display helpers shared by the components (pure, unit-tested).

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${Math.round(v)} B` : `${v.toFixed(1)} ${units[i]}`;
}

export function formatPct(p: number | null | undefined): string {
  return p === null || p === undefined || !Number.isFinite(p) ? '–' : `${p.toFixed(1)} %`;
}

/** "3 s ago", "5 min ago", "2 h ago"; "–" when unknown. */
export function formatAge(thenMs: number | null, nowMs: number): string {
  if (thenMs === null) return '–';
  const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function formatTime(ms: number | null): string {
  if (ms === null) return '–';
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? '–' : d.toLocaleTimeString();
}

/** Colours for up to MAX_CHARTED vehicles (Okabe–Ito, distinct for colour-blind readers; yellow swapped for wine). */
export const VEHICLE_COLORS = ['#0072b2', '#d55e00', '#009e73', '#cc79a7', '#e69f00', '#56b4e9', '#000000', '#882255'];

export function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

/** "2026-12-01 05:25:24" in local time, for absolute times on the history and vehicle pages. */
export function formatDateTime(ms: number | null): string {
  if (ms === null || !Number.isFinite(ms)) return '–';
  const d = new Date(ms);
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
