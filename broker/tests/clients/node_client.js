// Drives a running broker with the official Node.js client (npm rocketmq-client-nodejs).
// Usage: node node_client.js SCENARIO ENDPOINT TOPIC GROUP; prints one JSON line.
// NODE_PATH must point at the node_modules folder that scripts/setup-clients.sh installed.
// Scenarios: send_receive_ack (10 messages with tag, keys and a user property); send_only (those
// 10 messages; prints {"sent":[ids]}); receive_only (receives and acks what arrives within
// RMQ_RECEIVE_DEADLINE_SECS, default 5, s; prints {"received":[..]}).
// Environment: RMQ_ACCESS_KEY and RMQ_SECRET_KEY sign requests with these credentials;
// RMQ_TLS=1 / RMQ_TLS=0 turns TLS on / off (default off); with TLS the server certificate is
// verified against Node's roots, or the PEM file GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names.
// Any error (a refused request too) is printed to stderr with exit status 1.
'use strict';
const { Producer, SimpleConsumer } = require('rocketmq-client-nodejs');

// Options every client gets: the endpoint, and the credentials and TLS choice of the environment.
function clientOptions(endpoints) {
  const options = { endpoints };
  if (process.env.RMQ_ACCESS_KEY !== undefined) {
    options.sessionCredentials = {
      accessKey: process.env.RMQ_ACCESS_KEY,
      accessSecret: process.env.RMQ_SECRET_KEY ?? '',
    };
  }
  if (process.env.RMQ_TLS === '1' || process.env.RMQ_TLS === '0') {
    options.sslEnabled = process.env.RMQ_TLS === '1';
  }
  return options;
}

// Sends the 10 messages of send_receive_ack; returns their ids.
async function send(endpoints, topic) {
  const producer = new Producer(clientOptions(endpoints));
  await producer.startup();
  const sent = [];
  for (let i = 0; i < 10; i++) {
    const r = await producer.send({
      topic,
      tag: 'TagA',
      keys: [`key-${i}`],
      properties: new Map([['idx', String(i)]]),
      body: Buffer.from(`hello-${i}`),
    });
    sent.push(r.messageId);
  }
  await producer.shutdown();
  return sent;
}

// Receives and acks until `want` messages arrived or `deadline` (ms since the epoch) passed.
async function receive(endpoints, topic, group, want, deadline, awaitDuration) {
  const consumer = new SimpleConsumer({
    ...clientOptions(endpoints),
    consumerGroup: group,
    subscriptions: new Map().set(topic, '*'),
    awaitDuration,
  });
  await consumer.startup();
  const received = [];
  while (received.length < want && Date.now() < deadline) {
    const messages = await consumer.receive(32, 15000);
    for (const m of messages) {
      received.push({
        id: m.messageId,
        body: m.body.toString(),
        tag: m.tag,
        keys: m.keys,
        props: Object.fromEntries(m.properties),
        attempt: m.deliveryAttempt,
      });
      await consumer.ack(m);
    }
  }
  await consumer.shutdown();
  return received;
}

async function main() {
  const [scenario, endpoints, topic, group] = process.argv.slice(2);
  if (scenario === 'send_receive_ack') {
    const sent = await send(endpoints, topic);
    const received = await receive(endpoints, topic, group, 10, Date.now() + 60000, 5000);
    console.log(JSON.stringify({ sent, received }));
  } else if (scenario === 'send_only') {
    console.log(JSON.stringify({ sent: await send(endpoints, topic) }));
  } else if (scenario === 'receive_only') {
    const secs = Number(process.env.RMQ_RECEIVE_DEADLINE_SECS ?? 5);
    const received = await receive(endpoints, topic, group, Infinity, Date.now() + secs * 1000, 2000);
    console.log(JSON.stringify({ received }));
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
