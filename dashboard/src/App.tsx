// The page shell: header (navigation, connection, session), the login form when the server
// wants one, and the view the hash route names.

import { useEffect, useState, useSyncExternalStore, type FormEvent } from 'react';
import type { DashboardClient } from './client';
import { formatCount } from './format';
import { parseRoute, routeHref, type Route } from './route';
import { needsLogin, readingsHeld, type DashboardState } from './store';
import { HistoryView } from './components/HistoryView';
import { LiveView } from './components/LiveView';
import { VehiclePage } from './components/VehiclePage';

function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(window.location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(window.location.hash));
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return route;
}

export function App({ client }: { client: DashboardClient }) {
  const version = useSyncExternalStore(client.store.subscribe, client.store.getVersion);
  const state = client.store.state;
  const route = useRoute();
  const login = needsLogin(state);
  return (
    <div className="page">
      <header>
        <h1>Lockstep</h1>
        <nav>
          <a href={routeHref({ view: 'live' })} className={route.view === 'live' ? 'current' : undefined}>
            Live
          </a>
          <a href={routeHref({ view: 'history', vin: null, from: null, to: null })} className={route.view === 'history' ? 'current' : undefined}>
            History
          </a>
          <a href="/docs" target="_blank" rel="noopener" data-testid="docs-link" title="the server's interactive API documentation">
            API docs ↗
          </a>
        </nav>
        {!login && <ConnectionBadge state={state} />}
        {!login && <Summary state={state} />}
        <SessionBox client={client} state={state} />
      </header>
      {!state.auth.checked ? (
        <p className="muted">Asking the server who may read…</p>
      ) : login ? (
        <LoginForm client={client} state={state} />
      ) : route.view === 'history' ? (
        <HistoryView client={client} route={route} />
      ) : route.view === 'vehicle' ? (
        <VehiclePage client={client} vin={route.vin} />
      ) : (
        <LiveView client={client} version={version} />
      )}
    </div>
  );
}

function ConnectionBadge({ state }: { state: DashboardState }) {
  const c = state.connection;
  const text =
    c.phase === 'connected'
      ? 'connected'
      : c.phase === 'connecting'
        ? 'connecting…'
        : `reconnecting${c.retryInMs !== null ? ` in ${(c.retryInMs / 1000).toFixed(1)} s` : '…'} (attempt ${c.attempt + 1})`;
  return (
    <span className={`badge ${c.phase}`} data-testid="connection" data-phase={c.phase}>
      {text}
    </span>
  );
}

/** What the page holds: vehicles known, readings charted, and how many came with the connect. */
function Summary({ state }: { state: DashboardState }) {
  const held = readingsHeld(state);
  const n = state.vehicles.size;
  return (
    <span className="muted" data-testid="summary">
      {n} vehicle{n === 1 ? '' : 's'} · {formatCount(held)} reading{held === 1 ? '' : 's'} charted
      {state.historyReadings !== null && state.historyReadings > 0 && ` (${formatCount(state.historyReadings)} recent ones loaded on connect)`}
      {state.lagged.events > 0 && <span className="warn"> · {state.lagged.dropped} messages dropped (lagged)</span>}
    </span>
  );
}

function SessionBox({ client, state }: { client: DashboardClient; state: DashboardState }) {
  const a = state.auth;
  if (a.readAuth !== 'required' || !a.authenticated) return null;
  return (
    <span className="session" data-testid="session">
      signed in as <strong data-testid="role">{a.role ?? 'unknown role'}</strong>{' '}
      <button onClick={() => void client.logout()} data-testid="logout">
        Log out
      </button>
    </span>
  );
}

function LoginForm({ client, state }: { client: DashboardClient; state: DashboardState }) {
  const [token, setToken] = useState('');
  const submit = (e: FormEvent) => {
    e.preventDefault();
    if (token.trim()) void client.login(token).then((ok) => ok && setToken(''));
  };
  return (
    <form className="panel login" onSubmit={submit} data-testid="login-form">
      <h2>Sign in</h2>
      <p>This server only shows its data to signed-in readers. Paste the access token you were given (viewer, operator or admin).</p>
      <div className="row">
        <input
          type="password"
          className="grow"
          autoComplete="off"
          aria-label="access token"
          placeholder="access token"
          value={token}
          onChange={(e) => setToken(e.target.value)}
          data-testid="login-token"
        />
        <button type="submit" disabled={state.auth.busy || !token.trim()} data-testid="login-submit">
          Sign in
        </button>
      </div>
      {state.auth.error && (
        <p className="error" data-testid="login-error">
          {state.auth.error}
        </p>
      )}
      <p className="muted small">The token is sent once; the server answers with a session cookie this page cannot read.</p>
    </form>
  );
}
