#!/usr/bin/env bash
# Installs Apache RocketMQ 5.4.0 itself (name server, broker, proxy, mqadmin tools), the reference
# peer that scripts/apache.sh runs, as the jars Maven Central serves (the release zip is not on any
# registry here; 5.4.0 is the newest version that resolves completely), into
# $HOME/.cache/rocketmq-k8s/apache-5.4.0/lib (kept between runs: a warm machine passes through at
# once). Progress goes to stderr; the last line on stdout is the lib folder:
#   lib=$(scripts/setup-apache.sh)   # then: java -cp "$lib/*" ...
# Cold: about 94 MB (150 jars) from Maven Central.
set -euo pipefail
exec </dev/null

version="5.4.0"
cache="${RMQ_CLIENT_CACHE:-$HOME/.cache/rocketmq-k8s}"
root="$cache/apache-$version"
lib="$root/lib"
marker="$root/.complete"   # written last: a folder without it is a partial download
mkdir -p "$cache"

log() { echo "setup-apache: $*" >&2; }

# Benchmarks and tests may call this concurrently: one download at a time.
exec 9>"$cache/apache-$version.lock"
flock 9

if [ ! -f "$marker" ]; then
  log "resolving Apache RocketMQ $version from Maven Central into $lib"
  rm -rf "$root"
  mkdir -p "$root"
  deps=""
  for a in rocketmq-namesrv rocketmq-broker rocketmq-proxy rocketmq-tools; do
    deps="$deps
    <dependency>
      <groupId>org.apache.rocketmq</groupId><artifactId>$a</artifactId><version>$version</version>
    </dependency>"
  done
  cat > "$root/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rmq.bench</groupId><artifactId>apache-rocketmq</artifactId><version>1</version>
  <dependencies>$deps
  </dependencies>
</project>
POM
  (cd "$root" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=lib >&2)
  for a in rocketmq-namesrv rocketmq-broker rocketmq-proxy rocketmq-tools; do
    [ -f "$lib/$a-$version.jar" ] || { log "missing $lib/$a-$version.jar after mvn"; exit 1; }
  done
  echo "$version" > "$marker"
fi
log "Apache RocketMQ $version: $(find "$lib" -name '*.jar' | wc -l) jars in $lib"
echo "$lib"
