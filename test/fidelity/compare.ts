// The fidelity check's pure core: running a scripted sequence (sequences.ts) against any executor
// (SG_IO on the lab's paths in guest-runner.ts, the model here), the JSON-lines format the guest
// runner prints, and the step-by-step comparison of two runs with its one-line summary.
//
// What is compared at each step: the SCSI status; for CHECK CONDITION the sense key/ASC/ASCQ and
// then the whole fixed-format sense bytes; for GOOD the data-in bytes. PRGENERATION (bytes 0-3 of
// READ KEYS, READ RESERVATION and READ FULL STATUS data) is compared as the delta from the
// generation read right after the sequence's reset, because LIO's counter carries over from one
// sequence to the next within a boot while the model starts each sequence afresh.

import { hex, fromHex, readU32 } from '../../src/scsi/bytes.js';
import { Opcode, PrInAction, PrOutAction, ScsiStatus, ScsiStatusName } from '../../src/scsi/constants.js';
import { PrDeviceServer, type Personality } from '../../src/scsi/model/device-server.js';
import { outcomeStatus } from '../../src/scsi/outcome.js';
import { senseKeyAscOf } from '../../src/scsi/sense.js';
import type { ScsiOutcome } from '../../src/scsi/types.js';
import { basicParams, FULL_ALLOC, prIn, prOut, relativePortOf, TEST_UNIT_READY, transportIdOf, type Command, type Sequence, type Step } from './sequences.js';

/** What one command came back with, in a JSON-friendly form. */
export interface Observed {
  /** SCSI status byte; null when no status came back (transport failure, timeout, not run). */
  readonly status: number | null;
  /** Sense bytes (hex) of a CHECK CONDITION, else ''. */
  readonly sense: string;
  /** Data-in bytes actually transferred (hex), else ''. */
  readonly data: string;
  /** Why there is no status (transport failure), or a note (the device overran the buffer). */
  readonly detail?: string;
  /**
   * Bytes the device wrote past the allocation length into the runner's padding (guest-runner.ts):
   * not transferred data, so not compared, but reported.
   */
  readonly beyond?: number;
}

/** Runs one command on nexus k (1-based). */
export type Executor = (nexus: number, command: Command) => Promise<Observed>;

export function observedFromOutcome(o: ScsiOutcome, dataInLength = 0): Observed {
  switch (o.kind) {
    case 'good': {
      // A real transport never moves more than the data-in buffer holds.
      const clipped = o.data.subarray(0, dataInLength);
      const over = o.data.length > dataInLength ? { detail: `device returned ${o.data.length} bytes for a ${dataInLength}-byte buffer` } : {};
      return { status: ScsiStatus.GOOD, sense: '', data: hex(clipped), ...over };
    }
    case 'check-condition':
      return { status: ScsiStatus.CHECK_CONDITION, sense: hex(o.sense), data: '' };
    case 'transport-failure':
      return { status: null, sense: '', data: '', detail: o.detail };
    default:
      return { status: outcomeStatus(o), sense: '', data: '' };
  }
}

// ---- the model as an executor ------------------------------------------------------------------------

/** The model with the lab's identities: nexus k = initiator SAS 0x5001405f0000000k on relative port k. */
export function makeModel(nexuses: number, personality: Personality = 'lio'): PrDeviceServer {
  const lun = new PrDeviceServer({ personality });
  for (let n = 1; n <= nexuses; n++) lun.addNexus({ id: `p${n}`, initiator: transportIdOf(n), relativeTargetPortId: relativePortOf(n) });
  return lun;
}

export function modelExecutor(lun: PrDeviceServer): Executor {
  return (nexus, command) => {
    const o = lun.execute(`p${nexus}`, command.cdb, command.dataOut ?? new Uint8Array(0));
    return Promise.resolve(observedFromOutcome(o, command.dataInLength ?? 0));
  };
}

// ---- reset between sequences -------------------------------------------------------------------------

/** The key the reset registers on nexus 1 to CLEAR with. */
export const RESET_KEY = 0xf1de11700000000dn;
/** TEST UNIT READYs per nexus to drain pending unit attentions (LIO clears them all on one report). */
const MAX_DRAIN = 8;

export interface LoggedCommand {
  readonly nexus: number;
  readonly label: string;
  readonly observed: Observed;
}

export interface ResetReport {
  /** null when the LU was brought to an empty state with no unit attention pending anywhere. */
  readonly problem: string | null;
  /** PRGENERATION right after the reset: the origin of the sequence's generation deltas. */
  readonly baseGeneration: number;
  readonly log: readonly LoggedCommand[];
}

