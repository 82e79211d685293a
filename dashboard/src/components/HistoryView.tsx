// History of one vehicle over a chosen time range, read from the query API. The range lives in
// the URL (#/history?vin=…&from=…&to=…) so back/forward and links work.

import { useEffect, useMemo, useState } from 'react';
import type { VehicleSummary } from '../protocol';
import type { DashboardClient } from '../client';
import { formatCount, formatDateTime } from '../format';
import {
  chooseStep,
  fromLocalInput,
  historyColumns,
  loadRange,
  presetRange,
  RANGE_PRESETS,
  readingsIn,
  toLocalInput,
  zoom,
  type HistoryData,
  type TimeRange,
} from '../history';
import { SIGNALS, type Signal } from '../protocol';
import { routeHref, type Route } from '../route';
import { HistoryChart } from './HistoryChart';

const CHART_SIGNALS: Signal[] = SIGNALS.filter((s) => s !== 'latitude' && s !== 'longitude');
const DEFAULT_PRESET_MS = 3_600_000;

type Load = { state: 'idle' } | { state: 'loading' } | { state: 'error'; message: string } | { state: 'done'; data: HistoryData };

function go(r: Route, replace = false) {
  const href = routeHref(r);
  if (replace) window.history.replaceState(null, '', href);
  else window.location.hash = href;
  if (replace) window.dispatchEvent(new HashChangeEvent('hashchange'));
}

export function HistoryView({ client, route }: { client: DashboardClient; route: Extract<Route, { view: 'history' }> }) {
  const [vehicles, setVehicles] = useState<VehicleSummary[] | null>(null);
  const [listError, setListError] = useState<string | null>(null);
  const [load, setLoad] = useState<Load>({ state: 'idle' });

  useEffect(() => {
    let live = true;
    client.api
      .allVehicles()
      .then((list) => live && setVehicles([...list].sort((a, b) => (a.vin < b.vin ? -1 : 1))))
      .catch((e: unknown) => live && setListError(e instanceof Error ? e.message : String(e)));
    return () => {
      live = false;
    };
  }, [client]);

  const vehicle = vehicles?.find((v) => v.vin === route.vin) ?? null;
  // No vehicle or range in the URL yet: the first vehicle, its last hour.
  useEffect(() => {
    if (!vehicles || vehicles.length === 0) return;
    const v = vehicle ?? vehicles[0];
    if (route.vin === v.vin && route.from !== null && route.to !== null) return;
    const r = presetRange(v.first_seen_ms, v.last_seen_ms, DEFAULT_PRESET_MS);
    go({ view: 'history', vin: v.vin, from: r.from, to: r.to }, true);
  }, [vehicles, vehicle, route.vin, route.from, route.to]);

  const range: TimeRange | null = route.from !== null && route.to !== null && route.to > route.from ? { from: route.from, to: route.to } : null;

  useEffect(() => {
    if (!route.vin || !range) return;
    let live = true;
    setLoad({ state: 'loading' });
    loadRange(client.api, route.vin, range)
      .then((data) => live && setLoad({ state: 'done', data }))
      .catch((e: unknown) => live && setLoad({ state: 'error', message: e instanceof Error ? e.message : String(e) }));
    return () => {
      live = false;
    };
    // range is derived from route.from/route.to.
  }, [client, route.vin, route.from, route.to]);

  const setRange = (r: TimeRange) => route.vin && go({ view: 'history', vin: route.vin, from: r.from, to: r.to });
  const bounds = vehicle ? { from: vehicle.first_seen_ms, to: vehicle.last_seen_ms + 1 } : undefined;

  if (listError) return <p className="error panel">Could not load the vehicle list: {listError}</p>;
  if (vehicles === null) return <p className="muted panel">Loading vehicles…</p>;
  if (vehicles.length === 0) {
    return (
      <p className="muted panel" data-testid="history-empty">
        The server has stored no readings yet. Start the logger on the <a href={routeHref({ view: 'live' })}>live view</a> first.
      </p>
    );
  }

  return (
    <main className="history" data-testid="history-view">
      <section className="panel">
        <h2>History</h2>
        <div className="row">
          <label>
            vehicle{' '}
            <select
              value={route.vin ?? ''}
              data-testid="history-vin"
              onChange={(e) => {
                const v = vehicles.find((x) => x.vin === e.target.value);
                if (!v) return;
                const r = presetRange(v.first_seen_ms, v.last_seen_ms, DEFAULT_PRESET_MS);
                go({ view: 'history', vin: v.vin, from: r.from, to: r.to });
              }}
            >
              {vehicles.map((v) => (
                <option key={v.vin} value={v.vin}>
                  {v.vin}
                  {v.model ? ` — ${v.model}${v.year ? ` ${v.year}` : ''}` : ''}
                </option>
              ))}
            </select>
          </label>
          {vehicle && (
            <span className="muted">
              {formatCount(vehicle.readings)} readings stored, {formatDateTime(vehicle.first_seen_ms)} – {formatDateTime(vehicle.last_seen_ms)} ·{' '}
              <a href={routeHref({ view: 'vehicle', vin: vehicle.vin })}>vehicle page</a>
            </span>
          )}
        </div>
        <div className="row">
          {vehicle &&
            RANGE_PRESETS.map((p) => (
              <button key={p.label} onClick={() => setRange(presetRange(vehicle.first_seen_ms, vehicle.last_seen_ms, p.ms))}>
                {p.label}
              </button>
            ))}
        </div>
        {range && <RangeInputs range={range} onApply={setRange} />}
        {range && (
          <div className="row">
            <button onClick={() => setRange(zoom(range, 0.5))} data-testid="zoom-in">
              zoom in
            </button>
            <button onClick={() => setRange(zoom(range, 2, bounds))} data-testid="zoom-out">
              zoom out
            </button>
            <span className="muted">or drag across a chart to zoom into that span.</span>
          </div>
        )}
        <LoadStatus load={load} range={range} />
      </section>
      {load.state === 'done' && range && <Charts data={load.data} range={range} onZoom={setRange} />}
    </main>
  );
}

