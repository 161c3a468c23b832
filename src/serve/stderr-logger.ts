// The daemon's own log sink: one line per event on stderr, "prmux: <level>: <message> k=v ...",
// filtered by the qemu-pr-helper verbosity flags (-q: errors only; default: warnings; -v: info;
// -vv: debug). The sink is a function so a daemonised process can point it at /dev/null.

import type { LogFields, Logger } from '../socket/logger.js';

const LEVELS = ['error', 'warn', 'info', 'debug'] as const;
type Level = (typeof LEVELS)[number];

function formatValue(v: unknown): string {
  const s = typeof v === 'string' ? v : v instanceof Error ? v.message : typeof v === 'bigint' ? v.toString() : JSON.stringify(v);
  return s !== undefined && /^[^\s"=]+$/.test(s) ? s : JSON.stringify(s ?? null);
}

export function formatLogLine(level: Level, message: string, fields?: LogFields): string {
  const kv = fields === undefined ? '' : Object.entries(fields).map(([k, v]) => ` ${k}=${formatValue(v)}`).join('');
  return `prmux: ${level}: ${message}${kv}`;
}

/** verbosity: 0 = -q, 1 = default, 2 = -v, 3+ = -vv. */
export function createLineLogger(verbosity: number, sink: (line: string) => void): Logger {
  const max = Math.max(0, Math.min(LEVELS.length - 1, verbosity));
  const at = (level: Level, i: number) => (message: string, fields?: LogFields) => {
    if (i <= max) sink(formatLogLine(level, message, fields));
  };
  return { error: at('error', 0), warn: at('warn', 1), info: at('info', 2), debug: at('debug', 3) };
}
