// Reads the lab's captured sessions (sg_persist, mpathpersist, dd and the pr-helper test client)
// and turns each command and its printed answer into values, so a session can be replayed against
// the device-server model and compared step by step.

export interface SampleStep {
  /** The command line after "$ ". */
  readonly command: string;
  /** Output lines between the command and "(rc=N)". */
  readonly output: readonly string[];
  readonly rc: number | null;
  /** 1-based line number of the command in the sample. */
  readonly line: number;
}

/** Split a sample into "$ command" steps; lines outside a step (comments, timings) are skipped. */
export function parseSteps(text: string): SampleStep[] {
  const steps: SampleStep[] = [];
  let current: { command: string; output: string[]; line: number } | null = null;
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    const cmd = /^\$ (.*)$/.exec(line);
    if (cmd) {
      if (current) steps.push({ ...current, rc: null });
      current = { command: cmd[1]!, output: [], line: i + 1 };
      return;
    }
    const rc = /^\(rc=(\d+)\)$/.exec(line);
    if (rc && current) {
      steps.push({ ...current, rc: Number(rc[1]) });
      current = null;
      return;
    }
    if (current) current.output.push(line);
  });
  if (current) steps.push({ ...(current as { command: string; output: string[]; line: number }), rc: null });
  return steps;
}

export type PrOp =
  | { readonly op: 'read-keys' | 'read-reservation' | 'read-full-status' }
  | { readonly op: 'register' | 'register-ignore'; readonly rk: bigint; readonly sark: bigint }
  | { readonly op: 'reserve' | 'release'; readonly rk: bigint; readonly type: number }
  | { readonly op: 'clear'; readonly rk: bigint };

export interface PersistCommand {
  readonly tool: 'sg_persist' | 'mpathpersist';
  readonly device: string;
  readonly pr: PrOp;
}

/** Parse an sg_persist / mpathpersist command line (the options the lab used). */
export function parsePersistCommand(command: string): PersistCommand | null {
  const words = command.trim().split(/\s+/);
  const tool = words[0];
  if (tool !== 'sg_persist' && tool !== 'mpathpersist') return null;
  const device = words[words.length - 1]!;
  const opt = (name: string): string | undefined => {
    const w = words.find((x) => x.startsWith(`--${name}=`));
    return w?.slice(name.length + 3);
  };
  const has = (...names: string[]): boolean => words.some((w) => names.includes(w));
  const key = (name: string): bigint => BigInt(opt(name) ?? '0');
  let pr: PrOp;
  if (has('--in')) {
    if (has('-k', '--read-keys')) pr = { op: 'read-keys' };
    else if (has('-r', '--read-reservation')) pr = { op: 'read-reservation' };
    else if (has('-s', '--read-status', '--read-full-status')) pr = { op: 'read-full-status' };
    else throw new Error(`Cannot parse PR IN command: ${command}`);
  } else if (has('--out')) {
    const type = Number(opt('prout-type') ?? '0');
    if (has('--register')) pr = { op: 'register', rk: key('param-rk'), sark: key('param-sark') };
    else if (has('--register-ignore')) pr = { op: 'register-ignore', rk: 0n, sark: key('param-sark') };
    else if (has('--reserve')) pr = { op: 'reserve', rk: key('param-rk'), type };
    else if (has('--release')) pr = { op: 'release', rk: key('param-rk'), type };
    else if (has('--clear')) pr = { op: 'clear', rk: key('param-rk') };
    else throw new Error(`Cannot parse PR OUT command: ${command}`);
  } else {
    throw new Error(`Cannot parse persist command: ${command}`);
  }
  return { tool, device, pr };
}

/** What a step printed, as values. */
export type PrintedAnswer =
  | { readonly kind: 'keys'; readonly generation: number; readonly keys: readonly bigint[] }
  | { readonly kind: 'reservation'; readonly generation: number; readonly reservation: { readonly key: bigint; readonly type: number } | null }
  | {
      readonly kind: 'full-status';
      readonly generation: number;
      readonly descriptors: readonly {
        readonly key: bigint;
        readonly allTgPt: boolean;
        readonly relativeTargetPortId: number;
        readonly holder: boolean;
        readonly type: number | null;
        readonly sasAddress: bigint;
      }[];
    }
  | { readonly kind: 'sense'; readonly senseKey: number; readonly asc: number; readonly ascq: number }
  | { readonly kind: 'none' };