function RangeInputs({ range, onApply }: { range: TimeRange; onApply: (r: TimeRange) => void }) {
  const [from, setFrom] = useState(toLocalInput(range.from));
  const [to, setTo] = useState(toLocalInput(range.to));
  useEffect(() => {
    setFrom(toLocalInput(range.from));
    setTo(toLocalInput(range.to));
  }, [range.from, range.to]);
  const f = fromLocalInput(from);
  const t = fromLocalInput(to);
  const valid = f !== null && t !== null && t > f;
  return (
    <form
      className="row"
      onSubmit={(e) => {
        e.preventDefault();
        if (valid) onApply({ from: f, to: t });
      }}
    >
      <label>
        from <input type="datetime-local" step={1} value={from} onChange={(e) => setFrom(e.target.value)} data-testid="history-from" />
      </label>
      <label>
        to <input type="datetime-local" step={1} value={to} onChange={(e) => setTo(e.target.value)} data-testid="history-to" />
      </label>
      <button type="submit" disabled={!valid}>
        show
      </button>
    </form>
  );
}

function LoadStatus({ load, range }: { load: Load; range: TimeRange | null }) {
  if (load.state === 'loading') return <p className="muted">Loading…</p>;
  if (load.state === 'error') return <p className="error">Could not load the history: {load.message}</p>;
  if (load.state !== 'done' || !range) return null;
  const d = load.data;
  const n = readingsIn(d);
  // data-range names the range this text is about (the browser test waits on it after a zoom).
  const forRange = `${d.range.from}-${d.range.to}`;
  if (n === 0)
    return (
      <p className="muted" data-testid="history-status" data-range={forRange}>
        No readings in this range.
      </p>
    );
  return (
    <p data-testid="history-status" data-kind={d.kind} data-range={forRange}>
      {d.kind === 'raw' ? (
        <>
          {formatCount(n)} readings, each drawn: <strong>filled</strong> = transmitted, <strong>hollow</strong> = reconstructed by the shared predictor.
        </>
      ) : (
        <>
          {formatCount(n)} readings in {formatCount(d.buckets.length)} buckets of {formatStep(d.step || chooseStep(range.from, range.to))}: the band spans
          min…max of each bucket, the line is its mean. Zoom in to see single readings.
        </>
      )}
    </p>
  );
}

function formatStep(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms % 1000 ? 1 : 0)} s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

function Charts({ data, range, onZoom }: { data: HistoryData; range: TimeRange; onZoom: (r: TimeRange) => void }) {
  const cols = useMemo(() => CHART_SIGNALS.map((s) => [s, historyColumns(data, s)] as const), [data]);
  return (
    <section className="panel">
      <div className="charts history-charts">
        {cols.map(([s, c]) => (
          <HistoryChart key={s} signal={s} cols={c} range={range} onZoom={onZoom} />
        ))}
      </div>
    </section>
  );
}
