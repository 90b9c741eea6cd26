// Drives a running broker with the official Java client (Maven
// org.apache.rocketmq:rocketmq-client-java), with its default settings: TLS on.
// Usage: java -cp <jar>:<classes> JavaClient SCENARIO ENDPOINT TOPIC GROUP
// Environment: RMQ_ACCESS_KEY (and RMQ_SECRET_KEY) sign requests with these credentials;
// RMQ_TLS=1 / RMQ_TLS=0 turns TLS on / off (the client trusts any server certificate).
// Any error (a refused request too) is printed to stderr with exit status 1.
// Prints one JSON line. Scenarios:
//   send_receive_ack  10 messages with tag, key and a user property; SimpleConsumer receive + ack
//   send_only         the 10 messages of send_receive_ack; prints {"sent":[ids]}
//   receive_only      receives and acks what arrives within RMQ_RECEIVE_DEADLINE_SECS (default
//                     5) s; prints {"received":[..]} (as send_receive_ack prints them)
//   push              10 messages consumed by a PushConsumer
//   fifo              10 messages of one message group; prints bodies in receive order
//   delay             3 messages due in 3 s; prints bodies with receive time minus due time
//   transaction       commit one, roll back one, leave one to the broker's check-back (the
//                     checker answers COMMIT); prints what a consumer gets
//   chaos STOPFILE    4 producer threads send numbered messages until STOPFILE exists (errors
//                     are counted and sending goes on) while a SimpleConsumer receives and
//                     acks; then it drains until every acknowledged message was received (at
//                     most 120 s). Prints {"acked":[..],"received":[..],"sendErrors":n}
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.ConcurrentLinkedQueue;

import org.apache.rocketmq.client.apis.ClientConfiguration;
import org.apache.rocketmq.client.apis.ClientConfigurationBuilder;
import org.apache.rocketmq.client.apis.ClientServiceProvider;
import org.apache.rocketmq.client.apis.StaticSessionCredentialsProvider;
import org.apache.rocketmq.client.apis.consumer.ConsumeResult;
import org.apache.rocketmq.client.apis.consumer.FilterExpression;
import org.apache.rocketmq.client.apis.consumer.FilterExpressionType;
import org.apache.rocketmq.client.apis.consumer.PushConsumer;
import org.apache.rocketmq.client.apis.consumer.SimpleConsumer;
import org.apache.rocketmq.client.apis.message.Message;
import org.apache.rocketmq.client.apis.message.MessageView;
import org.apache.rocketmq.client.apis.producer.Producer;

public class JavaClient {
    static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    static String view(MessageView m) {
        String body = StandardCharsets.UTF_8.decode(m.getBody()).toString();
        return "{\"id\":" + quote(m.getMessageId().toString())
            + ",\"body\":" + quote(body)
            + ",\"tag\":" + quote(m.getTag().orElse(""))
            + ",\"keys\":[" + String.join(",", m.getKeys().stream().map(JavaClient::quote).toList()) + "]"
            + ",\"props\":{\"idx\":" + quote(m.getProperties().getOrDefault("idx", "")) + "}"
            + ",\"attempt\":" + m.getDeliveryAttempt() + "}";
    }

    /// Receives with a SimpleConsumer until `want` messages or 60 s; acks each.
    static List<MessageView> receiveAll(ClientServiceProvider provider, ClientConfiguration config,
                                        String topic, String group, int want) throws Exception {
        List<MessageView> got = new ArrayList<>();
        FilterExpression all = new FilterExpression("*", FilterExpressionType.TAG);
        try (SimpleConsumer consumer = provider.newSimpleConsumerBuilder()
                .setClientConfiguration(config).setConsumerGroup(group)
                .setSubscriptionExpressions(Collections.singletonMap(topic, all))
                .setAwaitDuration(Duration.ofSeconds(2)).build()) {
            long end = System.currentTimeMillis() + 60_000;
            while (got.size() < want && System.currentTimeMillis() < end) {
                for (MessageView m : consumer.receive(1, Duration.ofSeconds(15))) {
                    got.add(m);
                    consumer.ack(m);
                }
            }
        }
        return got;
    }

