import type { SocketLike, Timers } from '../src/connection';

/** A WebSocket stand-in the test opens, feeds and closes by hand. */
export class FakeSocket implements SocketLike {
  readyState = 0;
  sent: string[] = [];
  closed = false;
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  constructor(readonly url: string) {}
  send(data: string) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(data);
  }
  close() {
    this.closed = true;
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(msg: unknown) {
    this.onmessage?.({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) });
  }
  drop() {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({});
  }
}

/** Manual timers: `pending()` lists scheduled delays, `fire()` runs the earliest. */
export class FakeTimers implements Timers {
  private next = 1;
  private queue = new Map<number, { fn: () => void; ms: number }>();
  setTimeout(fn: () => void, ms: number) {
    const id = this.next++;
    this.queue.set(id, { fn, ms });
    return id;
  }
  clearTimeout(h: unknown) {
    this.queue.delete(h as number);
  }
  pending(): number[] {
    return [...this.queue.values()].map((t) => t.ms);
  }
  fire() {
    const [id, t] = [...this.queue.entries()][0];
    this.queue.delete(id);
    t.fn();
  }
}
