// Drives a running broker with the official Java client (Maven
// org.apache.rocketmq:rocketmq-client-java), with its default settings: TLS on.
// Usage: java -cp <jar>:<classes> JavaClient SCENARIO ENDPOINT TOPIC GROUP
// Prints one JSON line. Scenarios:
//   send_receive_ack  10 messages with tag, key and a user property; SimpleConsumer receive + ack
//   push              10 messages consumed by a PushConsumer
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.ConcurrentLinkedQueue;

import org.apache.rocketmq.client.apis.ClientConfiguration;
import org.apache.rocketmq.client.apis.ClientServiceProvider;
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

    public static void main(String[] args) throws Exception {
        String scenario = args[0], endpoint = args[1], topic = args[2], group = args[3];
        ClientServiceProvider provider = ClientServiceProvider.loadService();
        ClientConfiguration config = ClientConfiguration.newBuilder()
            .setEndpoints(endpoint)
            .setRequestTimeout(Duration.ofSeconds(10))
            .build();
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
