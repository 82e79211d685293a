// One uPlot chart for one signal. Transmitted points are filled dots, reconstructed points are
// hollow rings, and a thin line joins every value the server holds (the reconstruction).

import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import { SIGNAL_UNITS, type Signal } from '../protocol';
import { chartData, type DashboardState } from '../store';
import { VEHICLE_COLORS } from '../format';
import { wrapBreaks, yRange } from '../chart';

interface Props {
  state: DashboardState;
  version: number;
  signal: Signal;
  vins: string[];
}

const noPath = () => null;


/**
 * Breaks the heading line where it wraps around 0°/360° instead of drawing across the chart.
 * uPlot only consults `gaps` with `spanGaps: false`; the null gaps it found are dropped so the
 * line still spans the holes that aligning several vehicles leaves (like `spanGaps: true`).
 */
const headingGaps: uPlot.Series.GapsRefiner = (u, sidx, idx0, idx1) => {
  const xs = u.data[0];
  const ys = u.data[sidx] as (number | null)[];
  // The wrapping segment is nearly vertical; clip a pixel past its end so none of it remains
  // (the point markers are separate series and stay).
  return wrapBreaks(ys, idx0, idx1).map(([a, b]): [number, number] => [
    Math.floor(u.valToPos(xs[a], 'x', true)),
    Math.ceil(u.valToPos(xs[b], 'x', true)) + 1,
  ]);
};

function seriesFor(vins: string[], signal: Signal): uPlot.Series[] {
  const out: uPlot.Series[] = [{}];
  vins.forEach((vin, i) => {
    const color = VEHICLE_COLORS[i % VEHICLE_COLORS.length];
    const tag = vin.slice(-6);
    out.push(
      {
        label: `${tag} value`,
        stroke: color,
        width: 1,
        points: { show: false },
        ...(signal === 'heading' ? { spanGaps: false, gaps: headingGaps } : { spanGaps: true }),
      },
      { label: `${tag} transmitted`, stroke: color, paths: noPath, points: { show: true, size: 6, width: 1, stroke: color, fill: color } },
      { label: `${tag} reconstructed`, stroke: color, paths: noPath, points: { show: true, size: 6, width: 1.25, stroke: color, fill: '#ffffff' } },
    );
  });
  return out;
}

export function SignalChart({ state, version, signal, vins }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const key = vins.join(',');

  // (Re)create the chart when the set of charted vehicles changes.
  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: 150,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: yRange } },
      axes: [{ size: 30 }, { size: 50, label: undefined }],
      series: seriesFor(vins, signal),
    };
    const data = toAligned(chartData(state, signal, vins));
    const u = new uPlot(opts, data, el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height: 150 }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Deliberately keyed on the vehicle set and signal only: data updates go through setData
    // below instead of rebuilding the chart.
  }, [key, signal]);

  const d = chartData(state, signal, vins);
  useEffect(() => {
    plot.current?.setData(toAligned(d));
  });

  return (
    <div className="chart" data-signal={signal} data-points={d.x.length} data-transmitted={d.transmittedCount} data-reconstructed={d.reconstructedCount} data-version={version}>
      <div className="chart-title">
        <strong>{signal}</strong> <span className="muted">{SIGNAL_UNITS[signal]}</span>
        <span className="chart-counts muted">
          {d.transmittedCount} transmitted · {d.reconstructedCount} reconstructed
        </span>
      </div>
      <div ref={host} className="chart-plot" />
    </div>
  );
}

function toAligned(d: ReturnType<typeof chartData>): uPlot.AlignedData {
  const cols: (number | null)[][] = [];
  for (const s of d.series) cols.push(s.line, s.transmitted, s.reconstructed);
  return [d.x, ...cols] as uPlot.AlignedData;
}
