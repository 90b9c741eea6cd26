// Drives a name server + broker over RocketMQ's 4.x remoting protocol with the official Java
// client (Maven org.apache.rocketmq:rocketmq-client 4.9.8), default settings.
// Build: javac -d CLASSES -cp 'LIB/*' RemotingClient.java
// Usage: java -cp CLASSES:'LIB/*' RemotingClient NAMESRV SCENARIO TOPIC GROUP [ARGS...]
// Prints exactly one JSON line on stdout (client logs go to a temp dir, anything else to
// stderr); exits 0 on success, 1 with {"error":...} on failure, 2 if the watchdog fires.
// The producer group is GROUP + "_producer". Scenarios:
//   send_push       20 sync sends (m0..m19, tag TagA, keys k<i>), then a push consumer
//                   (CLUSTERING, CONSUME_FROM_FIRST_OFFSET, "*") receives them all
//   tag_filter      10 with tag A (a0..a9), 10 with tag B (b0..b9); consumer subscribes "A"
//   orderly         30 messages for order ids 0..2 (queue = orderId % queues), MessageListenerOrderly
//   broadcast       two BROADCASTING push consumers (instances b1, b2), 10 messages, each gets all
//   lite_pull       20 sends, DefaultLitePullConsumer subscribe + poll until 20, commitSync
//   retry           3 sends; the first delivery of each returns RECONSUME_LATER, redeliveries
//                   CONSUME_SUCCESS; prints reconsumeTimes and delay seen (90 s bound)
//   produce N [P]   N sync sends, bodies P0..P(N-1) (P defaults to "m")
//   consume N [S]   push consumer until N distinct bodies (S seconds bound, default 60), then
//                   2 s more to catch extras; shutdown persists offsets
//   bench T S B     T threads send B-byte bodies synchronously for S seconds
// Environment: RMQ_CLIENT_LOG_DIR (client log dir, default a fresh temp dir),
// RMQ_CLIENT_LOG_LEVEL (default WARN).
import java.io.File;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.rocketmq.client.consumer.DefaultLitePullConsumer;
import org.apache.rocketmq.client.consumer.DefaultMQPushConsumer;
import org.apache.rocketmq.client.consumer.listener.ConsumeConcurrentlyStatus;
import org.apache.rocketmq.client.consumer.listener.ConsumeOrderlyStatus;
import org.apache.rocketmq.client.consumer.listener.MessageListenerConcurrently;
import org.apache.rocketmq.client.consumer.listener.MessageListenerOrderly;
import org.apache.rocketmq.client.consumer.rebalance.AllocateMessageQueueAveragely;
import org.apache.rocketmq.client.producer.DefaultMQProducer;
import org.apache.rocketmq.client.producer.SendResult;
import org.apache.rocketmq.common.consumer.ConsumeFromWhere;
import org.apache.rocketmq.common.message.Message;
import org.apache.rocketmq.common.message.MessageExt;
import org.apache.rocketmq.common.message.MessageQueue;
import org.apache.rocketmq.remoting.RPCHook;
import org.apache.rocketmq.common.protocol.heartbeat.MessageModel;

public class RemotingClient {
    static final long BOUND_MS = 60_000;
    static PrintStream out;
    static File scratch;
    static String namesrv, topic, group;

