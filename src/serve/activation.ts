// systemd socket activation (sd_listen_fds(3)): LISTEN_PID names the process the fds are for,
// LISTEN_FDS how many there are, starting at fd 3. Pure: the caller passes env and pid.

export const SD_LISTEN_FDS_START = 3;

export type Activation =
  | { readonly kind: 'none' }
  | { readonly kind: 'socket'; readonly fd: number }
  | { readonly kind: 'error'; readonly message: string };

export function socketActivation(env: Readonly<Record<string, string | undefined>>, pid: number): Activation {
  const fds = env['LISTEN_FDS'];
  if (fds === undefined || fds === '') return { kind: 'none' };
  const listenPid = env['LISTEN_PID'];
  // Variables meant for another process (a parent that did not clear them) are not ours.
  if (listenPid === undefined || !/^\d+$/.test(listenPid) || Number(listenPid) !== pid) return { kind: 'none' };
  if (!/^\d+$/.test(fds)) return { kind: 'error', message: `Cannot use socket activation: LISTEN_FDS=${JSON.stringify(fds)} is not a number` };
  const n = Number(fds);
  if (n === 0) return { kind: 'none' };
  if (n > 1) return { kind: 'error', message: `Cannot use socket activation: LISTEN_FDS=${n}; prmux listens on exactly one socket` };
  return { kind: 'socket', fd: SD_LISTEN_FDS_START };
}

/** The variables to remove once consumed, so children (the daemon image) do not inherit them. */
export const ACTIVATION_VARIABLES = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'] as const;
