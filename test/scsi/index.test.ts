// The names other modules (the SPC-4 device-server model, the helper) are written against.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import * as scsi from '../../src/scsi/index.js';

const CONTRACT = {
  bytes: ['hex', 'fromHex', 'readU16', 'readU32', 'readU64', 'writeU16', 'writeU32', 'writeU64', 'keyToHex'],
  cdb: ['decodePrCdb', 'decodePrInCdb', 'decodePrOutCdb', 'encodePrInCdb', 'encodePrOutCdb', 'prCdbTransferLength'],
  transportId: ['decodeTransportId', 'encodeTransportId', 'transportIdLength', 'transportIdEquals', 'formatTransportId'],
  proutParams: ['decodePrOutParams', 'encodePrOutParams', 'encodeRegisterAndMoveParams', 'isParameterListLengthError'],
  prinData: [
    'encodeReadKeys',
    'decodeReadKeys',
    'encodeReadReservation',
    'decodeReadReservation',
    'encodeCapabilities',
    'decodeCapabilities',
    'encodeReadFullStatus',
    'decodeReadFullStatus',
    'truncateToAllocationLength',
    'decodePrInData',
  ],
  sense: ['buildSense', 'parseSense', 'senseEquals', 'formatSense', 'senseKeyAscOf'],
  outcome: [
    'good',
    'checkCondition',
    'checkConditionWithSense',
    'reservationConflict',
    'busy',
    'taskSetFull',
    'transportFailure',
    'outcomeStatus',
    'isRetryableTransportFailure',
    'formatOutcome',
    'outcomeSenseOf',
  ],
  constants: ['Opcode', 'PrInAction', 'PrOutAction', 'PrType', 'ScsiStatus', 'SenseKey', 'Asc', 'HostStatus', 'ProtocolId'],
};

it('the index re-exports every function and table of the contract', () => {
  const exported = scsi as unknown as Record<string, unknown>;
  for (const [module, names] of Object.entries(CONTRACT)) {
    for (const name of names) {
      const kind = module === 'constants' ? 'object' : 'function';
      assert.equal(typeof exported[name], kind, `${module}: ${name}`);
    }
  }
});

it('keeps the codecs\' internal parse helpers out of the index', () => {
  assert.equal('Malformed' in scsi, false);
  assert.equal('parseTransportId' in scsi, false);
});
