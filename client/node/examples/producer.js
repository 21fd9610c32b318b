#!/usr/bin/env node
'use strict';
// producer.js: publish messages through the sidecar (the otc side of the seed's flow).
//
//   node client/node/examples/producer.js --business usdt.transfer \
//       --routing-key usdt.transfer.create '{"order": 1}'
//   ... --count 1000 --prefix order-   # 1,000 pipelined, payload = message_id = order-<n>
//
// One message goes as a unary Publish; --count N pipelines N over
// PublishBatchStream. Prints one JSON summary line; exits 0 only when the
// broker confirmed every message, 2 when some were not, 1 on a gRPC error.
const { parseArgs } = require('util');
const mqsidecar = require('..');

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      address: { type: 'string', default: process.env.MQ_SIDECAR_ADDRESS || 'unix:///run/mq-sidecar/mq-sidecar.sock' },
      business: { type: 'string', default: 'usdt.transfer' },
      'routing-key': { type: 'string', default: '' },
      count: { type: 'string', default: '0' },
      prefix: { type: 'string', default: 'node-' },
      batch: { type: 'string', default: '100' },
      timeout: { type: 'string', default: '30', short: 't' },
    },
  });
  const client = mqsidecar.connect(values.address);
  const count = Number(values.count);
  const timeoutMs = Number(values.timeout) * 1000;
  const t0 = Date.now();
  try {
    if (count === 0) {
      const res = await client.publish({
        business: values.business, routingKey: values['routing-key'],
        payload: positionals[0] || 'hello', contentType: 'application/json',
      }, { timeoutMs, waitForReady: true });
      console.log(JSON.stringify({ message_id: res.messageId, status: res.status, error: res.error }));
      return res.status === 'CONFIRMED' ? 0 : 2;
    }
    const msgs = [];
    for (let n = 1; n <= count; n++) {
      const id = `${values.prefix}${n}`;
      msgs.push({ business: values.business, routingKey: values['routing-key'], payload: id, messageId: id });
    }
    const results = await client.publishStream(msgs, { batchSize: Number(values.batch), timeoutMs });
    const counts = {};
    for (const r of results) {
      counts[r.status] = (counts[r.status] || 0) + 1;
      if (r.status !== 'CONFIRMED') console.error(`not confirmed: ${r.messageId} ${r.status} ${r.error}`);
    }
    console.log(JSON.stringify({ published: count, results: counts, seconds: (Date.now() - t0) / 1000 }));
    return counts.CONFIRMED === count ? 0 : 2;
  } catch (err) {
    console.error(`producer: ${err.code !== undefined ? mqsidecar.grpc.status[err.code] : ''}: ${err.details || err.message}`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((rc) => { process.exitCode = rc; });
