import { describe, expect, it } from 'vitest';
import { backoffDelay, Connection, DEFAULT_BACKOFF, wsUrl } from '../src/connection';
import type { ConnectionPhase } from '../src/store';
import type { ServerMessage } from '../src/protocol';
import { FakeSocket, FakeTimers } from './fakes';

function setup() {
  const sockets: FakeSocket[] = [];
  const timers = new FakeTimers();
  const phases: [ConnectionPhase, number, number | null][] = [];
  const messages: ServerMessage[] = [];
  let opens = 0;
  const conn = new Connection(
    'ws://h/ws',
    { onMessage: (m) => messages.push(m), onPhase: (p, a, r) => phases.push([p, a, r]), onOpen: () => (opens += 1) },
    {
      createSocket: (url) => {
        const s = new FakeSocket(url);
        sockets.push(s);
        return s;
      },
      timers,
      random: () => 0.5,
    },
  );
  return { conn, sockets, timers, phases, messages, opens: () => opens };
}

describe('backoffDelay', () => {
  it('doubles from 500 ms up to a 10 s cap (no jitter at random = 0.5)', () => {
    const schedule = Array.from({ length: 8 }, (_, i) => backoffDelay(i, DEFAULT_BACKOFF, () => 0.5));
    expect(schedule).toEqual([500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
  });

  it('spreads by at most ±20 %', () => {
    expect(backoffDelay(0, DEFAULT_BACKOFF, () => 0)).toBe(400);
    expect(backoffDelay(0, DEFAULT_BACKOFF, () => 0.999999)).toBe(600);
    expect(backoffDelay(20, DEFAULT_BACKOFF, () => 0)).toBe(8000);
    expect(backoffDelay(20, DEFAULT_BACKOFF, () => 0.999999)).toBe(12000);
  });
});

describe('Connection', () => {
  it('connects, parses messages and reports phases', () => {
    const t = setup();
    t.conn.start();
    expect(t.sockets).toHaveLength(1);
    expect(t.sockets[0].url).toBe('ws://h/ws');
    expect(t.phases).toEqual([['connecting', 0, null]]);
    t.sockets[0].open();
    expect(t.phases.at(-1)).toEqual(['connected', 0, null]);
    expect(t.opens()).toBe(1);
    t.sockets[0].receive({ type: 'lagged', data: { dropped: 3 } });
    t.sockets[0].receive('garbage');
    t.sockets[0].receive({ type: 'unknown', data: 1 });
    expect(t.messages).toEqual([{ type: 'lagged', data: { dropped: 3 } }]);
  });

  it('reconnects with the backoff schedule and resets it after a success', () => {
    const t = setup();
    t.conn.start();
    t.sockets[0].open();
    t.sockets[0].drop();
    expect(t.phases.at(-1)).toEqual(['reconnecting', 0, 500]);
    expect(t.timers.pending()).toEqual([500]);
    // Three failed attempts in a row: 500, 1000, 2000, 4000.
    const delays: number[] = [];
    for (let i = 0; i < 3; i++) {
      delays.push(t.timers.pending()[0]);
      t.timers.fire();
      t.sockets.at(-1)!.drop();
    }
    delays.push(t.timers.pending()[0]);
    expect(delays).toEqual([500, 1000, 2000, 4000]);
    expect(t.sockets).toHaveLength(4);
    // A successful connection resets the schedule.
    t.timers.fire();
    t.sockets.at(-1)!.open();
    expect(t.opens()).toBe(2);
    t.sockets.at(-1)!.drop();
    expect(t.timers.pending()).toEqual([500]);
  });

  it('send works only while open', () => {
    const t = setup();
    t.conn.start();
    expect(t.conn.send({ type: 'subscribe', vins: [] })).toBe(false);
    t.sockets[0].open();
    expect(t.conn.send({ type: 'subscribe', vins: ['A'] })).toBe(true);
    expect(JSON.parse(t.sockets[0].sent[0])).toEqual({ type: 'subscribe', vins: ['A'] });
    t.sockets[0].drop();
    expect(t.conn.send({ type: 'stop_logger' })).toBe(false);
  });

  it('stop closes the socket and cancels a pending retry', () => {
    const t = setup();
    t.conn.start();
    t.sockets[0].drop();
    expect(t.timers.pending()).toHaveLength(1);
    t.conn.stop();
    expect(t.timers.pending()).toHaveLength(0);
    t.conn.start();
    t.sockets[1].open();
    t.conn.stop();
    expect(t.sockets[1].closed).toBe(true);
    expect(t.timers.pending()).toHaveLength(0);
  });

  it('builds ws:// or wss:// from the page location', () => {
    expect(wsUrl({ protocol: 'http:', host: 'localhost:8001' })).toBe('ws://localhost:8001/ws');
    expect(wsUrl({ protocol: 'https:', host: 'x.example' })).toBe('wss://x.example/ws');
  });
});
