#!/usr/bin/env bash
# Installs the official RocketMQ clients that the compatibility tests drive (the RocketMQ 5 gRPC
# clients, and the 4.x remoting clients and mqadmin for cluster mode), into caches under
# $HOME/.cache/rocketmq-k8s (keyed by version, so a warm machine skips this). Prints nothing
# on success but the versions. Used by the broker's client tests (broker/tests/clients/).
set -euo pipefail
cache="${RMQ_CLIENT_CACHE:-$HOME/.cache/rocketmq-k8s}"
mkdir -p "$cache"

# Python: PyPI rocketmq-python-client.
py_version="5.1.2"
venv="$cache/python-client-$py_version"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import rocketmq" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "rocketmq-python-client==$py_version"
fi
echo "setup-clients: python rocketmq-python-client $py_version in $venv"

# Node.js: npm rocketmq-client-nodejs.
node_version="1.0.8"
nodedir="$cache/node-client-$node_version"
if [ ! -d "$nodedir/node_modules/rocketmq-client-nodejs" ]; then
  rm -rf "$nodedir"
  mkdir -p "$nodedir"
  (cd "$nodedir" && echo '{"name":"rmq-client-tests","private":true}' > package.json &&
    npm install --silent --no-audit --no-fund "rocketmq-client-nodejs@$node_version" >/dev/null)
fi
echo "setup-clients: node rocketmq-client-nodejs $node_version in $nodedir"

# Java: Maven org.apache.rocketmq:rocketmq-client-java (one shaded jar).
java_version="5.2.0"
javadir="$cache/java-client-$java_version"
if [ ! -f "$javadir/lib/rocketmq-client-java-$java_version.jar" ]; then
  rm -rf "$javadir"
  mkdir -p "$javadir"
  cat > "$javadir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rmq.tests</groupId><artifactId>java-client</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-client-java</artifactId>
      <version>$java_version</version>
    </dependency>
  </dependencies>
</project>
POM
  (cd "$javadir" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib)
fi
echo "setup-clients: java rocketmq-client-java $java_version in $javadir"

# Go: github.com/apache/rocketmq-clients/golang/v5 (served by exact version only), built into
# a small driver binary keyed by the driver's source.
go_version="v5.1.4"
src="$(cd "$(dirname "$0")/.." && pwd)/broker/tests/clients/go"
key=$(cat "$src/main.go" "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-12)
gobin="$cache/go-client-$go_version-$key/goclient"
if [ ! -x "$gobin" ]; then
  mkdir -p "$(dirname "$gobin")"
  (cd "$src" && go build -mod=readonly -o "$gobin" .)
fi
echo "setup-clients: go rocketmq-clients/golang/v5 $go_version in $gobin"

# Rust: crates.io rocketmq 5.0.0, built into a small driver binary (its own target folder, kept
# in the cache).
rust_version="5.0.0"
rsrc="$(cd "$(dirname "$0")/.." && pwd)/broker/tests/clients/rust"
rkey=$(cat "$rsrc/Cargo.toml" "$rsrc/Cargo.lock" "$rsrc/src/main.rs" 2>/dev/null | sha256sum | cut -c1-12)
rustbin="$cache/rust-client-$rust_version-$rkey/rust-client"
if [ ! -x "$rustbin" ]; then
  mkdir -p "$(dirname "$rustbin")"
  CARGO_TARGET_DIR="$cache/rust-client-target" cargo build -q --release --locked \
    --manifest-path "$rsrc/Cargo.toml"
  cp "$cache/rust-client-target/release/rmq-rust-client-driver" "$rustbin"
fi
echo "setup-clients: rust rocketmq $rust_version in $rustbin"

# Java 4.x remoting client: Maven org.apache.rocketmq:rocketmq-client 4.9.8 (the newest 4.9.x
# that Maven Central serves), for broker/tests/clients/RemotingClient.java.
remoting_version="4.9.8"
remotingdir="$cache/remoting-client-$remoting_version"
if [ ! -f "$remotingdir/lib/rocketmq-client-$remoting_version.jar" ]; then
  rm -rf "$remotingdir"
  mkdir -p "$remotingdir"
  cat > "$remotingdir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rmq.tests</groupId><artifactId>remoting-client</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-client</artifactId>
      <version>$remoting_version</version>
    </dependency>
  </dependencies>
</project>
POM
  (cd "$remotingdir" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib)
fi
echo "setup-clients: java rocketmq-client $remoting_version in $remotingdir"

# mqadmin: Maven org.apache.rocketmq:rocketmq-tools (brings rocketmq-client of the same version).
# Run: java -cp "$mqadmindir/lib/*" org.apache.rocketmq.tools.command.MQAdminStartup CMD -n ADDR ...
mqadmin_version="5.4.0"
mqadmindir="$cache/mqadmin-$mqadmin_version"
if [ ! -f "$mqadmindir/lib/rocketmq-tools-$mqadmin_version.jar" ]; then
  rm -rf "$mqadmindir"
  mkdir -p "$mqadmindir"
  cat > "$mqadmindir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rmq.tests</groupId><artifactId>mqadmin</artifactId><version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-tools</artifactId>
      <version>$mqadmin_version</version>
    </dependency>
  </dependencies>
</project>
POM
  (cd "$mqadmindir" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib)
fi
echo "setup-clients: java rocketmq-tools (mqadmin) $mqadmin_version in $mqadmindir"

# Go 4.x remoting client: github.com/apache/rocketmq-client-go/v2 v2.1.2 (the newest tagged
# release the proxy serves), built into a driver binary keyed by the driver's source.
gor_version="v2.1.2"
gorsrc="$(cd "$(dirname "$0")/.." && pwd)/broker/tests/clients/go-remoting"
gorkey=$(cat "$gorsrc/main.go" "$gorsrc/go.mod" "$gorsrc/go.sum" | sha256sum | cut -c1-12)
gorbin="$cache/go-remoting-client-$gor_version-$gorkey/goremoting"
if [ ! -x "$gorbin" ]; then
  mkdir -p "$(dirname "$gorbin")"
  (cd "$gorsrc" && go build -mod=readonly -o "$gorbin" .)
fi
echo "setup-clients: go rocketmq-client-go/v2 $gor_version in $gorbin"