    // ---- tiny JSON writer ----
    static String q(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c)); else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    static String json(Object o) {
        if (o == null) return "null";
        if (o instanceof String) return q((String) o);
        if (o instanceof Number || o instanceof Boolean) return o.toString();
        if (o instanceof Map) {
            StringBuilder b = new StringBuilder("{");
            for (Map.Entry<?, ?> e : ((Map<?, ?>) o).entrySet()) {
                if (b.length() > 1) b.append(',');
                b.append(q(String.valueOf(e.getKey()))).append(':').append(json(e.getValue()));
            }
            return b.append('}').toString();
        }
        if (o instanceof Iterable) {
            StringBuilder b = new StringBuilder("[");
            for (Object x : (Iterable<?>) o) {
                if (b.length() > 1) b.append(',');
                b.append(json(x));
            }
            return b.append(']').toString();
        }
        return q(o.toString());
    }

    /** Ordered map builder: obj("k", v, "k2", v2, ...). */
    static Map<String, Object> obj(Object... kv) {
        Map<String, Object> m = new java.util.LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    /** Prints the one result line and exits; the scratch folder is kept only on failure. */
    static void finish(Map<String, Object> result, int code) {
        out.println(json(result));
        out.flush();
        if (code == 0 && scratch != null) {
            try (java.util.stream.Stream<java.nio.file.Path> paths = Files.walk(scratch.toPath())) {
                paths.sorted(Collections.reverseOrder()).forEach(p -> p.toFile().delete());
            } catch (Exception e) {
                // best effort
            }
        }
        System.exit(code);
    }

    // ---- helpers ----
    static String body(MessageExt m) {
        return new String(m.getBody(), StandardCharsets.UTF_8);
    }

    static List<String> sorted(java.util.Collection<String> c) {
        List<String> l = new ArrayList<>(c);
        Collections.sort(l);
        return l;
    }

    /**
     * With RMQ_ACCESS_KEY and RMQ_SECRET_KEY set: ACL signatures on every request
     * (AclClientRPCHook, in rocketmq-acl up to 5.3.2 and in rocketmq-client since 5.3.3; found
     * by name so that this file compiles without it). Otherwise none.
     */
    static RPCHook hook() {
        String ak = System.getenv("RMQ_ACCESS_KEY");
        if (ak == null) return null;
        try {
            Class<?> creds = Class.forName("org.apache.rocketmq.acl.common.SessionCredentials");
            Object c = creds.getConstructor(String.class, String.class).newInstance(ak, System.getenv("RMQ_SECRET_KEY"));
            Class<?> h = Class.forName("org.apache.rocketmq.acl.common.AclClientRPCHook");
            return (RPCHook) h.getConstructor(creds).newInstance(c);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("AclClientRPCHook is not on the classpath", e);
        }
    }

    static DefaultMQProducer producer() throws Exception {
        DefaultMQProducer p = new DefaultMQProducer(group + "_producer", hook());
        p.setNamesrvAddr(namesrv);
        p.start();
        return p;
    }

    static DefaultMQPushConsumer pushConsumer(String expr, MessageModel model) throws Exception {
        DefaultMQPushConsumer c = new DefaultMQPushConsumer(group, hook(), new AllocateMessageQueueAveragely());
        c.setNamesrvAddr(namesrv);
        c.setMessageModel(model);
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.subscribe(topic, expr);
        return c;
    }

    /** Waits until cond holds or the deadline passes; returns whether it held. */
    static boolean waitFor(java.util.function.BooleanSupplier cond, long boundMs) throws InterruptedException {
        long end = System.currentTimeMillis() + boundMs;
        while (!cond.getAsBoolean()) {
            if (System.currentTimeMillis() > end) return false;
            Thread.sleep(50);
        }
        return true;
    }

    static Map<String, Object> sendAll(DefaultMQProducer p, List<Message> msgs) throws Exception {
        List<String> ids = new ArrayList<>();
        List<String> status = new ArrayList<>();
        Set<String> queues = new TreeSet<>();
        for (Message m : msgs) {
            SendResult r = p.send(m);
            ids.add(r.getMsgId());
            status.add(r.getSendStatus().name());
            queues.add(r.getMessageQueue().getBrokerName() + ":" + r.getMessageQueue().getQueueId());
        }
        return obj("sent", ids, "send_status", status, "queues", new ArrayList<>(queues));
    }

    // ---- scenarios ----
    static Map<String, Object> sendPush() throws Exception {
        DefaultMQProducer p = producer();
        List<Message> msgs = new ArrayList<>();
        for (int i = 0; i < 20; i++) {
            msgs.add(new Message(topic, "TagA", "k" + i, ("m" + i).getBytes(StandardCharsets.UTF_8)));
        }
        Map<String, Object> r = sendAll(p, msgs);
        @SuppressWarnings("unchecked") List<String> sentIds = (List<String>) r.get("sent");
        ConcurrentLinkedQueue<String> bodies = new ConcurrentLinkedQueue<>();
        Set<String> seen = ConcurrentHashMap.newKeySet();
        Set<String> ids = ConcurrentHashMap.newKeySet();
        List<String> mismatches = Collections.synchronizedList(new ArrayList<>());
        DefaultMQPushConsumer c = pushConsumer("*", MessageModel.CLUSTERING);
        c.registerMessageListener((MessageListenerConcurrently) (list, ctx) -> {
            for (MessageExt m : list) {
                String b = body(m);
                bodies.add(b);
                seen.add(b);
                ids.add(m.getMsgId());
                String want = "k" + b.substring(1);
                if (!"TagA".equals(m.getTags()) || !want.equals(m.getKeys()) || !topic.equals(m.getTopic())) {
                    mismatches.add(b + " tag=" + m.getTags() + " keys=" + m.getKeys() + " topic=" + m.getTopic());
                }
            }
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        c.start();
        boolean ok = waitFor(() -> seen.size() >= 20, BOUND_MS);
        c.shutdown();
        p.shutdown();
        r.put("received", sorted(bodies));
        r.put("msg_ids_match", ids.equals(new java.util.HashSet<>(sentIds)));
        r.put("mismatches", mismatches);
        if (!ok) r.put("error", "timeout: received " + seen.size() + " of 20");
        return r;
    }

    static Map<String, Object> tagFilter() throws Exception {
        DefaultMQProducer p = producer();
        List<Message> msgs = new ArrayList<>();
        for (int i = 0; i < 10; i++) {
            msgs.add(new Message(topic, "A", ("a" + i).getBytes(StandardCharsets.UTF_8)));
            msgs.add(new Message(topic, "B", ("b" + i).getBytes(StandardCharsets.UTF_8)));
        }
        Map<String, Object> r = sendAll(p, msgs);
        ConcurrentLinkedQueue<String> bodies = new ConcurrentLinkedQueue<>();
        DefaultMQPushConsumer c = pushConsumer("A", MessageModel.CLUSTERING);
        c.registerMessageListener((MessageListenerConcurrently) (list, ctx) -> {
            for (MessageExt m : list) bodies.add(body(m));
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        c.start();
        boolean ok = waitFor(() -> bodies.size() >= 10, BOUND_MS);
        Thread.sleep(3000); // anything filtered wrongly would show up now
        c.shutdown();
        p.shutdown();
        Map<String, Object> res = obj("send_status", r.get("send_status"), "received", sorted(bodies));
        if (!ok) res.put("error", "timeout: received " + bodies.size() + " of 10");
        return res;
    }

    static Map<String, Object> orderly() throws Exception {
        DefaultMQProducer p = producer();
        Map<Integer, Integer> queueOf = new TreeMap<>();
        List<String> status = new ArrayList<>();
        for (int i = 0; i < 30; i++) {
            int orderId = i % 3;
            Message m = new Message(topic, "TagA", "order" + orderId,
                ("o" + orderId + "-" + (i / 3)).getBytes(StandardCharsets.UTF_8));
            SendResult sr = p.send(m, (mqs, msg, arg) -> mqs.get((Integer) arg % mqs.size()), orderId);
            status.add(sr.getSendStatus().name());
            queueOf.put(orderId, sr.getMessageQueue().getQueueId());
        }
        Map<String, List<Integer>> seq = new TreeMap<>();
        for (int o = 0; o < 3; o++) seq.put(String.valueOf(o), Collections.synchronizedList(new ArrayList<>()));
        AtomicLong count = new AtomicLong();
        DefaultMQPushConsumer c = pushConsumer("*", MessageModel.CLUSTERING);
        c.registerMessageListener((MessageListenerOrderly) (list, ctx) -> {
            for (MessageExt m : list) {
                String[] parts = body(m).substring(1).split("-");
                seq.get(parts[0]).add(Integer.parseInt(parts[1]));
                count.incrementAndGet();
            }
            return ConsumeOrderlyStatus.SUCCESS;
        });
        c.start();
        boolean ok = waitFor(() -> count.get() >= 30, BOUND_MS);
        c.shutdown();
        p.shutdown();
        Map<String, Object> orders = new TreeMap<>();
        for (Map.Entry<String, List<Integer>> e : seq.entrySet()) {
            synchronized (e.getValue()) { orders.put(e.getKey(), new ArrayList<>(e.getValue())); }
        }
        Map<String, Object> res = obj("send_status", status, "queue_of_order", queueOf,
            "orders", orders, "received", count.get());
        if (!ok) res.put("error", "timeout: received " + count.get() + " of 30");
        return res;
    }

    static Map<String, Object> broadcast() throws Exception {
        List<ConcurrentLinkedQueue<String>> got = new ArrayList<>();
        List<DefaultMQPushConsumer> cs = new ArrayList<>();
        for (int i = 1; i <= 2; i++) {
            ConcurrentLinkedQueue<String> bodies = new ConcurrentLinkedQueue<>();
            got.add(bodies);
            DefaultMQPushConsumer c = pushConsumer("*", MessageModel.BROADCASTING);
            c.setInstanceName("b" + i);
            c.registerMessageListener((MessageListenerConcurrently) (list, ctx) -> {
                for (MessageExt m : list) bodies.add(body(m));
                return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
            });
            c.start();
            cs.add(c);
        }
        DefaultMQProducer p = producer();
        List<Message> msgs = new ArrayList<>();
        for (int i = 0; i < 10; i++) msgs.add(new Message(topic, "TagA", ("m" + i).getBytes(StandardCharsets.UTF_8)));
        Map<String, Object> r = sendAll(p, msgs);
        boolean ok = waitFor(() -> got.get(0).size() >= 10 && got.get(1).size() >= 10, BOUND_MS);
        Thread.sleep(1000);
        for (DefaultMQPushConsumer c : cs) c.shutdown();
        p.shutdown();
        Map<String, Object> res = obj("send_status", r.get("send_status"),
            "consumer1", sorted(got.get(0)), "consumer2", sorted(got.get(1)));
        if (!ok) res.put("error", "timeout: " + got.get(0).size() + " and " + got.get(1).size() + " of 10");
        return res;
    }

    static Map<String, Object> litePull() throws Exception {
        DefaultMQProducer p = producer();
        List<Message> msgs = new ArrayList<>();
        for (int i = 0; i < 20; i++) msgs.add(new Message(topic, "TagA", ("m" + i).getBytes(StandardCharsets.UTF_8)));
        Map<String, Object> r = sendAll(p, msgs);
        p.shutdown();
        DefaultLitePullConsumer c = new DefaultLitePullConsumer(group, hook());
        c.setNamesrvAddr(namesrv);
        c.setConsumeFromWhere(ConsumeFromWhere.CONSUME_FROM_FIRST_OFFSET);
        c.setAutoCommit(false);
        c.subscribe(topic, "*");
        c.start();
        List<String> bodies = new ArrayList<>();
        long end = System.currentTimeMillis() + BOUND_MS;
        while (bodies.size() < 20 && System.currentTimeMillis() < end) {
            for (MessageExt m : c.poll(1000)) bodies.add(body(m));
        }
        c.commitSync();
        Map<String, Object> committed = new TreeMap<>();
        for (MessageQueue mq : c.assignment()) {
            committed.put(mq.getBrokerName() + ":" + mq.getQueueId(), c.committed(mq));
        }
        c.shutdown();
        Map<String, Object> res = obj("send_status", r.get("send_status"), "received", sorted(bodies),
            "committed", committed);
        if (bodies.size() < 20) res.put("error", "timeout: polled " + bodies.size() + " of 20");
        return res;
    }

    static Map<String, Object> retry() throws Exception {
        DefaultMQProducer p = producer();
        List<Message> msgs = new ArrayList<>();
        for (int i = 0; i < 3; i++) msgs.add(new Message(topic, "TagA", "k" + i, ("r" + i).getBytes(StandardCharsets.UTF_8)));
        Map<String, Object> r = sendAll(p, msgs);
        Map<String, Long> firstSeen = new ConcurrentHashMap<>();
        ConcurrentLinkedQueue<Map<String, Object>> redeliveries = new ConcurrentLinkedQueue<>();
        Set<String> done = ConcurrentHashMap.newKeySet();
        DefaultMQPushConsumer c = pushConsumer("*", MessageModel.CLUSTERING);
        c.setConsumeMessageBatchMaxSize(1);
        c.registerMessageListener((MessageListenerConcurrently) (list, ctx) -> {
            MessageExt m = list.get(0);
            String b = body(m);
            long now = System.currentTimeMillis();
            Long first = firstSeen.putIfAbsent(b, now);
            if (first == null) {
                return ConsumeConcurrentlyStatus.RECONSUME_LATER;
            }
            redeliveries.add(obj("body", b, "reconsume_times", m.getReconsumeTimes(),
                "topic", m.getTopic(), "keys", m.getKeys(), "tags", m.getTags(),
                "retry_topic_property", m.getProperty("RETRY_TOPIC"),
                "delay_ms", now - first));
            done.add(b);
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        c.start();
        boolean ok = waitFor(() -> done.size() >= 3, 90_000);
        c.shutdown();
        p.shutdown();
        List<Map<String, Object>> red = new ArrayList<>(redeliveries);
        red.sort((a, b) -> ((String) a.get("body")).compareTo((String) b.get("body")));
        List<Object> times = new ArrayList<>();
        for (Map<String, Object> x : red) times.add(x.get("reconsume_times"));
        Map<String, Object> res = obj("send_status", r.get("send_status"), "first", sorted(firstSeen.keySet()),
            "reconsume_times", times, "redelivered", red);
        if (!ok) res.put("error", "timeout: " + done.size() + " of 3 redelivered");
        return res;
    }

    static Map<String, Object> produce(int n, String prefix) throws Exception {
        DefaultMQProducer p = producer();
        List<String> ids = new ArrayList<>();
        List<String> errors = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            try {
                SendResult sr = p.send(new Message(topic, "TagA", "k" + i, (prefix + i).getBytes(StandardCharsets.UTF_8)));
                ids.add(sr.getMsgId());
                if (sr.getSendStatus() != org.apache.rocketmq.client.producer.SendStatus.SEND_OK) {
                    errors.add(prefix + i + ": " + sr.getSendStatus());
                }
            } catch (Exception e) {
                errors.add(prefix + i + ": " + e);
            }
        }
        p.shutdown();
        Map<String, Object> res = obj("sent", ids.size(), "ids", ids, "errors", errors);
        if (!errors.isEmpty()) res.put("error", errors.size() + " sends failed");
        return res;
    }

    static Map<String, Object> consume(int n, long boundMs) throws Exception {
        ConcurrentLinkedQueue<String> bodies = new ConcurrentLinkedQueue<>();
        Set<String> seen = ConcurrentHashMap.newKeySet();
        DefaultMQPushConsumer c = pushConsumer("*", MessageModel.CLUSTERING);
        c.registerMessageListener((MessageListenerConcurrently) (list, ctx) -> {
            for (MessageExt m : list) {
                bodies.add(body(m));
                seen.add(body(m));
            }
            return ConsumeConcurrentlyStatus.CONSUME_SUCCESS;
        });
        c.start();
        boolean ok = waitFor(() -> seen.size() >= n, boundMs);
        Thread.sleep(2000);
        c.shutdown();
        Map<String, Object> res = obj("distinct", seen.size(), "count", bodies.size(),
            "received", sorted(seen));
        if (!ok) res.put("error", "timeout: received " + seen.size() + " of " + n);
        return res;
    }

    static Map<String, Object> bench(int threads, int seconds, int size) throws Exception {
        DefaultMQProducer p = producer();
        byte[] body = new byte[size];
        Arrays.fill(body, (byte) 'x');
        long end = System.nanoTime() + seconds * 1_000_000_000L;
        AtomicLong errors = new AtomicLong();
        List<long[]> lat = new ArrayList<>();
        int[] counts = new int[threads];
        Thread[] ts = new Thread[threads];
        long start = System.nanoTime();
        for (int t = 0; t < threads; t++) {
            long[] mine = new long[1 << 16];
            lat.add(mine);
            final int ti = t;
            ts[t] = new Thread(() -> {
                long[] l = mine;
                int k = 0;
                while (System.nanoTime() < end) {
                    long t0 = System.nanoTime();
                    try {
                        p.send(new Message(topic, "TagA", body));
                        long d = System.nanoTime() - t0;
                        if (k == l.length) { l = Arrays.copyOf(l, l.length * 2); }
                        l[k++] = d;
                    } catch (Exception e) {
                        errors.incrementAndGet();
                    }
                }
                lat.set(ti, l);
                counts[ti] = k;
            });
            ts[t].start();
        }
        for (Thread t : ts) t.join();
        double elapsed = (System.nanoTime() - start) / 1e9;
        p.shutdown();
        final int total = Arrays.stream(counts).sum();
        long[] all = new long[total];
        int at = 0;
        for (int t = 0; t < threads; t++) {
            System.arraycopy(lat.get(t), 0, all, at, counts[t]);
            at += counts[t];
        }
        Arrays.sort(all);
        java.util.function.DoubleFunction<Double> pct = f -> {
            if (total == 0) return 0.0;
            int i = Math.max(0, Math.min(total - 1, (int) Math.ceil(f * total) - 1));
            return Math.round(all[i] / 1e4) / 100.0;
        };
        Map<String, Object> res = obj("sent", total, "tps", Math.round(total / elapsed),
            "p50_ms", pct.apply(0.50), "p99_ms", pct.apply(0.99), "p999_ms", pct.apply(0.999),
            "max_ms", total == 0 ? 0.0 : Math.round(all[total - 1] / 1e4) / 100.0,
            "errors", errors.get(), "threads", threads, "seconds", seconds, "body_size", size);
        if (total == 0) res.put("error", "no send succeeded (" + errors.get() + " errors)");
        return res;
    }

    public static void main(String[] args) throws Exception {
        out = System.out;
        System.setOut(System.err); // only our JSON line goes to the real stdout
        if (args.length < 4) {
            finish(obj("error", "usage: RemotingClient NAMESRV SCENARIO TOPIC GROUP [ARGS...]"), 1);
        }
        // Client logs, and the BROADCASTING consumers' local offset files, go to a scratch folder
        // (set before any client class loads: both are read in static initialisers).
        String logDir = System.getenv("RMQ_CLIENT_LOG_DIR");
        scratch = Files.createTempDirectory("rmq-remoting-client").toFile();
        System.setProperty("user.home", scratch.getPath());
        System.setProperty("rocketmq.client.localOffsetStoreDir", new File(scratch, ".rocketmq_offsets").getPath());
        System.setProperty("rocketmq.client.logRoot", logDir != null ? logDir : new File(scratch, "logs").getPath());
        String level = System.getenv("RMQ_CLIENT_LOG_LEVEL");
        System.setProperty("rocketmq.client.logLevel", level != null ? level : "WARN");
        System.err.println("RemotingClient: scratch folder (client logs, kept on failure) " + scratch);

        namesrv = args[0];
        String scenario = args[1];
        topic = args[2];
        group = args[3];
        long bound = BOUND_MS;
        try {
            if (scenario.equals("retry")) bound = 90_000;
            if (scenario.equals("bench")) bound = Long.parseLong(args[5]) * 1000 + 60_000;
            if (scenario.equals("consume") && args.length > 5) bound = Long.parseLong(args[5]) * 1000;
        } catch (RuntimeException e) {
            finish(obj("error", "bad arguments for " + scenario + ": " + e), 1);
        }
        final long boundMs = bound;
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(boundMs + 30_000);
            } catch (InterruptedException e) {
                return;
            }
            finish(obj("error", "watchdog: " + scenario + " did not finish in " + (boundMs + 30_000) / 1000 + " s"), 2);
        });
        watchdog.setDaemon(true);
        watchdog.start();
        Map<String, Object> result;
        try {
            switch (scenario) {
                case "send_push": result = sendPush(); break;
                case "tag_filter": result = tagFilter(); break;
                case "orderly": result = orderly(); break;
                case "broadcast": result = broadcast(); break;
                case "lite_pull": result = litePull(); break;
                case "retry": result = retry(); break;
                case "produce":
                    result = produce(Integer.parseInt(args[4]), args.length > 5 ? args[5] : "m");
                    break;
                case "consume":
                    result = consume(Integer.parseInt(args[4]), args.length > 5 ? Long.parseLong(args[5]) * 1000 : BOUND_MS);
                    break;
                case "bench":
                    result = bench(Integer.parseInt(args[4]), Integer.parseInt(args[5]), Integer.parseInt(args[6]));
                    break;
                default:
                    result = obj("error", "unknown scenario " + scenario);
            }
        } catch (Throwable e) {
            e.printStackTrace();
            result = obj("error", e.toString());
        }
        finish(result, result.containsKey("error") ? 1 : 0);
    }
}
