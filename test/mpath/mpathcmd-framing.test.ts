import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DecodeError, EncodeError, ErrorCode } from '../../src/errors.js';
import {
  MpathFrameDecoder,
  SIZE_T_BYTES,
  cStringText,
  encodeMessage,
  utf8Decode,
  utf8Encode,
  utf8Length,
  type FramedMessage,
} from '../../src/mpath/mpathcmd-framing.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function concat(parts: Uint8Array[]): Uint8Array {
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

/** Feed `stream` cut at `cuts` (sorted offsets); collect texts and the error, if any. */
function decodeSplit(stream: Uint8Array, cuts: number[], max = 1024): { texts: string[]; error: DecodeError | null; decoder: MpathFrameDecoder } {
  const decoder = new MpathFrameDecoder({ maxMessageBytes: max, structure: 'test frame' });
  const texts: string[] = [];
  let error: DecodeError | null = null;
  let from = 0;
  for (const cut of [...cuts, stream.length]) {
    const step = decoder.feed(stream.subarray(from, cut));
    texts.push(...step.messages.map((m: FramedMessage) => m.text));
    error = step.error;
    from = cut;
  }
  return { texts, error, decoder };
}

test('encodeMessage: 8-byte little-endian length counting the NUL, then text and NUL', () => {
  assert.equal(hex(encodeMessage('show paths')), '0b00000000000000' + hex(utf8Encode('show paths')) + '00');
  assert.equal(hex(encodeMessage('')), '0100000000000000' + '00');
  // A 300-byte text: length 301 = 0x012d, low byte first.
  assert.equal(hex(encodeMessage('x'.repeat(300)).subarray(0, SIZE_T_BYTES)), '2d01000000000000');
});

test('encodeMessage refuses a NUL inside the text and a length over the bound', () => {
  assert.throws(() => encodeMessage('a\0b'), (e: unknown) => e instanceof EncodeError && e.code === ErrorCode.ENCODE && e.field === 'text');
  assert.throws(() => encodeMessage('x'.repeat(512), 512), (e: unknown) => e instanceof EncodeError && e.field === 'length' && e.value === 513);
  assert.equal(encodeMessage('x'.repeat(511), 512).length, SIZE_T_BYTES + 512);
});

test('decoder: every single split point of a three-message stream yields the same messages', () => {
  const texts = ['show paths', '', 'fail\n'];
  const stream = concat(texts.map((t) => encodeMessage(t)));
  for (let cut = 0; cut <= stream.length; cut++) {
    const r = decodeSplit(stream, [cut]);
    assert.deepEqual(r.texts, texts, `cut at ${cut}`);
    assert.equal(r.error, null);
    assert.equal(r.decoder.inFrame, false);
    assert.equal(r.decoder.finish(), null);
  }
});

test('decoder: every pair of split points, and byte by byte', () => {
  const texts = ['ok\n', 'show maps json'];
  const stream = concat(texts.map((t) => encodeMessage(t)));
  for (let a = 0; a <= stream.length; a++) {
    for (let b = a; b <= stream.length; b++) {
      assert.deepEqual(decodeSplit(stream, [a, b]).texts, texts, `cuts ${a},${b}`);
    }
  }
  const everyByte = Array.from({ length: stream.length }, (_, i) => i);
  assert.deepEqual(decodeSplit(stream, everyByte).texts, texts);
});

