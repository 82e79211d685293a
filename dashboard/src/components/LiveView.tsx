// The live view: vehicles, live charts, compression statistics, logger controls and the log.

import { useEffect, useState } from 'react';
import type { DashboardClient } from '../client';
import { formatAge, formatBytes, formatPct, formatTime, VEHICLE_COLORS } from '../format';
import { SIGNALS, type LoggerStartRequest, type Signal } from '../protocol';
import { routeHref } from '../route';
import {
  canOperate,
  chartPlan,
  MAX_CHARTED,
  overallStats,
  vehicleList,
  vehicleStats,
  type ChartPlan,
  type DashboardState,
  type StatsView,
} from '../store';
import { SignalChart } from './SignalChart';
import { TrackPlot } from './TrackPlot';

const CHART_SIGNALS: Signal[] = SIGNALS.filter((s) => s !== 'latitude' && s !== 'longitude');

export function useNow(everyMs: number): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const h = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(h);
  }, [everyMs]);
  return now;
}

export function LiveView({ client, version }: { client: DashboardClient; version: number }) {
  const state = client.store.state;
  const now = useNow(1000);
  const [page, setPage] = useState(0);
  const plan = chartPlan(state, page);
  const charted = plan.vins;
  return (
    <main className="live">
      <section className="panel vehicles-panel">
        <h2>Vehicles</h2>
        <VehicleTable client={client} state={state} now={now} charted={charted} />
      </section>
      <section className="panel charts-panel">
        <h2>
          Live signals{' '}
          <span className="muted">
            {charted.length === 0 ? '— no vehicle yet' : `— ${charted.length === 1 ? '1 vehicle' : `${charted.length} vehicles`}`}
          </span>
        </h2>
        <ChartPager state={state} plan={plan} setPage={setPage} />
        <Legend vins={charted} />
        <div className="charts" data-charted={charted.join(',')}>
          {CHART_SIGNALS.map((s) => (
            <SignalChart key={s} state={state} version={version} signal={s} vins={charted} />
          ))}
          <TrackPlot state={state} version={version} vins={charted} />
        </div>
      </section>
      <section className="panel stats-panel">
        <h2>Compression</h2>
        <StatsPanel state={state} charted={charted} />
      </section>
      <section className="panel logger-panel">
        <h2>Logger</h2>
        <LoggerPanel client={client} state={state} />
      </section>
      <section className="panel log-panel">
        <h2>Log</h2>
        <LogPanel state={state} />
      </section>
    </main>
  );
}

/** Says which vehicles are charted and pages through them when there are more than fit. */
function ChartPager({ state, plan, setPage }: { state: DashboardState; plan: ChartPlan; setPage: (p: number) => void }) {
  if (plan.pool.length === 0) return null;
  const first = plan.page * MAX_CHARTED + 1;
  const last = first + plan.vins.length - 1;
  const what = state.selected.length === 0 ? `all ${plan.pool.length} vehicle${plan.pool.length === 1 ? '' : 's'} with readings` : `the ${plan.pool.length} watched vehicle${plan.pool.length === 1 ? '' : 's'}`;
  return (
    <div className="row pager" data-testid="chart-pager">
      <span>
        Charting {what}
        {plan.pages > 1 && (
          <>
            {' '}
            — showing {first}–{last}, {MAX_CHARTED} at a time
          </>
        )}
        .
      </span>
      {plan.pages > 1 && (
        <>
          <button onClick={() => setPage(plan.page - 1)} disabled={plan.page === 0} aria-label="previous vehicles">
            ‹ previous
          </button>
          <span className="muted">
            page {plan.page + 1} of {plan.pages}
          </span>
          <button onClick={() => setPage(plan.page + 1)} disabled={plan.page >= plan.pages - 1} aria-label="next vehicles">
            next ›
          </button>
        </>
      )}
    </div>
  );
}

function Legend({ vins }: { vins: string[] }) {
  return (
    <>
      <div className="legend">
        <span>
          <svg width="14" height="14"><circle cx="7" cy="7" r="4" fill="#444" stroke="#444" /></svg> transmitted (sent on the wire)
        </span>
        <span>
          <svg width="14" height="14"><circle cx="7" cy="7" r="4" fill="#fff" stroke="#444" strokeWidth="1.5" /></svg> reconstructed by the shared predictor (not sent)
        </span>
        <span>
          <svg width="20" height="14"><line x1="0" y1="7" x2="20" y2="7" stroke="#444" /></svg> value the server holds
        </span>
      </div>
      <div className="legend vehicles-legend" data-testid="charted-vehicles">
        {vins.map((vin, i) => (
          <span key={vin} className="mono">
            <svg width="14" height="14"><rect x="2" y="2" width="10" height="10" fill={VEHICLE_COLORS[i % VEHICLE_COLORS.length]} /></svg> {vin}
          </span>
        ))}
      </div>
    </>
  );
}

