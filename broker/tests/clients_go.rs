//! The official Go 5.x client (`github.com/apache/rocketmq-clients/golang/v5`, built by
//! `scripts/setup-clients.sh`) with its default settings, which means TLS, against the real
//! `rmq-broker standalone` on loopback. The client side is `tests/clients/go/main.go`.

mod common;

use common::clients::{self, Client, check_send_receive_ack};
use common::process::BrokerProcess;

#[test]
fn go_send_receive_ack_over_default_tls() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "GoTopic:4"]);
    let v = clients::run(
        Client::Go,
        &broker,
        &["send_receive_ack", "GoTopic", "GoGroup"],
        &[],
    );
    check_send_receive_ack(&v);
    clients::record(Client::Go, "send");
    clients::record(Client::Go, "simple");
}
