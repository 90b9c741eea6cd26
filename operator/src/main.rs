//! The `RocketMQCluster` operator. Not built yet: the reconciler, CRD types and Helm chart
//! arrive with the operator issue. Until then the binary says so and exits non-zero, so that
//! nobody mistakes it for a working controller.

fn main() {
    eprintln!("rmq-operator: the operator is not implemented yet (see the operator issue)");
    std::process::exit(2);
}
