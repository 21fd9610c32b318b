'use strict';
// mqsidecar: a thin Node.js client for the mq-sidecar daemon's gRPC API
// (docs/api.md, docs/clients.md). The proto is loaded at run time
// with @grpc/proto-loader; messages are plain objects with camelCase fields
// (routingKey, messageId, ...), 64-bit integers as Numbers, enums as strings
// (status: 'CONFIRMED') and bytes as Buffers.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO = process.env.MQ_SIDECAR_PROTO ||
  path.resolve(__dirname, '../../proto/mqsidecar/v1/pubsub.proto');
const DEFAULT_ADDRESS = 'unix:///run/mq-sidecar/mq-sidecar.sock';
// The sidecar sends messages up to 17 MiB + 128 KiB (docs/api.md); gRPC's
// 4 MiB default would refuse a large delivery.
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

// Handler outcomes. ACK: ack. REJECT: nack without requeue (the business's
// dead-letter queue, or dropped with dead_letter: false). retry(ms): nack
// with requeue: a delayed retry on a business with `retry` (after ms, or the
// next configured delay when 0); without `retry` the broker requeues at once
// (ms must then be 0, or the sidecar ends the stream INVALID_ARGUMENT).
const ACK = Object.freeze({ kind: 'ack', retryAfterMs: 0 });
const REJECT = Object.freeze({ kind: 'reject', retryAfterMs: 0 });
function retry(afterMs = 0) {
  return Object.freeze({ kind: 'retry', retryAfterMs: afterMs });
}

const loaded = new Map();
function loadService(protoPath) {
  if (!loaded.has(protoPath)) {
    const def = protoLoader.loadSync(protoPath, {
      keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true,
    });
    loaded.set(protoPath, grpc.loadPackageDefinition(def).mqsidecar.v1);
  }
  return loaded.get(protoPath);
}

function target(address) {
  // A bare absolute path is a unix socket, as mqctl takes it.
  return address.startsWith('/') ? `unix://${address}` : address;
}

function toRequest(msg, sequence) {
  const req = { ...msg };
  if (typeof req.payload === 'string') req.payload = Buffer.from(req.payload, 'utf8');
  if (!req.sequence && sequence) req.sequence = sequence;
  return req;
}

// Client: one gRPC channel to a sidecar. address: unix:///path (or a bare
// /path) or host:port. options.credentials: grpc.credentials.createSsl(...) for
// a TLS listener (default: plaintext, for unix sockets and tcp.insecure);
// options.token: sent as `authorization: Bearer <token>` (config `access`);
// options.protoPath: the pubsub.proto to load (default: this repository's, or
// $MQ_SIDECAR_PROTO).
class Client {
  constructor(address = DEFAULT_ADDRESS, options = {}) {
    const v1 = loadService(options.protoPath || DEFAULT_PROTO);
    this.stub = new v1.PubSub(target(address),
      options.credentials || grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
        'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
        ...(options.channelOptions || {}),
      });
    this.metadata = new grpc.Metadata();
    if (options.token) this.metadata.set('authorization', `Bearer ${options.token}`);
  }

  close() {
    this.stub.close();
  }

  // Resolves once the channel is connected; rejects after timeoutMs.
  waitReady(timeoutMs = 30000) {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
    });
  }

  // Publishes one message {business, payload, routingKey, messageId,
  // correlationId, contentType, headers, ttlMs, replyTo}; resolves to its
  // PublishResult {sequence, messageId, status, error} once the broker settled
  // it (status CONFIRMED, UNROUTABLE, REJECTED or UNCONFIRMED: docs/api.md).
  // A refused call (INVALID_ARGUMENT, UNAVAILABLE, ...) rejects with the gRPC
  // error (err.code, err.details). timeoutMs is the call's deadline.
  publish(msg, { timeoutMs = 30000, waitForReady = false } = {}) {
    return new Promise((resolve, reject) => {
      this.stub.Publish(toRequest(msg, 0), this.metadata,
        { deadline: Date.now() + timeoutMs, waitForReady },
        (err, res) => (err ? reject(err) : resolve(res)));
    });
  }

  // Pipelines messages (an array or iterable of publish objects) over one
  // PublishBatchStream, batchSize per request; resolves to one PublishResult
  // per message, in the order the broker settled them (match by sequence: a
  // message without one gets its 1-based position). The sidecar's
  // publish.window bounds what is in flight; writes wait for the stream to
  // drain. A message the sidecar could not send comes back FAILED with error;
  // a broken stream rejects.
  publishStream(messages, { batchSize = 100, timeoutMs = 0 } = {}) {
    const size = Math.max(1, Math.min(batchSize, 1000));
    const opts = timeoutMs > 0 ? { deadline: Date.now() + timeoutMs } : {};
    const call = this.stub.PublishBatchStream(this.metadata, opts);
    const results = [];
    call.on('data', (batch) => results.push(...batch.results));
    // Every result is in once the readable side ended and the status is OK.
    const ended = new Promise((resolve, reject) => {
      let gotEnd = false;
      let gotOk = false;
      call.on('error', reject);
      call.on('end', () => { gotEnd = true; if (gotOk) resolve(results); });
      call.on('status', (st) => {
        if (st.code !== grpc.status.OK) return; // 'error' rejected already
        gotOk = true;
        if (gotEnd) resolve(results);
      });
    });
    const write = async () => {
      let batch = [];
      let n = 0;
      const flush = async () => {
        const ok = call.write({ messages: batch });
        batch = [];
        if (!ok) await new Promise((r) => call.once('drain', r));
      };
      for (const m of messages) {
        batch.push(toRequest(m, ++n));
        if (batch.length >= size) await flush();
      }
      if (batch.length) await flush();
      call.end();
    };
    return Promise.all([write(), ended]).then(() => results);
  }

  // Joins the competing consumers of business and returns a running
  // Subscription. handler(delivery) (may be async) is called for each
  // Delivery, one at a time; what it returns settles it: ACK (or undefined),
  // retry(ms) or REJECT. A handler that throws is logged and its delivery
  // retried (retry(0)).
  subscribe(business, handler, { prefetch = 0, consumerName = 'node' } = {}) {
    return new Subscription(this.stub, this.metadata, business, handler, prefetch, consumerName);
  }
}

