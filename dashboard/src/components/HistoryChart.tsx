// One history chart: a min/max band with the mean line when the range is downsampled, or each
// stored reading (filled = transmitted, hollow = reconstructed) when it fits. Dragging across
// the chart zooms into the dragged span.

import { useEffect, useRef } from 'react';
import uPlot from 'uplot';
import { wrapBreaks, yRange } from '../chart';
import type { HistoryColumns, TimeRange } from '../history';
import { SIGNAL_UNITS, type Signal } from '../protocol';

interface Props {
  signal: Signal;
  cols: HistoryColumns;
  range: TimeRange;
  onZoom: (r: TimeRange) => void;
}

const COLOR = '#0072b2';
const MEAN = '#003b5c';
const BAND = 'rgba(0, 114, 178, 0.25)';
const noPath = () => null;
const HEIGHT = 160;

function series(kind: HistoryColumns['kind']): uPlot.Series[] {
  if (kind === 'buckets') {
    return [
      {},
      { label: 'min', stroke: 'rgba(0, 114, 178, 0.35)', width: 1, points: { show: false }, spanGaps: false },
      { label: 'max', stroke: 'rgba(0, 114, 178, 0.35)', width: 1, points: { show: false }, spanGaps: false },
      { label: 'mean', stroke: MEAN, width: 1.5, points: { show: false }, spanGaps: false },
    ];
  }
  return [
    {},
    { label: 'value', stroke: COLOR, width: 1, points: { show: false }, spanGaps: true },
    { label: 'transmitted', stroke: COLOR, paths: noPath, points: { show: true, size: 6, width: 1, stroke: COLOR, fill: COLOR } },
    { label: 'reconstructed', stroke: COLOR, paths: noPath, points: { show: true, size: 6, width: 1.25, stroke: COLOR, fill: '#ffffff' } },
  ];
}

function aligned(cols: HistoryColumns): uPlot.AlignedData {
  return (cols.kind === 'buckets' ? [cols.x, cols.min, cols.max, cols.mean] : [cols.x, cols.line, cols.transmitted, cols.reconstructed]) as uPlot.AlignedData;
}

export function HistoryChart({ signal, cols, range, onZoom }: Props) {
  const host = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  // The latest callbacks/range, read by uPlot hooks created once per chart.
  const latest = useRef({ onZoom, range });
  latest.current = { onZoom, range };

  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: true, y: false, setScale: false } },
      select: { show: true, left: 0, top: 0, width: 0, height: 0 },
      scales: {
        x: { time: true, range: () => [latest.current.range.from / 1000, latest.current.range.to / 1000] },
        y: { range: yRange },
      },
      axes: [{ size: 30 }, { size: 50 }],
      series: series(cols.kind),
      bands: cols.kind === 'buckets' ? [{ series: [2, 1], fill: BAND }] : undefined,
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width < 4) return;
            const from = u.posToVal(u.select.left, 'x') * 1000;
            const to = u.posToVal(u.select.left + u.select.width, 'x') * 1000;
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            if (to - from >= 1) latest.current.onZoom({ from: Math.floor(from), to: Math.ceil(to) });
          },
        ],
      },
    };
    if (signal === 'heading' && cols.kind === 'raw') {
      opts.series[1] = {
        ...opts.series[1],
        spanGaps: false,
        gaps: (u, sidx, i0, i1) =>
          wrapBreaks(u.data[sidx] as (number | null)[], i0, i1).map(([a, b]): [number, number] => [
            Math.floor(u.valToPos(u.data[0][a], 'x', true)),
            Math.ceil(u.valToPos(u.data[0][b], 'x', true)) + 1,
          ]),
      };
    }
    const u = new uPlot(opts, aligned(cols), el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(200, el.clientWidth), height: HEIGHT }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // Rebuilt only when the form changes (band vs points); data goes through setData below.
  }, [cols.kind, signal]);

  useEffect(() => {
    plot.current?.setData(aligned(cols));
  }, [cols, range.from, range.to]);

  const counts =
    cols.kind === 'raw'
      ? `${cols.transmittedCount} transmitted · ${cols.reconstructedCount} reconstructed`
      : `${cols.x.length} buckets · band = min…max, line = mean`;
  return (
    <div className="chart" data-signal={signal} data-kind={cols.kind}>
      <div className="chart-title">
        <strong>{signal}</strong> <span className="muted">{SIGNAL_UNITS[signal]}</span>
        <span className="chart-counts muted">{counts}</span>
      </div>
      <div ref={host} className="chart-plot" />
    </div>
  );
}
