// Drives a running broker with the official Go 5.x client
// (github.com/apache/rocketmq-clients/golang/v5) with its default settings: TLS on.
// Usage: goclient SCENARIO ENDPOINT TOPIC GROUP; prints one JSON line. Scenarios:
//
//	send_receive_ack  10 messages with tag, key and a user property; SimpleConsumer receive + ack
//	send_only         the 10 messages of send_receive_ack; prints {"sent":[ids]}
//	receive_only      receives and acks what arrives within RMQ_RECEIVE_DEADLINE_SECS (default 5) s
//
// Environment: RMQ_ACCESS_KEY and RMQ_SECRET_KEY sign requests with these credentials;
// RMQ_TLS=1 / RMQ_TLS=0 turns TLS on / off (the client trusts any server certificate).
// Any error (a refused request too) is printed to stderr with exit status 1.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	rmq_client "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
)

type received struct {
	ID      string            `json:"id"`
	Body    string            `json:"body"`
	Tag     string            `json:"tag"`
	Keys    []string          `json:"keys"`
	Props   map[string]string `json:"props"`
	Attempt int32             `json:"attempt"`
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// refused tells whether err is the server refusing the request (UNAUTHORIZED, FORBIDDEN).
func refused(err error) bool {
	e, ok := rmq_client.AsErrRpcStatus(err)
	return ok && (e.GetCode() == 40100 || e.GetCode() == 40300)
}

// send sends the 10 messages of send_receive_ack and returns their ids.
func send(endpoint, topic string, creds *credentials.SessionCredentials) []string {
	producer, err := rmq_client.NewProducer(&rmq_client.Config{Endpoint: endpoint, Credentials: creds},
		rmq_client.WithTopics(topic))
	if err != nil {
		fail(err)
	}
	if err := producer.Start(); err != nil {
		fail(err)
	}
	var sent []string
	for i := 0; i < 10; i++ {
		msg := &rmq_client.Message{Topic: topic, Body: []byte("hello-" + strconv.Itoa(i))}
		msg.SetTag("TagA")
		msg.SetKeys("key-" + strconv.Itoa(i))
		msg.AddProperty("idx", strconv.Itoa(i))
		receipts, err := producer.Send(context.TODO(), msg)
		if err != nil {
			fail(err)
		}
		sent = append(sent, receipts[0].MessageID)
	}
	producer.GracefulStop()
	return sent
}

// receive receives and acks until want messages arrived or the deadline passed.
func receive(endpoint, topic, group string, creds *credentials.SessionCredentials, want int,
	deadline time.Time, await time.Duration) []received {
	consumer, err := rmq_client.NewSimpleConsumer(
		&rmq_client.Config{Endpoint: endpoint, ConsumerGroup: group, Credentials: creds},
		rmq_client.WithSimpleAwaitDuration(await),
		rmq_client.WithSimpleSubscriptionExpressions(map[string]*rmq_client.FilterExpression{topic: rmq_client.SUB_ALL}),
	)
	if err != nil {
		fail(err)
	}
	if err := consumer.Start(); err != nil {
		fail(err)
	}
	got := []received{}
	for len(got) < want && time.Now().Before(deadline) {
		mvs, err := consumer.Receive(context.TODO(), 32, 15*time.Second)
		if refused(err) {
			fail(err)
		}
		if err != nil {
			continue // MESSAGE_NOT_FOUND is an error in this client
		}
		for _, mv := range mvs {
			tag := ""
			if mv.GetTag() != nil {
				tag = *mv.GetTag()
			}
			got = append(got, received{mv.GetMessageId(), string(mv.GetBody()), tag, mv.GetKeys(), mv.GetProperties(), mv.GetDeliveryAttempt()})
			if err := consumer.Ack(context.TODO(), mv); err != nil {
				fail(err)
			}
		}
	}
	consumer.GracefulStop()
	return got
}

func main() {
	if len(os.Args) != 5 {
		fail(fmt.Errorf("usage: goclient send_receive_ack|send_only|receive_only ENDPOINT TOPIC GROUP"))
	}
	scenario, endpoint, topic, group := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	creds := &credentials.SessionCredentials{
		AccessKey:    os.Getenv("RMQ_ACCESS_KEY"),
		AccessSecret: os.Getenv("RMQ_SECRET_KEY"),
	}
	switch os.Getenv("RMQ_TLS") {
	case "1":
		rmq_client.EnableSsl = true
	case "0":
		rmq_client.EnableSsl = false
	}
	var out []byte
	switch scenario {
	case "send_receive_ack":
		sent := send(endpoint, topic, creds)
		got := receive(endpoint, topic, group, creds, 10, time.Now().Add(60*time.Second), 5*time.Second)
		out, _ = json.Marshal(map[string]interface{}{"sent": sent, "received": got})
	case "send_only":
		out, _ = json.Marshal(map[string]interface{}{"sent": send(endpoint, topic, creds)})
	case "receive_only":
		secs := 5
		if s := os.Getenv("RMQ_RECEIVE_DEADLINE_SECS"); s != "" {
			secs, _ = strconv.Atoi(s)
		}
		deadline := time.Now().Add(time.Duration(secs) * time.Second)
		got := receive(endpoint, topic, group, creds, 1<<30, deadline, 2*time.Second)
		out, _ = json.Marshal(map[string]interface{}{"received": got})
	default:
		fail(fmt.Errorf("unknown scenario %s", scenario))
	}
	fmt.Println(string(out))
}