function isUnitAttention(o: Observed): boolean {
  return o.status === ScsiStatus.CHECK_CONDITION && senseKeyAscOf(fromHex(o.sense))?.key === 0x6;
}

function isSense(o: Observed, key: number, asc: number, ascq: number): boolean {
  const s = o.status === ScsiStatus.CHECK_CONDITION ? senseKeyAscOf(fromHex(o.sense)) : null;
  return s !== null && s.key === key && s.asc === asc && s.ascq === ascq;
}

/**
 * Bring the LU to "no registration, no reservation, no pending unit attention" on every nexus
 * 1..nexuses: drain unit attentions (a booting guest sees POWER ON RESET; earlier sequences leave
 * 2A/xx behind), REGISTER AND IGNORE EXISTING KEY the reset key on nexus 1 (again with ALL_TG_PT when
 * LIO insists, LIO-BEHAVIOUR.md 9), CLEAR with it, drain the 2A/03 the CLEAR queued, then read the
 * generation. Run identically on both sides, so each sequence starts from the same observable state.
 */
export async function resetLu(exec: Executor, nexuses: number): Promise<ResetReport> {
  const log: LoggedCommand[] = [];
  const run = async (nexus: number, label: string, command: Command): Promise<Observed> => {
    const observed = await exec(nexus, command);
    log.push({ nexus, label, observed });
    return observed;
  };
  const drain = async (): Promise<string | null> => {
    for (let n = 1; n <= nexuses; n++) {
      let clean = false;
      for (let i = 0; i < MAX_DRAIN && !clean; i++) {
        const o = await run(n, 'TEST UNIT READY (drain)', TEST_UNIT_READY);
        if (o.status === ScsiStatus.GOOD) clean = true;
        else if (!isUnitAttention(o)) return `TEST UNIT READY on p${n} answered ${formatObserved(o)}`;
      }
      if (!clean) return `p${n} still reports unit attentions after ${MAX_DRAIN} TEST UNIT READYs`;
    }
    return null;
  };
  const fail = (problem: string): ResetReport => ({ problem, baseGeneration: 0, log });

  let problem = await drain();
  if (problem) return fail(problem);
  let reg = await run(1, 'REGISTER AND IGNORE (reset key)', prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, basicParams(0n, RESET_KEY)));
  if (isSense(reg, 0x5, 0x24, 0x00)) {
    reg = await run(1, 'REGISTER AND IGNORE ALL_TG_PT (reset key)',
      prOut(PrOutAction.REGISTER_AND_IGNORE_EXISTING_KEY, basicParams(0n, RESET_KEY, { allTgPt: true })));
  }
  if (reg.status !== ScsiStatus.GOOD) return fail(`REGISTER AND IGNORE of the reset key answered ${formatObserved(reg)}`);
  const clear = await run(1, 'CLEAR (reset key)', prOut(PrOutAction.CLEAR, basicParams(RESET_KEY, 0n)));
  if (clear.status !== ScsiStatus.GOOD) return fail(`CLEAR with the reset key answered ${formatObserved(clear)}`);
  problem = await drain();
  if (problem) return fail(problem);
  const keys = await run(1, 'READ KEYS (base generation)', prIn(PrInAction.READ_KEYS, FULL_ALLOC));
  const res = await run(1, 'READ RESERVATION (reset check)', prIn(PrInAction.READ_RESERVATION, FULL_ALLOC));
  if (keys.status !== ScsiStatus.GOOD || keys.data.length !== 16 || !keys.data.endsWith('00000000')) {
    return fail(`READ KEYS after the reset answered ${formatObserved(keys)}`);
  }
  if (res.status !== ScsiStatus.GOOD || res.data.length !== 16 || !res.data.endsWith('00000000')) {
    return fail(`READ RESERVATION after the reset answered ${formatObserved(res)}`);
  }
  return { problem: null, baseGeneration: readU32(fromHex(keys.data), 0), log };
}

// ---- one run of one sequence ---------------------------------------------------------------------------

export interface SequenceRun {
  readonly name: string;
  readonly reset: ResetReport;
  /** Outcomes of the steps that were run, in order (fewer than the steps when the run stopped early). */
  readonly steps: readonly Observed[];
  /** False when the runner stopped before the end (a step that never completed, a crash). */
  readonly complete: boolean;
}

