import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import 'uplot/dist/uPlot.min.css';
import './styles.css';
import { App } from './App';
import { DashboardClient } from './client';
import { wsUrl, type SocketLike } from './connection';
import { Store } from './store';

const client = new DashboardClient(
  {
    wsUrl: wsUrl(window.location),
    createSocket: (url) => new WebSocket(url) as unknown as SocketLike,
    fetch: (input, init) => window.fetch(input, init),
  },
  new Store((fn) => requestAnimationFrame(fn)),
);
client.setAdminToken(sessionStorage.getItem('lockstep-admin-token') ?? '');
client.start();
// Handy in the browser console and for the end-to-end test.
(window as unknown as { lockstep: DashboardClient }).lockstep = client;

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App client={client} />
  </StrictMode>,
);