    static String bodies(List<MessageView> ms) {
        return "[" + String.join(",", ms.stream()
            .map(m -> quote(StandardCharsets.UTF_8.decode(m.getBody()).toString())).toList()) + "]";
    }

    static Message msg(ClientServiceProvider provider, String topic, String body) {
        return provider.newMessageBuilder().setTopic(topic)
            .setBody(body.getBytes(StandardCharsets.UTF_8)).build();
    }

    /// The failover scenario: sends and consumes through kills of the broker's nodes.
    static void chaos(ClientServiceProvider provider, ClientConfiguration config, String topic,
                      String group, String stopFile) throws Exception {
        java.util.Set<String> acked = java.util.concurrent.ConcurrentHashMap.newKeySet();
        java.util.Set<String> received = java.util.concurrent.ConcurrentHashMap.newKeySet();
        java.util.concurrent.atomic.AtomicLong errors = new java.util.concurrent.atomic.AtomicLong();
        java.util.concurrent.atomic.AtomicLong deliveries = new java.util.concurrent.atomic.AtomicLong();
        java.util.Map<String, Integer> receiveErrors = new java.util.concurrent.ConcurrentHashMap<>();
        java.io.File stop = new java.io.File(stopFile);
        FilterExpression all = new FilterExpression("*", FilterExpressionType.TAG);
        try (Producer producer = provider.newProducerBuilder()
                .setClientConfiguration(config).setTopics(topic).build();
             SimpleConsumer consumer = provider.newSimpleConsumerBuilder()
                .setClientConfiguration(config).setConsumerGroup(group)
                .setSubscriptionExpressions(Collections.singletonMap(topic, all))
                .setAwaitDuration(Duration.ofSeconds(2)).build()) {
            List<Thread> senders = new ArrayList<>();
            for (int t = 0; t < 4; t++) {
                final int thread = t;
                Thread s = new Thread(() -> {
                    for (long i = 0; !stop.exists(); i++) {
                        String body = "chaos-" + thread + "-" + i;
                        try {
                            producer.send(msg(provider, topic, body));
                            acked.add(body);
                        } catch (Exception e) {
                            errors.incrementAndGet();
                            try { Thread.sleep(100); } catch (InterruptedException ie) { return; }
                        }
                    }
                });
                s.start();
                senders.add(s);
            }
            // Several receivers: a receive on a queue with nothing to deliver long-polls for the
            // await duration, and must not hold up the queues that have a backlog.
            List<Thread> receivers = new ArrayList<>();
            long[] drainEnd = {Long.MAX_VALUE};
            for (int r = 0; r < 8; r++) receivers.add(new Thread(() -> {
                while (true) {
                    boolean stopping = stop.exists() && senders.stream().noneMatch(Thread::isAlive);
                    synchronized (drainEnd) {
                        if (stopping && drainEnd[0] == Long.MAX_VALUE) {
                            drainEnd[0] = System.currentTimeMillis() + 120_000;
                        }
                    }
                    if (stopping && (received.containsAll(acked) || System.currentTimeMillis() > drainEnd[0])) {
                        return;
                    }
                    try {
                        for (MessageView m : consumer.receive(32, Duration.ofSeconds(20))) {
                            received.add(StandardCharsets.UTF_8.decode(m.getBody()).toString());
                            deliveries.incrementAndGet();
                            try { consumer.ack(m); } catch (Exception e) { /* redelivered later */ }
                        }
                    } catch (Exception e) {
                        String k = String.valueOf(e.getMessage());
                        receiveErrors.merge(k.length() > 200 ? k.substring(0, 200) : k, 1, Integer::sum);
                        try { Thread.sleep(100); } catch (InterruptedException ie) { return; }
                    }
                }
            }));
            for (Thread r : receivers) r.start();
            for (Thread s : senders) s.join();
            for (Thread r : receivers) r.join();
        }
        System.out.println("{\"acked\":" + "[" + String.join(",", acked.stream().map(JavaClient::quote).toList()) + "]"
            + ",\"received\":" + "[" + String.join(",", received.stream().map(JavaClient::quote).toList()) + "]"
            + ",\"deliveries\":" + deliveries.get()
            + ",\"sendErrors\":" + errors.get()
            + ",\"receiveErrors\":{" + String.join(",", receiveErrors.entrySet().stream()
                .map(e -> quote(e.getKey()) + ":" + e.getValue()).toList()) + "}}");
    }

