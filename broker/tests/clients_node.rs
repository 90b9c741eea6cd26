//! The official Node.js client (npm `rocketmq-client-nodejs`, installed by
//! `scripts/setup-clients.sh`) against the real `rmq-broker standalone` on loopback.
//! The client side is `tests/clients/node_client.js`.

mod common;

use common::clients::{self, Client, check_send_receive_ack};
use common::process::BrokerProcess;

#[test]
fn node_send_receive_ack() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &["--topic", "NodeTopic:4"]);
    let v = clients::run(
        Client::Node,
        &broker,
        &["send_receive_ack", "NodeTopic", "NodeGroup"],
        &[],
    );
    check_send_receive_ack(&v);
    clients::record(Client::Node, "send");
    clients::record(Client::Node, "simple");
}