/** One line of the guest runner's output. */
export type RunnerLine =
  | { readonly t: 'reset'; readonly seq: string; readonly reset: ResetReport }
  | { readonly t: 'step'; readonly seq: string; readonly i: number; readonly observed: Observed }
  | { readonly t: 'end'; readonly seq: string }
  | { readonly t: 'error'; readonly seq: string | null; readonly message: string };

/**
 * Reset the LU, then run every step of `seq`. `resetNexuses` is how many nexuses the reset drains
 * (all the lab's paths, even those the sequence does not use). Each line is passed to `emit` as it
 * happens, so a runner that is killed mid-sequence has printed what it got.
 */
export async function runSequence(exec: Executor, seq: Sequence, resetNexuses: number, emit: (line: RunnerLine) => void = () => {}): Promise<SequenceRun> {
  const reset = await resetLu(exec, resetNexuses);
  emit({ t: 'reset', seq: seq.name, reset });
  const steps: Observed[] = [];
  if (reset.problem !== null) return { name: seq.name, reset, steps, complete: false };
  for (const [i, step] of seq.steps.entries()) {
    const observed = await exec(step.nexus, step.command);
    steps.push(observed);
    emit({ t: 'step', seq: seq.name, i, observed });
  }
  emit({ t: 'end', seq: seq.name });
  return { name: seq.name, reset, steps, complete: true };
}

/** The same sequence on a fresh model (personality 'lio' unless told), with its nexus count. */
export function runOnModel(seq: Sequence, personality: Personality = 'lio'): Promise<SequenceRun> {
  return runSequence(modelExecutor(makeModel(seq.nexuses, personality)), seq, seq.nexuses);
}

/** Runs assembled from the guest runner's JSON lines; lines that are not JSON objects are reported. */
export function parseRunnerOutput(text: string): { runs: Map<string, SequenceRun>; errors: string[] } {
  const building = new Map<string, { reset: ResetReport; steps: Observed[]; complete: boolean }>();
  const errors: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    let v: RunnerLine;
    try {
      v = JSON.parse(line) as RunnerLine;
    } catch {
      errors.push(`not JSON: ${line.slice(0, 200)}`);
      continue;
    }
    switch (v.t) {
      case 'reset':
        building.set(v.seq, { reset: v.reset, steps: [], complete: false });
        break;
      case 'step': {
        const b = building.get(v.seq);
        if (!b || v.i !== b.steps.length) errors.push(`step ${v.i} of ${v.seq} out of order`);
        else b.steps.push(v.observed);
        break;
      }
      case 'end': {
        const b = building.get(v.seq);
        if (b) b.complete = true;
        else errors.push(`end of ${v.seq} without its reset`);
        break;
      }
      case 'error':
        errors.push(`${v.seq ?? 'runner'}: ${v.message}`);
        break;
      default:
        errors.push(`unknown line: ${line.slice(0, 200)}`);
    }
  }
  const runs = new Map<string, SequenceRun>();
  for (const [name, b] of building) runs.set(name, { name, reset: b.reset, steps: b.steps, complete: b.complete });
  return { runs, errors };
}

// ---- comparison --------------------------------------------------------------------------------------

export type DiffField = 'missing' | 'status' | 'sense' | 'sense-bytes' | 'data' | 'generation';

export interface StepComparison {
  readonly sequence: string;
  readonly index: number;
  readonly label: string;
  readonly expect?: string;
  /** LIO's answer; null when LIO gave none (the run stopped before this step). */
  readonly lio: Observed | null;
  readonly model: Observed;
  readonly fields: readonly DiffField[];
  readonly identical: boolean;
  /** What the difference most likely is, when it can be told from the outcomes. */
  readonly reason?: string;
  readonly lioGenerationDelta?: number;
  readonly modelGenerationDelta?: number;
}

/** Whether the data-in of this command starts with PRGENERATION. */
function carriesGeneration(command: Command): boolean {
  const cdb = command.cdb;
  if (cdb[0] !== Opcode.PERSISTENT_RESERVE_IN) return false;
  const sa = (cdb[1] ?? 0) & 0x1f;
  return sa === PrInAction.READ_KEYS || sa === PrInAction.READ_RESERVATION || sa === PrInAction.READ_FULL_STATUS;
}

/** Data with PRGENERATION replaced by 0, and the generation as a delta from `base` (mod 2^32). */
function splitGeneration(dataHex: string, base: number): { rest: string; delta: number } | null {
  if (dataHex.length < 8) return null;
  const gen = Number.parseInt(dataHex.slice(0, 8), 16);
  return { rest: `00000000${dataHex.slice(8)}`, delta: (gen - base) >>> 0 };
}