    static boolean special(ClientServiceProvider provider, ClientConfiguration config, String scenario,
                           String topic, String group) throws Exception {
        switch (scenario) {
            case "send_only": {
                System.out.println("{\"sent\":[" + String.join(",",
                    sendTen(provider, config, topic).stream().map(JavaClient::quote).toList()) + "]}");
                return true;
            }
            case "receive_only": {
                String secs = System.getenv("RMQ_RECEIVE_DEADLINE_SECS");
                long end = System.currentTimeMillis() + 1000L * (secs == null ? 5 : Long.parseLong(secs));
                List<String> got = new ArrayList<>();
                FilterExpression all = new FilterExpression("*", FilterExpressionType.TAG);
                try (SimpleConsumer consumer = provider.newSimpleConsumerBuilder()
                        .setClientConfiguration(config).setConsumerGroup(group)
                        .setSubscriptionExpressions(Collections.singletonMap(topic, all))
                        .setAwaitDuration(Duration.ofSeconds(2)).build()) {
                    while (System.currentTimeMillis() < end) {
                        for (MessageView m : consumer.receive(32, Duration.ofSeconds(15))) {
                            got.add(view(m));
                            consumer.ack(m);
                        }
                    }
                }
                System.out.println("{\"received\":[" + String.join(",", got) + "]}");
                return true;
            }
            case "fifo": {
                try (Producer producer = provider.newProducerBuilder()
                        .setClientConfiguration(config).setTopics(topic).build()) {
                    for (int i = 0; i < 10; i++) {
                        producer.send(provider.newMessageBuilder().setTopic(topic).setMessageGroup("order-1")
                            .setBody(("m" + i).getBytes(StandardCharsets.UTF_8)).build());
                    }
                }
                System.out.println("{\"received\":" + bodies(receiveAll(provider, config, topic, group, 10)) + "}");
                return true;
            }
            case "delay": {
                long due = System.currentTimeMillis() + 3000;
                try (Producer producer = provider.newProducerBuilder()
                        .setClientConfiguration(config).setTopics(topic).build()) {
                    for (int i = 0; i < 3; i++) {
                        producer.send(provider.newMessageBuilder().setTopic(topic).setDeliveryTimestamp(due)
                            .setBody(("d" + i).getBytes(StandardCharsets.UTF_8)).build());
                    }
                }
                List<MessageView> got = receiveAll(provider, config, topic, group, 3);
                long at = System.currentTimeMillis();
                System.out.println("{\"received\":" + bodies(got) + ",\"early_ms\":" + (due - at) + "}");
                return true;
            }
            case "transaction": {
                try (Producer producer = provider.newProducerBuilder()
                        .setClientConfiguration(config).setTopics(topic)
                        .setTransactionChecker(view -> org.apache.rocketmq.client.apis.producer.TransactionResolution.COMMIT)
                        .build()) {
                    org.apache.rocketmq.client.apis.producer.Transaction t1 = producer.beginTransaction();
                    producer.send(msg(provider, topic, "committed"), t1);
                    t1.commit();
                    org.apache.rocketmq.client.apis.producer.Transaction t2 = producer.beginTransaction();
                    producer.send(msg(provider, topic, "rolled-back"), t2);
                    t2.rollback();
                    org.apache.rocketmq.client.apis.producer.Transaction t3 = producer.beginTransaction();
                    producer.send(msg(provider, topic, "checked"), t3);
                    // No decision for t3: the broker checks back and the checker commits.
                    List<MessageView> got = receiveAll(provider, config, topic, group, 2);
                    System.out.println("{\"received\":" + bodies(got) + "}");
                }
                return true;
            }
            default:
                return false;
        }
    }