function VehicleTable({ client, state, now, charted }: { client: DashboardClient; state: DashboardState; now: number; charted: string[] }) {
  const list = vehicleList(state);
  const selected = new Set(state.selected);
  if (list.length === 0) {
    return (
      <p className="muted" data-testid="no-vehicles">
        No vehicles yet. Press <strong>Start logger</strong> below to simulate a few, or from a checkout of the repository run
        <code className="cmd">cargo run --release -p lockstep-edge -- simulate --server {window.location.origin}</code>
      </p>
    );
  }
  return (
    <>
      <div className="row">
        <button onClick={() => client.select([])} disabled={state.selected.length === 0}>
          Watch all
        </button>
        <span className="muted">
          {state.selected.length === 0
            ? `Watching all ${list.length} vehicles; every one with readings on this page is charted.`
            : `Watching ${state.selected.length} of ${list.length} vehicles; only they are charted.`}{' '}
          Tick vehicles to watch only those.
        </span>
      </div>
      <div className="table-scroll">
        <table data-testid="vehicles">
          <thead>
            <tr>
              <th />
              <th>VIN</th>
              <th>last seen</th>
              <th title="readings held on this page">points</th>
              <th>skipped</th>
            </tr>
          </thead>
          <tbody>
            {list.map((v) => {
              const ci = charted.indexOf(v.vin);
              const sv = vehicleStats(v.stats);
              return (
                <tr key={v.vin} className={ci >= 0 ? 'charted' : undefined}>
                  <td>
                    <input type="checkbox" aria-label={`watch ${v.vin}`} checked={selected.has(v.vin)} onChange={() => client.toggle(v.vin)} />
                  </td>
                  <td className="mono">
                    <span className="swatch" style={{ background: ci >= 0 ? VEHICLE_COLORS[ci % VEHICLE_COLORS.length] : 'transparent' }} />
                    <a href={routeHref({ view: 'vehicle', vin: v.vin })} title="vehicle page: details and daily statistics">
                      {v.vin}
                    </a>
                  </td>
                  <td title={v.lastSeenMs === null ? '' : `last reading ${new Date(v.lastSeenMs).toISOString()}`}>
                    {formatAge(lastSeen(v.lastReceivedAt, v.lastSeenMs), now)}
                  </td>
                  <td>{v.t.length}</td>
                  <td>{formatPct(sv?.skippedPct)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </div>
    </>
  );
}

/** The newer of "this page received a reading" and "the server saw a reading" (vehicle clock). */
function lastSeen(received: number | null, seen: number | null): number | null {
  if (received === null) return seen;
  if (seen === null) return received;
  return Math.max(received, seen);
}

function StatsRows({ s }: { s: StatsView }) {
  return (
    <>
      <td>{s.fieldsTotal}</td>
      <td>{s.fieldsTransmitted}</td>
      <td className="strong">{formatPct(s.skippedPct)}</td>
      <td>{formatBytes(s.bytesReceived)}</td>
      <td>{formatBytes(s.bytesSaved)}</td>
    </>
  );
}

function StatsPanel({ state, charted }: { state: DashboardState; charted: string[] }) {
  const overall = overallStats(state.stats);
  if (!overall) return <p className="muted" data-testid="stats-empty">No statistics yet.</p>;
  // A bounded statistics message lists only some vehicles; show those it listed.
  const listed = new Set(state.statsVins);
  const perVehicle = vehicleList(state).filter((v) => v.stats && listed.has(v.vin));
  // With many vehicles, list the charted ones first and cap the table.
  const rows = [...perVehicle.filter((v) => charted.includes(v.vin)), ...perVehicle.filter((v) => !charted.includes(v.vin))].slice(0, 12);
  return (
    <div className="table-scroll">
      <table data-testid="stats" data-total={overall.fieldsTotal} data-updates={state.statsUpdates}>
        <thead>
          <tr>
            <th />
            <th>fields</th>
            <th>sent</th>
            <th>skipped</th>
            <th>bytes in</th>
            <th title={'estimated against raw readings: 8 B per field + 25 B per reading'}>bytes saved*</th>
          </tr>
        </thead>
        <tbody>
          <tr className="overall" data-testid="stats-overall">
            <td>all</td>
            <StatsRows s={overall} />
          </tr>
          {rows.map((v) => (
            <tr key={v.vin}>
              <td className="mono" title={v.vin}>…{v.vin.slice(-6)}</td>
              <StatsRows s={vehicleStats(v.stats)!} />
            </tr>
          ))}
        </tbody>
      </table>
      <p className="muted small">
        * saved versus raw readings (8-byte doubles plus a 25-byte VIN/timestamp header).
        {perVehicle.length > rows.length && ` Showing ${rows.length} of ${perVehicle.length} vehicles.`}
      </p>
    </div>
  );
}

function LoggerPanel({ client, state }: { client: DashboardClient; state: DashboardState }) {
  const [mode, setMode] = useState<'simulate' | 'replay'>('simulate');
  const [vehicles, setVehicles] = useState(3);
  const [rate, setRate] = useState(5);
  const [duration, setDuration] = useState('');
  const [replay, setReplay] = useState('');
  const [format, setFormat] = useState<'twizy' | 'cycling' | 'csv'>('twizy');
  const [speed, setSpeed] = useState(1);
  const l = state.logger;
  const running = l?.running === true;
  const allowed = canOperate(state);

  const start = () => {
    const req: LoggerStartRequest =
      mode === 'simulate'
        ? { vehicles, rate, ...(duration.trim() ? { duration_s: Number(duration) } : {}) }
        : { replay: replay.split(/[\n,]/).map((s) => s.trim()).filter(Boolean), format, speed };
    void client.startLogger(req);
  };

  return (
    <div>
      <p data-testid="logger-state" data-running={running ? 'true' : 'false'}>
        {l === null
          ? 'state unknown'
          : running
            ? `running (pid ${l.pid ?? '?'}, since ${formatTime(l.started_at_ms)})`
            : `stopped${l.last_exit_code !== null ? ` (last exit code ${l.last_exit_code}` : ''}${l.last_run_s !== null && l.last_exit_code !== null ? `, ran ${l.last_run_s.toFixed(1)} s)` : l.last_exit_code !== null ? ')' : ''}`}
      </p>
      <div className="row">
        <label>
          <input type="radio" checked={mode === 'simulate'} onChange={() => setMode('simulate')} /> simulate
        </label>
        <label>
          <input type="radio" checked={mode === 'replay'} onChange={() => setMode('replay')} /> replay a file
        </label>
      </div>
      {mode === 'simulate' ? (
        <div className="row">
          <label>
            vehicles <input type="number" min={1} max={500} value={vehicles} onChange={(e) => setVehicles(Number(e.target.value))} data-testid="logger-vehicles" />
          </label>
          <label>
            rate (Hz) <input type="number" min={0.1} step={0.1} value={rate} onChange={(e) => setRate(Number(e.target.value))} data-testid="logger-rate" />
          </label>
          <label>
            duration (s) <input type="number" className="wide" min={1} placeholder="until stopped" value={duration} onChange={(e) => setDuration(e.target.value)} />
          </label>
        </div>
      ) : (
        <div className="row">
          <label className="grow">
            file path(s) on the server <input className="grow" value={replay} onChange={(e) => setReplay(e.target.value)} placeholder="testdata/…" />
          </label>
          <label>
            format{' '}
            <select value={format} onChange={(e) => setFormat(e.target.value as 'twizy' | 'cycling' | 'csv')}>
              <option value="twizy">twizy</option>
              <option value="cycling">cycling</option>
              <option value="csv">csv</option>
            </select>
          </label>
          <label>
            speed × <input type="number" min={0.1} step={0.1} value={speed} onChange={(e) => setSpeed(Number(e.target.value))} />
          </label>
        </div>
      )}
      <div className="row">
        <button data-testid="logger-start" onClick={start} disabled={!allowed || running || state.loggerBusy || (mode === 'replay' && !replay.trim())}>
          Start logger
        </button>
        <button data-testid="logger-stop" onClick={() => void client.stopLogger()} disabled={!allowed || !running || state.loggerBusy}>
          Stop logger
        </button>
      </div>
      {!allowed && (
        <p className="muted" data-testid="logger-role">
          Signed in as {state.auth.role ?? 'nobody'}: starting and stopping the logger needs an operator or admin token.
        </p>
      )}
      {state.loggerError && <p className="error" data-testid="logger-error">{state.loggerError}</p>}
      <details className="small">
        <summary>admin token</summary>
        <p className="muted">
          Only needed when this page is not opened from the server's own machine (the server accepts logger commands from
          loopback, or with <code>LOCKSTEP_ADMIN_TOKEN</code>). Kept in this tab only.
        </p>
        <input
          type="password"
          autoComplete="off"
          defaultValue={sessionStorage.getItem('lockstep-admin-token') ?? ''}
          onChange={(e) => {
            sessionStorage.setItem('lockstep-admin-token', e.target.value);
            client.setAdminToken(e.target.value);
          }}
        />
      </details>
    </div>
  );
}

function LogPanel({ state }: { state: DashboardState }) {
  const entries = state.logs.slice(-200).reverse();
  if (entries.length === 0) return <p className="muted">No log messages yet.</p>;
  return (
    <ol className="log" data-testid="log" data-count={state.logs.length}>
      {entries.map((e, i) => (
        <li key={`${e.timestamp}-${state.logs.length - i}`} className={`log-${e.level}`}>
          <span className="muted mono">{formatTime(e.timestamp)}</span> <span className="tag">{e.source}</span> <span className="log-text">{e.message}</span>
        </li>
      ))}
    </ol>
  );
}
