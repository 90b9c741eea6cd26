// Drives a running broker with the official Node.js client (npm rocketmq-client-nodejs).
// Usage: node node_client.js SCENARIO ENDPOINT TOPIC GROUP; prints one JSON line.
// NODE_PATH must point at the node_modules folder that scripts/setup-clients.sh installed.
// Scenarios: send_receive_ack (10 messages with tag, keys and a user property).
'use strict';
const { Producer, SimpleConsumer } = require('rocketmq-client-nodejs');

async function main() {
  const [scenario, endpoints, topic, group] = process.argv.slice(2);
  if (scenario !== 'send_receive_ack') throw new Error(`unknown scenario ${scenario}`);
  const producer = new Producer({ endpoints });
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
  const consumer = new SimpleConsumer({
    consumerGroup: group,
    endpoints,
    subscriptions: new Map().set(topic, '*'),
    awaitDuration: 5000,
  });
  await consumer.startup();
  const received = [];
  const end = Date.now() + 60000;
  while (received.length < 10 && Date.now() < end) {
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
  console.log(JSON.stringify({ sent, received }));
}

main().then(() => process.exit(0), (e) => {
  console.error(e);
  process.exit(1);
});
