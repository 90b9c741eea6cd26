// Drives a name server + broker over RocketMQ's 4.x remoting protocol with the official Go
// client github.com/apache/rocketmq-client-go/v2, default settings.
// Usage: goremoting NAMESRV SCENARIO TOPIC GROUP; prints exactly one JSON line on stdout (client
// logs go to stderr, level warn unless ROCKETMQ_GO_LOG_LEVEL is set); exits 0 on success, 1 with
// {"error":...} on failure. The producer group is GROUP + "_producer". Scenarios, with the same
// output shape as RemotingClient.java:
//
//	send_push  20 sync sends (m0..m19, tag TagA, keys k<i>), then a push consumer (Clustering,
//	           ConsumeFromFirstOffset, "*") receives them all
//	orderly    30 messages for order ids 0..2 (queue = orderId % queues), orderly push consumer
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"
)

const bound = 60 * time.Second

var stdout = os.Stdout

// finish prints the one JSON line and exits (1 if the result carries an "error").
func finish(result map[string]any) {
	b, _ := json.Marshal(result)
	fmt.Fprintln(stdout, string(b))
	if _, failed := result["error"]; failed {
		os.Exit(1)
	}
	os.Exit(0)
}

func fail(err error) {
	finish(map[string]any{"error": err.Error()})
}

func statusName(s primitive.SendStatus) string {
	switch s {
	case primitive.SendOK:
		return "SEND_OK"
	case primitive.SendFlushDiskTimeout:
		return "FLUSH_DISK_TIMEOUT"
	case primitive.SendFlushSlaveTimeout:
		return "FLUSH_SLAVE_TIMEOUT"
	case primitive.SendSlaveNotAvailable:
		return "SLAVE_NOT_AVAILABLE"
	default:
		return "UNKNOWN_ERROR(" + strconv.Itoa(int(s)) + ")"
	}
}

// orderSelector picks queue orderId % len(queues), orderId taken from the ORDER_ID property.
type orderSelector struct{}

func (orderSelector) Select(msg *primitive.Message, mqs []*primitive.MessageQueue, _ string) *primitive.MessageQueue {
	id, _ := strconv.Atoi(msg.GetProperty("ORDER_ID"))
	return mqs[id%len(mqs)]
}

func newProducer(namesrv, group string, opts ...producer.Option) rocketmq.Producer {
	opts = append([]producer.Option{
		producer.WithNsResolver(primitive.NewPassthroughResolver([]string{namesrv})),
		producer.WithGroupName(group + "_producer"),
	}, opts...)
	p, err := rocketmq.NewProducer(opts...)
	if err != nil {
		fail(err)
	}
	if err := p.Start(); err != nil {
		fail(err)
	}
	return p
}

func newPushConsumer(namesrv, group string, opts ...consumer.Option) rocketmq.PushConsumer {
	opts = append([]consumer.Option{
		consumer.WithNsResolver(primitive.NewPassthroughResolver([]string{namesrv})),
		consumer.WithGroupName(group),
		consumer.WithConsumerModel(consumer.Clustering),
		consumer.WithConsumeFromWhere(consumer.ConsumeFromFirstOffset),
	}, opts...)
	c, err := rocketmq.NewPushConsumer(opts...)
	if err != nil {
		fail(err)
	}
	return c
}

