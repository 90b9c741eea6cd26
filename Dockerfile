# Images of the broker (every role: namesrv, store, proxy, standalone) and of the operator.
#
#   docker build --target broker   -t ghcr.io/rocketmq-rs/rmq-broker:0.1.0 .
#   docker build --target operator -t ghcr.io/rocketmq-rs/rmq-operator:0.1.0 .
#
# Both run as a non-root user on a distroless base (glibc, CA certificates, nothing else).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# protobuf is compiled in pure Rust (protox): no protoc needed.
COPY Cargo.toml Cargo.lock ./
COPY broker broker
COPY operator operator
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rmq-broker --bin rmq-operator \
    && mkdir -p /out \
    && cp target/release/rmq-broker target/release/rmq-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS broker
COPY --from=build /out/rmq-broker /usr/local/bin/rmq-broker
USER 65532:65532
# remoting (store), HTTP (metrics/health/admin), gRPC (proxy/standalone), name server
EXPOSE 10911 10912 8081 8082 9876 9877
ENTRYPOINT ["/usr/local/bin/rmq-broker"]
CMD ["standalone", "--data-dir", "/data"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/rmq-operator /usr/local/bin/rmq-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/rmq-operator"]
CMD ["run"]