function statusName(s: number | null): string {
  if (s === null) return 'NO STATUS';
  return (ScsiStatusName[s] ?? `STATUS 0x${s.toString(16)}`).replace(/_/g, ' ');
}

function senseText(senseHex: string): string {
  const s = senseHex === '' ? null : senseKeyAscOf(fromHex(senseHex));
  if (!s) return `sense ${senseHex || '(none)'}`;
  const h2 = (n: number): string => n.toString(16).padStart(2, '0');
  return `${s.key.toString(16)}/${h2(s.asc)}/${h2(s.ascq)} [${senseHex}]`;
}

const MAX_SHOWN = 256;

/** One line for reports: "GOOD data=...", "CHECK CONDITION 5/24/00 [70...]", "NO STATUS (why)". */
export function formatObserved(o: Observed): string {
  if (o.status === null) return `NO STATUS${o.detail ? ` (${o.detail})` : ''}`;
  let text = statusName(o.status);
  if (o.status === ScsiStatus.CHECK_CONDITION) text += ` ${senseText(o.sense)}`;
  if (o.status === ScsiStatus.GOOD && o.data !== '') {
    const bytes = o.data.length / 2;
    text += bytes > MAX_SHOWN ? ` data=${o.data.slice(0, MAX_SHOWN * 2)}... (${bytes} bytes)` : ` data=${o.data}`;
  }
  if (o.detail && o.status !== null) text += ` (${o.detail})`;
  if (o.beyond !== undefined) text += ` (wrote ${o.beyond} bytes past the allocation length)`;
  return text;
}

function isFixedSense(senseHex: string): boolean {
  const b0 = Number.parseInt(senseHex.slice(0, 2), 16) & 0x7f;
  return b0 === 0x70 || b0 === 0x71;
}

/** Compare two answers to the same step. */
export function compareStep(
  seq: Sequence,
  index: number,
  lio: Observed | null,
  model: Observed,
  bases: { readonly lio: number; readonly model: number },
): StepComparison {
  const step: Step | undefined = seq.steps[index];
  if (!step) throw new RangeError(`Cannot compare step ${index} of ${seq.name}: it has ${seq.steps.length} steps`);
  const base = { sequence: seq.name, index, label: step.label, ...(step.expect !== undefined ? { expect: step.expect } : {}), lio, model };
  const fields: DiffField[] = [];
  let reason: string | undefined;
  let deltas: { lioGenerationDelta?: number; modelGenerationDelta?: number } = {};
  if (lio === null) {
    fields.push('missing');
    reason = seq.lioHang?.step === index ? seq.lioHang.why : 'LIO gave no answer (the run stopped before this step)';
  } else if (lio.status !== model.status) {
    fields.push('status');
    reason = statusReason(lio, model);
  } else if (lio.status === ScsiStatus.CHECK_CONDITION) {
    const a = senseKeyAscOf(fromHex(lio.sense));
    const b = senseKeyAscOf(fromHex(model.sense));
    if (!a || !b || a.key !== b.key || a.asc !== b.asc || a.ascq !== b.ascq) {
      fields.push('sense');
      if (a?.key === 0x6 || b?.key === 0x6) reason = 'different unit attention reported';
    } else if (lio.sense !== model.sense) {
      fields.push('sense-bytes');
      reason = isFixedSense(lio.sense) && isFixedSense(model.sense)
        ? 'same key/ASC/ASCQ, other fixed-format sense bytes differ'
        : 'same key/ASC/ASCQ in different sense formats or lengths';
    }
  } else if (lio.status === ScsiStatus.GOOD && lio.data !== model.data) {
    const a = carriesGeneration(step.command) ? splitGeneration(lio.data, bases.lio) : null;
    const b = carriesGeneration(step.command) ? splitGeneration(model.data, bases.model) : null;
    if (a && b) {
      deltas = { lioGenerationDelta: a.delta, modelGenerationDelta: b.delta };
      if (a.delta !== b.delta) {
        fields.push('generation');
        reason = `PRGENERATION moved by ${a.delta} on LIO and by ${b.delta} on the model since the sequence started`;
      }
      if (a.rest !== b.rest) {
        fields.push('data');
        reason = [reason, dataReason(a.rest, b.rest)].filter(Boolean).join('; ');
      }
    } else {
      fields.push('data');
      reason = dataReason(lio.data, model.data);
    }
  }
  const out: StepComparison = { ...base, fields, identical: fields.length === 0, ...deltas, ...(reason !== undefined ? { reason } : {}) };
  return out;
}