// Subscription: one SubscribeBatch stream: the sidecar sends whatever
// deliveries are ready in one message (one at a low rate); the handler gets
// them one by one, and the acks of a batch go back in one request once the
// batch is handled. stop() half-closes it after the batch in progress
// (deliveries not handled go back to the queue);
// `done` resolves when the stream ends: null when it ended cleanly or by
// stop(), else the gRPC error it ended with.
class Subscription {
  constructor(stub, metadata, business, handler, prefetch, consumerName) {
    this.business = business;
    this.handled = 0;
    this.running = true;
    this.stopping = false;
    this.chain = Promise.resolve();
    this.call = stub.SubscribeBatch(metadata);
    this.done = new Promise((resolve) => {
      let error = null;
      this.call.on('error', (err) => {
        if (!(this.stopping && err.code === grpc.status.CANCELLED)) error = err;
      });
      this.call.on('status', () => {
        this.running = false;
        resolve(error);
      });
    });
    this.call.on('data', (batch) => {
      this.chain = this.chain.then(() => this.handleBatch(batch.deliveries, handler));
    });
    this.call.write({ open: { business, prefetch, consumerName } });
  }

  async handleBatch(deliveries, handler) {
    const acks = [];
    for (const d of deliveries) {
      if (this.stopping || !this.running) break; // unsettled: back to the queue at close
      let outcome;
      try {
        outcome = await handler(d);
      } catch (err) {
        console.error(`mqsidecar: handler threw on delivery ${d.deliveryId} ` +
          `(message_id ${d.messageId}); retrying it:`, err);
        outcome = retry(0);
      }
      if (!this.running) return;
      const id = d.deliveryId;
      if (!outcome || outcome.kind === 'ack') {
        acks.push(id);
      } else if (outcome.kind === 'retry') {
        this.call.write({ nack: { deliveryId: id, requeue: true, retryAfterMs: outcome.retryAfterMs } });
      } else {
        this.call.write({ nack: { deliveryId: id, requeue: false } });
      }
      this.handled++;
    }
    if (acks.length > 0 && this.running) this.call.write({ ack: { deliveryIds: acks } });
  }

  // Half-closes after the handler in progress settled its delivery and waits
  // up to timeoutMs for the sidecar to end the stream, then cancels it.
  // Resolves to true when it ended in time.
  async stop(timeoutMs = 10000) {
    this.stopping = true;
    await this.chain;
    if (this.running) this.call.end();
    let timer;
    const timedOut = new Promise((r) => { timer = setTimeout(() => r(true), timeoutMs); });
    const late = await Promise.race([this.done.then(() => false), timedOut]);
    clearTimeout(timer);
    if (late) this.call.cancel();
    await this.done;
    return !late;
  }
}

function connect(address = DEFAULT_ADDRESS, options = {}) {
  return new Client(address, options);
}

module.exports = { connect, Client, Subscription, ACK, REJECT, retry, grpc };