const TYPE_NAMES: Record<string, number> = {
  'Write Exclusive': 1,
  'Exclusive Access': 3,
  'Write Exclusive, registrants only': 5,
  'Exclusive Access, registrants only': 6,
  'Write Exclusive, all registrants': 7,
  'Exclusive Access, all registrants': 8,
};
const SENSE_KEYS: Record<string, number> = { 'Not Ready': 2, 'Illegal Request': 5, 'Unit Attention': 6, 'Aborted Command': 0xb };
const ADDITIONAL_SENSE: Record<string, [number, number]> = {
  'Reservations preempted': [0x2a, 0x03],
  'Reservations released': [0x2a, 0x04],
  'Registrations preempted': [0x2a, 0x05],
  'Logical unit communication failure': [0x08, 0x00],
  'Invalid field in cdb': [0x24, 0x00],
  'Invalid field in parameter list': [0x26, 0x00],
};

function typeFromText(text: string): number {
  const t = TYPE_NAMES[text.trim()];
  if (t === undefined) throw new Error(`Cannot parse reservation type: ${text}`);
  return t;
}

/** Parse what sg_persist or mpathpersist printed for one command. */
export function parsePrinted(output: readonly string[]): PrintedAnswer {
  const text = output.join('\n');
  const senseKey = /Sense key: ([A-Za-z ]+)/.exec(text);
  if (senseKey) {
    const add = /Additional sense: (.+)/.exec(text);
    const pair = add ? ADDITIONAL_SENSE[add[1]!.trim()] : undefined;
    const key = SENSE_KEYS[senseKey[1]!.trim()];
    if (key === undefined || !pair) throw new Error(`Cannot parse sense: ${text}`);
    return { kind: 'sense', senseKey: key, asc: pair[0], ascq: pair[1] };
  }
  const gen = /PR generation=0x([0-9a-f]+)/.exec(text);
  if (!gen) return { kind: 'none' };
  const generation = parseInt(gen[1]!, 16);
  if (/registered reservation key|NO registered reservation keys/.test(text)) {
    const keys = output.filter((l) => /^\s+0x[0-9a-f]+\s*$/.test(l)).map((l) => BigInt(l.trim()));
    return { kind: 'keys', generation, keys };
  }
  if (/Reservation follows|NO reservation held/.test(text)) {
    if (/NO reservation held/.test(text)) return { kind: 'reservation', generation, reservation: null };
    const key = /Key\s*=\s*(0x[0-9a-f]+)/.exec(text);
    const type = /scope\s*[:=]\s*LU_SCOPE,\s*type\s*[:=]\s*(.+)$/m.exec(text);
    return { kind: 'reservation', generation, reservation: { key: BigInt(key![1]!), type: typeFromText(type![1]!) } };
  }
  // READ FULL STATUS
  const descriptors: Extract<PrintedAnswer, { kind: 'full-status' }>['descriptors'][number][] = [];
  let cur: { key: bigint; allTgPt: boolean; relativeTargetPortId: number; holder: boolean; type: number | null; sasAddress: bigint } | null = null;
  for (const line of output) {
    const k = /^\s+Key=(0x[0-9a-f]+)/.exec(line);
    if (k) {
      if (cur) descriptors.push(cur);
      cur = { key: BigInt(k[1]!), allTgPt: false, relativeTargetPortId: 0, holder: false, type: null, sasAddress: 0n };
      continue;
    }
    if (!cur) continue;
    if (/All target ports bit set/.test(line)) cur.allTgPt = true;
    const rp = /Relative port address: 0x([0-9a-f]+)/.exec(line);
    if (rp) cur.relativeTargetPortId = parseInt(rp[1]!, 16);
    if (/<< Reservation holder >>/.test(line)) cur.holder = true;
    const t = /scope: LU_SCOPE,\s+type: (.+)$/.exec(line);
    if (t) cur.type = typeFromText(t[1]!);
    const sas = /SAS address: (0x[0-9a-f]+)/.exec(line);
    if (sas) cur.sasAddress = BigInt(sas[1]!);
  }
  if (cur) descriptors.push(cur);
  return { kind: 'full-status', generation, descriptors };
}
