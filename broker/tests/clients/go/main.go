// Drives a running broker with the official Go 5.x client
// (github.com/apache/rocketmq-clients/golang/v5) with its default settings: TLS on.
// Usage: goclient send_receive_ack ENDPOINT TOPIC GROUP; prints one JSON line.
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

func main() {
	if len(os.Args) != 5 || os.Args[1] != "send_receive_ack" {
		fail(fmt.Errorf("usage: goclient send_receive_ack ENDPOINT TOPIC GROUP"))
	}
	endpoint, topic, group := os.Args[2], os.Args[3], os.Args[4]
	creds := &credentials.SessionCredentials{}
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

	consumer, err := rmq_client.NewSimpleConsumer(
		&rmq_client.Config{Endpoint: endpoint, ConsumerGroup: group, Credentials: creds},
		rmq_client.WithSimpleAwaitDuration(5*time.Second),
		rmq_client.WithSimpleSubscriptionExpressions(map[string]*rmq_client.FilterExpression{topic: rmq_client.SUB_ALL}),
	)
	if err != nil {
		fail(err)
	}
	if err := consumer.Start(); err != nil {
		fail(err)
	}
	var got []received
	deadline := time.Now().Add(60 * time.Second)
	for len(got) < 10 && time.Now().Before(deadline) {
		mvs, err := consumer.Receive(context.TODO(), 32, 15*time.Second)
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
	out, _ := json.Marshal(map[string]interface{}{"sent": sent, "received": got})
	fmt.Println(string(out))
}