    /// Sends the 10 messages of send_receive_ack; returns their ids.
    static List<String> sendTen(ClientServiceProvider provider, ClientConfiguration config,
                                String topic) throws Exception {
        List<String> sent = new ArrayList<>();
        try (Producer producer = provider.newProducerBuilder()
                .setClientConfiguration(config).setTopics(topic).build()) {
            for (int i = 0; i < 10; i++) {
                Message m = provider.newMessageBuilder()
                    .setTopic(topic).setTag("TagA").setKeys("key-" + i)
                    .addProperty("idx", String.valueOf(i))
                    .setBody(("hello-" + i).getBytes(StandardCharsets.UTF_8))
                    .build();
                sent.add(producer.send(m).getMessageId().toString());
            }
        }
        return sent;
    }

    public static void main(String[] args) {
        try {
            run(args);
        } catch (Throwable e) {
            // A refused request (UNAUTHORIZED, FORBIDDEN) ends up here too.
            e.printStackTrace();
            System.exit(1);
        }
    }

    static void run(String[] args) throws Exception {
        String scenario = args[0], endpoint = args[1], topic = args[2], group = args[3];
        ClientServiceProvider provider = ClientServiceProvider.loadService();
        ClientConfigurationBuilder builder = ClientConfiguration.newBuilder()
            .setEndpoints(endpoint)
            .setRequestTimeout(Duration.ofSeconds(10));
        String accessKey = System.getenv("RMQ_ACCESS_KEY");
        if (accessKey != null) {
            String secretKey = System.getenv("RMQ_SECRET_KEY");
            builder.setCredentialProvider(new StaticSessionCredentialsProvider(
                accessKey, secretKey == null ? "" : secretKey));
        }
        String tls = System.getenv("RMQ_TLS");
        if ("1".equals(tls) || "0".equals(tls)) {
            builder.enableSsl(tls.equals("1"));
        }
        ClientConfiguration config = builder.build();
        if (scenario.equals("chaos")) {
            chaos(provider, config, topic, group, args[4]);
            System.exit(0);
        }
        if (special(provider, config, scenario, topic, group)) {
            System.exit(0);
        }
        List<String> sent = sendTen(provider, config, topic);
        FilterExpression all = new FilterExpression("*", FilterExpressionType.TAG);
        List<String> received = Collections.synchronizedList(new ArrayList<>());
        long end = System.currentTimeMillis() + 60_000;
        if (scenario.equals("send_receive_ack")) {
            try (SimpleConsumer consumer = provider.newSimpleConsumerBuilder()
                    .setClientConfiguration(config).setConsumerGroup(group)
                    .setSubscriptionExpressions(Collections.singletonMap(topic, all))
                    .setAwaitDuration(Duration.ofSeconds(5)).build()) {
                while (received.size() < 10 && System.currentTimeMillis() < end) {
                    for (MessageView m : consumer.receive(32, Duration.ofSeconds(15))) {
                        received.add(view(m));
                        consumer.ack(m);
                    }
                }
            }
        } else if (scenario.equals("push")) {
            ConcurrentLinkedQueue<String> seen = new ConcurrentLinkedQueue<>();
            try (PushConsumer consumer = provider.newPushConsumerBuilder()
                    .setClientConfiguration(config).setConsumerGroup(group)
                    .setSubscriptionExpressions(Collections.singletonMap(topic, all))
                    .setMessageListener(m -> {
                        seen.add(view(m));
                        return ConsumeResult.SUCCESS;
                    }).build()) {
                while (seen.size() < 10 && System.currentTimeMillis() < end) {
                    Thread.sleep(100);
                }
            }
            received.addAll(seen);
        } else {
            throw new IllegalArgumentException("unknown scenario " + scenario);
        }
        System.out.println("{\"sent\":[" + String.join(",", sent.stream().map(JavaClient::quote).toList())
            + "],\"received\":[" + String.join(",", received) + "]}");
        System.exit(0);
    }
}
