// cargo lambda 1.9.2 (the local stand-in for API Gateway and Lambda) now and
// then answers a request with its own 500 (`{"type":
// "https://httpstatuses.com/500"}`) after the function answered it: it reads
// the function's response body only after it has told the function's
// runtime it received it, and under load the body is lost. The broker is
// not involved (see `emulator_faults` in scripts/stack.sh, which counts the
// same lines). A test that fails while such a 500 happened runs again, at
// most ATTEMPTS times in all; a failure without one fails at once.

import { readFileSync } from 'node:fs';
import { test as nodeTest } from 'node:test';

export const ATTEMPTS = 3;

const LOG = process.env.STACK_DIR ? `${process.env.STACK_DIR}/logs/functions.log` : null;

// cargo lambda's own 500s so far, less the broker's own (logged first as an
// internal_error or a panic).
export function emulatorFaults() {
  if (!LOG) return 0;
  let text;
  try {
    text = readFileSync(LOG, 'utf8');
  } catch {
    return 0;
  }
  const all = (text.match(/response failed classification=Status code: 500/g) || []).length;
  const own = (text.match(/request failed code="internal_error"|panicked at/g) || []).length;
  return Math.max(0, all - own);
}

// node:test's `test`, each attempt in full (the body makes its own browser
// context), again only after an emulator fault.
export function test(name, options, body) {
  return nodeTest(name, { ...options, timeout: options.timeout * ATTEMPTS }, async (t) => {
    for (let attempt = 1; ; attempt += 1) {
      const before = emulatorFaults();
      try {
        return await body(t);
      } catch (err) {
        if (attempt >= ATTEMPTS || emulatorFaults() <= before) throw err;
        console.error(`# cargo lambda answered its own 500 during attempt ${attempt} of "${name}": running it again`);
      }
    }
  });
}
