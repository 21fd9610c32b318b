#!/usr/bin/env node
'use strict';
// worker.js: consume businesses through the sidecar (the usdtsvr side of the seed's flow).
//
//   node client/node/examples/worker.js --business usdt.transfer
//
// Prints one JSON line per delivery it acked: {business, message_id, payload,
// redelivered, attempt}. A payload "fail" is retried (nack with requeue),
// "poison" rejected (dead letter); anything else acked. SIGINT/SIGTERM stop
// it cleanly: the settlement in progress is sent, unhandled deliveries go back
// to the queue. Exits 1 when a stream ends with an error.
const { parseArgs } = require('util');
const mqsidecar = require('..');

async function main() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.MQ_SIDECAR_ADDRESS || 'unix:///run/mq-sidecar/mq-sidecar.sock' },
      business: { type: 'string', multiple: true },
      prefetch: { type: 'string', default: '0' },
      name: { type: 'string', default: 'node-worker' },
    },
  });
  if (!values.business) {
    console.error('worker: --business is required');
    return 64;
  }
  const client = mqsidecar.connect(values.address);
  await client.waitReady(30000);
  const handle = async (d) => {
    const payload = d.payload.toString('utf8');
    if (payload === 'fail') return mqsidecar.retry();
    if (payload === 'poison') return mqsidecar.REJECT;
    // The work goes here; a real consumer deduplicates on d.messageId
    // (delivery is at-least-once: docs/reliability.md).
    process.stdout.write(`${JSON.stringify({
      business: d.business, message_id: d.messageId, payload,
      redelivered: d.redelivered, attempt: d.attempt,
    })}\n`);
    return mqsidecar.ACK;
  };
  const subs = values.business.map((b) => client.subscribe(b, handle, {
    prefetch: Number(values.prefetch), consumerName: values.name,
  }));
  // Ends on a signal, or when a stream ends by itself (an error, a shutdown).
  await new Promise((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
    for (const s of subs) s.done.then(resolve);
  });
  await Promise.all(subs.map((s) => s.stop()));
  client.close();
  let rc = 0;
  for (const s of subs) {
    const err = await s.done;
    if (err) {
      console.error(`worker: ${s.business}: ${mqsidecar.grpc.status[err.code]}: ${err.details}`);
      rc = 1;
    }
  }
  return rc;
}

main().then((rc) => { process.exitCode = rc; });
