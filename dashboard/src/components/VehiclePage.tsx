// One vehicle: what the server knows about it and its daily compression statistics.

import { useEffect, useState } from 'react';
import { dayOf, type VehicleDailyStats, type VehicleDetail } from '../api';
import type { DashboardClient } from '../client';
import { formatCount, formatDateTime, formatPct } from '../format';
import { presetRange } from '../history';
import { routeHref } from '../route';

/** Days of statistics shown, back from the vehicle's last reading. */
const STATS_DAYS = 30;

type Load<T> = { state: 'loading' } | { state: 'error'; message: string } | { state: 'done'; value: T };

export function VehiclePage({ client, vin }: { client: DashboardClient; vin: string }) {
  const [detail, setDetail] = useState<Load<VehicleDetail | null>>({ state: 'loading' });
  const [days, setDays] = useState<Load<VehicleDailyStats>>({ state: 'loading' });

  useEffect(() => {
    let live = true;
    setDetail({ state: 'loading' });
    setDays({ state: 'loading' });
    const fail = (set: (l: Load<never>) => void) => (e: unknown) => live && set({ state: 'error', message: e instanceof Error ? e.message : String(e) });
    client.api
      .vehicle(vin)
      .then((d) => {
        if (!live) return;
        setDetail({ state: 'done', value: d });
        if (!d) return;
        const to = dayOf(d.last_seen_ms);
        const from = dayOf(Math.max(d.first_seen_ms, d.last_seen_ms - (STATS_DAYS - 1) * 86_400_000));
        return client.api.dailyStats(vin, from, to).then((s) => live && setDays({ state: 'done', value: s }), fail(setDays));
      })
      .catch(fail(setDetail));
    return () => {
      live = false;
    };
  }, [client, vin]);

  return (
    <main className="vehicle-page" data-testid="vehicle-page">
      <section className="panel">
        <p className="small">
          <a href={routeHref({ view: 'live' })}>← live view</a>
        </p>
        <h2 className="mono">{vin}</h2>
        {detail.state === 'loading' && <p className="muted">Loading…</p>}
        {detail.state === 'error' && <p className="error">Could not load the vehicle: {detail.message}</p>}
        {detail.state === 'done' && detail.value === null && (
          <p className="error" data-testid="vehicle-unknown">
            The server knows no vehicle with this VIN.
          </p>
        )}
        {detail.state === 'done' && detail.value && <Details d={detail.value} />}
      </section>
      {detail.state === 'done' && detail.value && (
        <section className="panel">
          <h2>Compression per day (UTC)</h2>
          {days.state === 'loading' && <p className="muted">Loading…</p>}
          {days.state === 'error' && <p className="error">Could not load the statistics: {days.message}</p>}
          {days.state === 'done' && <DayTable s={days.value} />}
        </section>
      )}
    </main>
  );
}

function Details({ d }: { d: VehicleDetail }) {
  const r = presetRange(d.first_seen_ms, d.last_seen_ms, null);
  const rows: [string, string][] = [
    ['model', d.model ?? '–'],
    ['year', d.year === null ? '–' : String(d.year)],
    ['first reading', formatDateTime(d.first_seen_ms)],
    ['last reading', formatDateTime(d.last_seen_ms)],
    ['readings stored', formatCount(d.readings)],
    ['sessions', formatCount(d.sessions)],
    ['resyncs', formatCount(d.resyncs)],
    ['last keyframe', formatDateTime(d.last_keyframe_ms)],
  ];
  return (
    <>
      <table className="details" data-testid="vehicle-details">
        <tbody>
          {rows.map(([k, v]) => (
            <tr key={k}>
              <th>{k}</th>
              <td>{v}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <p>
        <a href={routeHref({ view: 'history', vin: d.vin, from: r.from, to: r.to })} data-testid="vehicle-history-link">
          Show its history →
        </a>
      </p>
    </>
  );
}

function DayTable({ s }: { s: VehicleDailyStats }) {
  if (s.days.length === 0) return <p className="muted">No statistics for these days.</p>;
  const days = [...s.days].sort((a, b) => (a.day < b.day ? 1 : -1));
  return (
    <div className="table-scroll">
      <table data-testid="vehicle-days">
        <thead>
          <tr>
            <th>day</th>
            <th>readings</th>
            <th>fields</th>
            <th>sent</th>
            <th>skipped</th>
            <th title="fields skipped as a share of all fields">skipped %</th>
          </tr>
        </thead>
        <tbody>
          {days.map((d) => (
            <tr key={d.day}>
              <td className="mono">{d.day}</td>
              <td>{formatCount(d.readings)}</td>
              <td>{formatCount(d.fields_total)}</td>
              <td>{formatCount(d.fields_transmitted)}</td>
              <td>{formatCount(d.fields_skipped)}</td>
              <td className="strong">{formatPct(d.fields_total > 0 ? (100 * d.fields_skipped) / d.fields_total : null)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
