// A map-free position track: longitude across, latitude up (scaled by cos(latitude) so shapes
// are not stretched), same markers as the charts.

import { useEffect, useRef } from 'react';
import { track, type DashboardState } from '../store';
import { VEHICLE_COLORS } from '../format';

interface Props {
  state: DashboardState;
  version: number;
  vins: string[];
}

const ROW_HEIGHT = 220;
/** Panels per row; more vehicles wrap onto further rows. */
const COLUMNS = 4;

export function TrackPlot({ state, version, vins }: Props) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const tracks = vins.map((vin) => track(state, vin));
  const points = tracks.reduce((n, t) => n + t.length, 0);

  useEffect(() => {
    const c = canvas.current;
    if (!c) return;
    const dpr = window.devicePixelRatio || 1;
    const width = c.parentElement ? c.parentElement.clientWidth : 300;
    const cols = Math.max(1, Math.min(COLUMNS, tracks.length));
    const rows = Math.max(1, Math.ceil(tracks.length / cols));
    const rowH = rows === 1 ? ROW_HEIGHT : 170;
    const HEIGHT = rowH * rows;
    c.width = Math.round(width * dpr);
    c.height = Math.round(HEIGHT * dpr);
    c.style.width = `${width}px`;
    c.style.height = `${HEIGHT}px`;
    const ctx = c.getContext('2d');
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, HEIGHT);
    if (tracks.every((t) => t.length === 0)) {
      ctx.fillStyle = '#888';
      ctx.font = '13px system-ui, sans-serif';
      ctx.fillText('no position data yet', 12, 24);
      return;
    }
    // One panel per vehicle, each fitted to its own track: vehicles kilometres apart would
    // otherwise shrink every track to a dot.
    const panelW = width / cols;
    tracks.forEach((t, i) => {
      const color = VEHICLE_COLORS[i % VEHICLE_COLORS.length];
      const left = (i % cols) * panelW;
      const top = Math.floor(i / cols) * rowH;
      ctx.save();
      ctx.translate(0, top);
      drawPanel(ctx, t, color, left, panelW, rowH, i % cols > 0, top > 0);
      ctx.restore();
    });
  });

  return (
    <div className="chart track" data-signal="position" data-points={points} data-version={version}>
      <div className="chart-title">
        <strong>position</strong> <span className="muted">lat / lon track, one panel per vehicle</span>
      </div>
      <canvas ref={canvas} />
    </div>
  );
}

function drawPanel(
  ctx: CanvasRenderingContext2D,
  t: ReturnType<typeof track>,
  color: string,
  left: number,
  panelW: number,
  panelH: number,
  leftRule: boolean,
  topRule: boolean,
) {
  ctx.strokeStyle = '#e3e7ee';
  ctx.lineWidth = 1;
  if (leftRule) {
    ctx.beginPath();
    ctx.moveTo(left + 0.5, 8);
    ctx.lineTo(left + 0.5, panelH - 8);
    ctx.stroke();
  }
  if (topRule) {
    ctx.beginPath();
    ctx.moveTo(left + 8, 0.5);
    ctx.lineTo(left + panelW - 8, 0.5);
    ctx.stroke();
  }
  if (t.length === 0) return;
  let minLat = Infinity, maxLat = -Infinity, minLon = Infinity, maxLon = -Infinity;
  for (const p of t) {
    minLat = Math.min(minLat, p.lat);
    maxLat = Math.max(maxLat, p.lat);
    minLon = Math.min(minLon, p.lon);
    maxLon = Math.max(maxLon, p.lon);
  }
  const k = Math.cos((((minLat + maxLat) / 2) * Math.PI) / 180);
  const spanX = Math.max((maxLon - minLon) * k, 1e-6);
  const spanY = Math.max(maxLat - minLat, 1e-6);
  const pad = 14;
  const scale = Math.min((panelW - 2 * pad) / spanX, (panelH - 2 * pad - 14) / spanY);
  const ox = left + (panelW - spanX * scale) / 2;
  const oy = (panelH - 14 - spanY * scale) / 2;
  const X = (lon: number) => ox + (lon - minLon) * k * scale;
  const Y = (lat: number) => panelH - 14 - (oy + (lat - minLat) * scale);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1;
  ctx.beginPath();
  t.forEach((p, j) => (j === 0 ? ctx.moveTo(X(p.lon), Y(p.lat)) : ctx.lineTo(X(p.lon), Y(p.lat))));
  ctx.stroke();
  for (const p of t) {
    ctx.beginPath();
    ctx.arc(X(p.lon), Y(p.lat), 2.75, 0, 2 * Math.PI);
    ctx.fillStyle = p.transmitted ? color : '#ffffff';
    ctx.fill();
    ctx.lineWidth = 1.25;
    ctx.stroke();
  }
  // Size of the window in metres (1° of latitude ≈ 111.32 km).
  const metres = Math.max(spanX, spanY) * 111_320;
  ctx.fillStyle = '#6b7483';
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillText(`${metres < 1000 ? `${Math.round(metres)} m` : `${(metres / 1000).toFixed(1)} km`} across`, left + 8, panelH - 4);
}