func waitFor(cond func() bool, d time.Duration) bool {
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func sendPush(namesrv, topic, group string) map[string]any {
	p := newProducer(namesrv, group)
	var ids, status []string
	queues := map[string]bool{}
	for i := 0; i < 20; i++ {
		msg := primitive.NewMessage(topic, []byte("m"+strconv.Itoa(i)))
		msg.WithTag("TagA")
		msg.WithKeys([]string{"k" + strconv.Itoa(i)})
		res, err := p.SendSync(context.Background(), msg)
		if err != nil {
			fail(fmt.Errorf("send m%d: %w", i, err))
		}
		ids = append(ids, res.MsgID)
		status = append(status, statusName(res.Status))
		queues[res.MessageQueue.BrokerName+":"+strconv.Itoa(res.MessageQueue.QueueId)] = true
	}
	var mu sync.Mutex
	var bodies, mismatches []string
	seen := map[string]bool{}
	gotIDs := map[string]bool{}
	c := newPushConsumer(namesrv, group)
	err := c.Subscribe(topic, consumer.MessageSelector{Type: consumer.TAG, Expression: "*"},
		func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range msgs {
				b := string(m.Body)
				bodies = append(bodies, b)
				seen[b] = true
				gotIDs[m.MsgId] = true
				if m.GetTags() != "TagA" || m.GetKeys() != "k"+strings.TrimPrefix(b, "m") || m.Topic != topic {
					mismatches = append(mismatches, fmt.Sprintf("%s tag=%s keys=%s topic=%s", b, m.GetTags(), m.GetKeys(), m.Topic))
				}
			}
			return consumer.ConsumeSuccess, nil
		})
	if err != nil {
		fail(err)
	}
	if err := c.Start(); err != nil {
		fail(err)
	}
	ok := waitFor(func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) >= 20 }, bound)
	_ = c.Shutdown()
	_ = p.Shutdown()
	mu.Lock()
	defer mu.Unlock()
	sort.Strings(bodies)
	var qs []string
	for q := range queues {
		qs = append(qs, q)
	}
	sort.Strings(qs)
	match := len(gotIDs) == len(ids)
	for _, id := range ids {
		match = match && gotIDs[id]
	}
	if mismatches == nil {
		mismatches = []string{}
	}
	res := map[string]any{"sent": ids, "send_status": status, "queues": qs, "received": bodies,
		"msg_ids_match": match, "mismatches": mismatches}
	if !ok {
		res["error"] = fmt.Sprintf("timeout: received %d of 20", len(seen))
	}
	return res
}

func orderly(namesrv, topic, group string) map[string]any {
	p := newProducer(namesrv, group, producer.WithQueueSelector(orderSelector{}))
	var status []string
	queueOf := map[string]int{}
	for i := 0; i < 30; i++ {
		orderID := i % 3
		msg := primitive.NewMessage(topic, []byte(fmt.Sprintf("o%d-%d", orderID, i/3)))
		msg.WithTag("TagA")
		msg.WithKeys([]string{"order" + strconv.Itoa(orderID)})
		msg.WithProperty("ORDER_ID", strconv.Itoa(orderID))
		res, err := p.SendSync(context.Background(), msg)
		if err != nil {
			fail(fmt.Errorf("send %d: %w", i, err))
		}
		status = append(status, statusName(res.Status))
		queueOf[strconv.Itoa(orderID)] = res.MessageQueue.QueueId
	}
	var mu sync.Mutex
	orders := map[string][]int{"0": {}, "1": {}, "2": {}}
	count := 0
	c := newPushConsumer(namesrv, group, consumer.WithConsumerOrder(true))
	err := c.Subscribe(topic, consumer.MessageSelector{Type: consumer.TAG, Expression: "*"},
		func(_ context.Context, msgs ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range msgs {
				parts := strings.SplitN(strings.TrimPrefix(string(m.Body), "o"), "-", 2)
				seq, _ := strconv.Atoi(parts[1])
				orders[parts[0]] = append(orders[parts[0]], seq)
				count++
			}
			return consumer.ConsumeSuccess, nil
		})
	if err != nil {
		fail(err)
	}
	if err := c.Start(); err != nil {
		fail(err)
	}
	ok := waitFor(func() bool { mu.Lock(); defer mu.Unlock(); return count >= 30 }, bound)
	_ = c.Shutdown()
	_ = p.Shutdown()
	mu.Lock()
	defer mu.Unlock()
	res := map[string]any{"send_status": status, "queue_of_order": queueOf, "orders": orders, "received": count}
	if !ok {
		res["error"] = fmt.Sprintf("timeout: received %d of 30", count)
	}
	return res
}

func main() {
	// Only the result goes to the real stdout.
	os.Stdout = os.Stderr
	if os.Getenv("ROCKETMQ_GO_LOG_LEVEL") == "" {
		rlog.SetLogLevel("warn")
	}
	if len(os.Args) != 5 {
		fail(fmt.Errorf("usage: goremoting NAMESRV send_push|orderly TOPIC GROUP"))
	}
	namesrv, scenario, topic, group := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	// Watchdog: whatever happens, never run longer than the bound plus shutdown slack.
	go func() {
		time.Sleep(bound + 30*time.Second)
		fmt.Fprintln(stdout, `{"error":"watchdog: `+scenario+` did not finish in 90 s"}`)
		os.Exit(2)
	}()
	switch scenario {
	case "send_push":
		finish(sendPush(namesrv, topic, group))
	case "orderly":
		finish(orderly(namesrv, topic, group))
	default:
		fail(fmt.Errorf("unknown scenario %s", scenario))
	}
}
