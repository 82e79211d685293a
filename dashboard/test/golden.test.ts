// Every message of the server's golden file (one of each `ServerMsg` variant, checked on the Rust
// side by `protocol::tests::golden_ws_messages`) must come through the dashboard's parser intact.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parseServerMessage } from '../src/protocol';

const GOLDEN = fileURLToPath(new URL('../../crates/lockstep-server/tests/golden/ws_messages.json', import.meta.url));
const messages: { type: string; data: unknown }[] = JSON.parse(readFileSync(GOLDEN, 'utf8'));

describe('golden WebSocket messages', () => {
  it('holds at least one message', () => {
    expect(messages.length).toBeGreaterThan(0);
  });

  it.each(messages.map((m) => [m.type, m] as const))('parses %s exactly as sent', (_type, msg) => {
    expect(parseServerMessage(JSON.stringify(msg))).toEqual(msg);
  });
});
