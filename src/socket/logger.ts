// The logger the socket layer is handed. Library code never builds its own: the edge (CLI, tests)
// injects one; the default discards everything.

export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

const discard = (): void => {};

export const nullLogger: Logger = { debug: discard, info: discard, warn: discard, error: discard };