test('decoder: property — arbitrary texts and arbitrary chunking round-trip', () => {
  fc.assert(
    fc.property(
      fc.array(fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0')), { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 10 }),
      (texts, rawCuts) => {
        const stream = concat(texts.map((t) => encodeMessage(t)));
        const cuts = [...new Set(rawCuts.map((c) => c % (stream.length + 1)))].sort((x, y) => x - y);
        const r = decodeSplit(stream, cuts, 4096);
        // Lone surrogates are encoded as U+FFFD, so compare with what UTF-8 can carry.
        assert.deepEqual(r.texts, texts.map((t) => utf8Decode(utf8Encode(t))));
        assert.equal(r.error, null);
      },
    ),
    { numRuns: 300 },
  );
});

test('decoder: a length over the bound fails before any body byte is buffered', () => {
  const frame = encodeMessage('x'.repeat(100));
  const r = decodeSplit(frame, [SIZE_T_BYTES + 1], 50);
  assert.deepEqual(r.texts, []);
  assert.ok(r.error instanceof DecodeError);
  assert.equal(r.error.field, 'length');
  assert.equal(r.error.value, 101);
  assert.equal(r.decoder.bufferedBytes, 0);
  // Failed is terminal: later input is ignored and the same error comes back.
  const again = r.decoder.feed(encodeMessage('ok'));
  assert.deepEqual(again.messages, []);
  assert.equal(again.error, r.error);
});

test('decoder: a 64-bit length with high bits set is reported as a bigint', () => {
  const header = Uint8Array.from([1, 0, 0, 0, 1, 0, 0, 0]);
  const r = decodeSplit(header, []);
  assert.equal(r.error?.value, (1n << 32n) | 1n);
});

test('decoder: length 0 is refused (it must count the NUL)', () => {
  const r = decodeSplit(new Uint8Array(SIZE_T_BYTES), []);
  assert.equal(r.error?.field, 'length');
  assert.equal(r.error?.value, 0);
});

test('decoder: messages completed before an error in the same chunk are still delivered', () => {
  const bad = Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0]);
  const r = decodeSplit(concat([encodeMessage('ok\n'), bad]), []);
  assert.deepEqual(r.texts, ['ok\n']);
  assert.equal(r.error?.field, 'length');
});

test('decoder: finish() reports a stream cut inside the length or the body', () => {
  const frame = encodeMessage('show topology');
  for (const cut of [3, SIZE_T_BYTES, SIZE_T_BYTES + 5]) {
    const d = new MpathFrameDecoder({ maxMessageBytes: 1024 });
    d.feed(frame.subarray(0, cut));
    assert.equal(d.inFrame, true);
    const err = d.finish();
    assert.ok(err instanceof DecodeError, `cut ${cut}`);
    assert.equal(err.field, cut < SIZE_T_BYTES ? 'length' : 'data');
  }
  const clean = new MpathFrameDecoder({ maxMessageBytes: 1024 });
  clean.feed(frame);
  assert.equal(clean.finish(), null);
});

test('decoder: text is the C string (up to the first NUL); a missing terminator is tolerated unless required', () => {
  // length 6: "ab\0cd" + 'X' where the NUL should be.
  const frame = Uint8Array.from([6, 0, 0, 0, 0, 0, 0, 0, 0x61, 0x62, 0, 0x63, 0x64, 0x58]);
  const lenient = new MpathFrameDecoder({ maxMessageBytes: 64 }).feed(frame);
  assert.equal(lenient.messages[0]?.text, 'ab');
  assert.equal(lenient.messages[0]?.terminated, false);
  assert.equal(hex(lenient.messages[0]?.payload ?? new Uint8Array()), '6162006364');
  const strict = new MpathFrameDecoder({ maxMessageBytes: 64, requireTerminator: true }).feed(frame);
  assert.deepEqual(strict.messages, []);
  assert.equal(strict.error?.field, 'terminator');
  assert.equal(strict.error?.value, 0x58);
});

test('decoder options are validated', () => {
  assert.throws(() => new MpathFrameDecoder({ maxMessageBytes: 0 }), EncodeError);
});

test('utf8 helpers agree with Node for valid text and replace invalid bytes', () => {
  fc.assert(
    fc.property(fc.string({ unit: 'grapheme', maxLength: 30 }), (s) => {
      assert.equal(hex(utf8Encode(s)), Buffer.from(s, 'utf8').toString('hex'));
      assert.equal(utf8Length(s), Buffer.byteLength(s, 'utf8'));
      assert.equal(utf8Decode(utf8Encode(s)), s);
    }),
    { numRuns: 200 },
  );
  assert.equal(utf8Decode(Uint8Array.from([0x61, 0xff, 0x62, 0xc3])), 'a\ufffdb\ufffd');
  assert.equal(utf8Decode(Uint8Array.from([0xe2, 0x82, 0xac])), '\u20ac');
  assert.equal(cStringText(Uint8Array.from([0x6f, 0x6b, 0, 0x78])), 'ok');
});