function statusReason(lio: Observed, model: Observed): string {
  const ua = (o: Observed): boolean => isUnitAttention(o);
  if (lio.status === null) return `LIO gave no status${lio.detail ? `: ${lio.detail}` : ''}`;
  if (ua(lio) && !ua(model)) return 'LIO reports a unit attention the model does not have pending';
  if (ua(model) && !ua(lio)) return 'the model reports a unit attention LIO does not have pending';
  return `${statusName(lio.status)} on LIO, ${statusName(model.status)} on the model`;
}

function dataReason(a: string, b: string): string {
  if (a.length !== b.length) return `data-in length ${a.length / 2} on LIO, ${b.length / 2} on the model`;
  for (let i = 0; i < a.length; i += 2) {
    if (a.slice(i, i + 2) !== b.slice(i, i + 2)) return `data-in differs first at byte ${i / 2}`;
  }
  return 'data-in differs';
}

/** Compare a LIO run and a model run of one sequence, step by step. */
export function compareRuns(seq: Sequence, lio: SequenceRun | undefined, model: SequenceRun): StepComparison[] {
  const bases = { lio: lio?.reset.baseGeneration ?? 0, model: model.reset.baseGeneration };
  return seq.steps.map((_, i) => {
    const m = model.steps[i];
    if (!m) throw new Error(`Cannot compare ${seq.name}: the model run stopped at step ${model.steps.length} (${model.reset.problem ?? 'no reason'})`);
    return compareStep(seq, i, lio?.steps[i] ?? null, m, bases);
  });
}

// ---- allow-list and report ------------------------------------------------------------------------------

/** A difference that is explained and accepted: one step (by its label) of one sequence. */
export interface AllowedDifference {
  readonly sequence: string;
  readonly label: string;
  /** Which fields may differ (any of them when absent). */
  readonly fields?: readonly DiffField[];
  /** Only when LIO gave no SCSI status at all (no answer, or a transport failure such as a timeout). */
  readonly onlyWithoutLioStatus?: boolean;
  readonly reason: string;
}

export function allowanceFor(c: StepComparison, allow: readonly AllowedDifference[]): AllowedDifference | undefined {
  if (c.identical) return undefined;
  return allow.find(
    (a) =>
      a.sequence === c.sequence &&
      a.label === c.label &&
      (a.fields === undefined || c.fields.every((f) => a.fields!.includes(f))) &&
      (a.onlyWithoutLioStatus !== true || c.lio === null || c.lio.status === null),
  );
}

/** Differences not covered by the allow-list. */
export function unexplained(cs: readonly StepComparison[], allow: readonly AllowedDifference[]): StepComparison[] {
  return cs.filter((c) => !c.identical && allowanceFor(c, allow) === undefined);
}

export function summaryLine(cs: readonly StepComparison[], sequences: number): string {
  const same = cs.filter((c) => c.identical).length;
  return `fidelity: ${same}/${cs.length} steps identical (${sequences} sequences)`;
}

function deltaText(c: StepComparison, side: 'lio' | 'model'): string {
  const d = side === 'lio' ? c.lioGenerationDelta : c.modelGenerationDelta;
  return d === undefined ? '' : ` [generation +${d}]`;
}

/** One block per difference: the step, both outcomes, the reason when known, the allowance if any. */
export function formatDifferences(cs: readonly StepComparison[], allow: readonly AllowedDifference[] = []): string[] {
  const out: string[] = [];
  for (const c of cs) {
    if (c.identical) continue;
    const allowed = allowanceFor(c, allow);
    out.push(
      [
        `- ${c.sequence} #${c.index} ${c.label} [${c.fields.join(', ')}]${allowed ? ' (allowed)' : ''}`,
        `    LIO:   ${c.lio ? formatObserved(c.lio) + deltaText(c, 'lio') : 'no answer'}`,
        `    model: ${formatObserved(c.model)}${deltaText(c, 'model')}`,
        ...(c.reason ? [`    why:   ${c.reason}`] : []),
        ...(c.expect ? [`    noted: ${c.expect}`] : []),
        ...(allowed ? [`    allowed: ${allowed.reason}`] : []),
      ].join('\n'),
    );
  }
  return out;
}
