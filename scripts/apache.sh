#!/usr/bin/env bash
# Runs Apache RocketMQ 5.4.0 on loopback as a reference peer for benchmarks: one name server and one
# broker+proxy JVM (proxy "local mode": the gRPC/remoting proxy and the broker in one process, as
# Apache's quick start does), from the jars scripts/setup-apache.sh installs.
#   scripts/apache.sh start WORKDIR               write configs, start both, wait until ready
#   scripts/apache.sh topic WORKDIR TOPIC QUEUES  create TOPIC with QUEUES read and write queues
#   scripts/apache.sh topics WORKDIR T:Q [T:Q...] create many topics in one mqadmin call
#   scripts/apache.sh group WORKDIR GROUP         create subscription group GROUP
#   scripts/apache.sh groups WORKDIR G [G...]     create many groups in one mqadmin call
#   scripts/apache.sh stop WORKDIR                stop both (TERM, then KILL after APACHE_STOP_SECONDS)
# WORKDIR holds the configs, the store, pid files (namesrv.pid, broker.pid) and logs (namesrv.out,
# broker.out, and RocketMQ's own logs under logs/rocketmqlogs/). The gRPC proxy does not create
# topics on the fly: create them with `topic` first. Settings (environment):
#   APACHE_FLUSH          ASYNC_FLUSH | SYNC_FLUSH (default ASYNC_FLUSH)
#   APACHE_SEGMENT_BYTES  commit log segment size, mappedFileSizeCommitLog (default 1073741824)
#   APACHE_HEAP           broker+proxy JVM heap, -Xms = -Xmx (default 2g)
#   APACHE_NAMESRV_HEAP   name server JVM heap (default 512m)
#   APACHE_NAMESRV_PORT   name server (default 9876)
#   APACHE_REMOTING_PORT  proxy remoting (default 8080)
#   APACHE_GRPC_PORT      proxy gRPC (default 8081)
#   APACHE_BROKER_PORT    broker remoting (default 10911); the broker also listens on PORT-2 (its
#                         "fast" channel) and PORT+1 (HA), so keep other ports clear of those
#   APACHE_STOP_SECONDS   grace after TERM before KILL (default 10). A clean exit of the broker+proxy
#                         JVM takes about 13 s here (its shutdown hook joins service threads one by
#                         one), so the default usually ends in KILL: fine for a throwaway WORKDIR;
#                         use 30 to reuse the store without crash recovery.
set -euo pipefail
exec </dev/null

cmd="${1:-}"
work="${2:-}"
usage() { echo "usage: $0 start|stop WORKDIR | topic WORKDIR TOPIC QUEUES | topics WORKDIR TOPIC:QUEUES... | group WORKDIR GROUP | groups WORKDIR GROUP..." >&2; exit 2; }
[ -n "$cmd" ] && [ -n "$work" ] || usage
mkdir -p "$work"
work="$(cd "$work" && pwd)"
log() { echo "apache: $*" >&2; }

# Heap: Apache's 5.x launchers use fixed sizes meant for a dedicated production host, not sizes
# computed from the machine (runbroker.sh -Xms8g -Xmx8g with 15g direct memory, as their JVM tuning
# guide recommends; runserver.sh, which `mqnamesrv` and `mqproxy` use, -Xms4g -Xmx4g), and on a test
# machine one shrinks them. On a benchmark box shared with the load generator and our own broker, 2g
# is ample for broker+proxy (the commit log is mmapped page cache, not heap) and 512m for the name
# server's small route tables. G1 settings as in runserver.sh; no -XX:+AlwaysPreTouch (runbroker.sh
# has it), so RSS shows memory actually used rather than the whole heap from the start.
heap="${APACHE_HEAP:-2g}"
ns_heap="${APACHE_NAMESRV_HEAP:-512m}"
jvm_opts=(-server -XX:+UseG1GC -XX:G1HeapRegionSize=16m -XX:G1ReservePercent=25
  -XX:InitiatingHeapOccupancyPercent=30 -XX:SoftRefLRUPolicyMSPerMB=0 -XX:-OmitStackTraceInFastThrow
  --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED --add-exports=java.base/sun.nio.ch=ALL-UNNAMED
  # A shared test machine's disk is often more than 90% full by Apache's measure (free space over
  # total, reserved blocks counted as used): past diskSpaceWarningLevelRatio (0.90) the broker
  # refuses every write as "disk full". Benchmarks need it writing; this is not a tuning.
  -Drocketmq.broker.diskSpaceWarningLevelRatio=0.99 -Drocketmq.broker.diskSpaceCleanForciblyRatio=0.98
  -Duser.home="$work")   # RocketMQ logs under ~/logs: keep them (and ~/store defaults) in WORKDIR
export ROCKETMQ_HOME="$work"
# Each JVM names its logback config (a resource in its jar), as Apache's launchers do: without it
# every JVM picks the first one on the classpath (the proxy's), and the name server and mqadmin
# would write into the broker's log files.
logconf() { echo "-Drmq.logback.configurationFile=rmq.$1.logback.xml"; }

# A pid from a pid file, if that process is still ours (its command line names WORKDIR).
alive() {
  local pid
  pid="$(cat "$work/$1.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$work"* ]] && echo "$pid"
}
# Fail with the last lines of the logs that explain it.
fail() {
  local msg="$1"; shift
  log "$msg"
  for f in "$@"; do [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 30 "$f" >&2; }; done
  exit 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
namesrv_addr() { echo "127.0.0.1:$(sed -n 's/^listenPort=//p' "$work/namesrv.conf")"; }
mqadmin() {
  java -Xmx256m -XX:TieredStopAtLevel=1 -Duser.home="$work" "$(logconf tools)" -cp "$lib/*" \
    org.apache.rocketmq.tools.command.MQAdminStartup "$@" 2>&1
}

stop_one() { # name: TERM, up to APACHE_STOP_SECONDS, then KILL, up to 5 s more
  local pid i grace="${APACHE_STOP_SECONDS:-10}"
  pid="$(alive "$1")" || { rm -f "$work/$1.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  if [ -d "/proc/$pid" ]; then
    log "$1 (pid $pid) still running $grace s after TERM: KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && fail "$1 (pid $pid) survived KILL" "$work/$1.out"
  fi
  rm -f "$work/$1.pid"
  log "$1 (pid $pid) stopped"
}

case "$cmd" in
start)
  [ $# -eq 2 ] || usage
  flush="${APACHE_FLUSH:-ASYNC_FLUSH}"
  case "$flush" in ASYNC_FLUSH | SYNC_FLUSH) ;; *) log "APACHE_FLUSH must be ASYNC_FLUSH or SYNC_FLUSH"; exit 2 ;; esac
  ns_port="${APACHE_NAMESRV_PORT:-9876}"
  remoting_port="${APACHE_REMOTING_PORT:-8080}"
  grpc_port="${APACHE_GRPC_PORT:-8081}"
  broker_port="${APACHE_BROKER_PORT:-10911}"
  for n in namesrv broker; do
    if pid="$(alive $n)"; then log "$n already running (pid $pid): $0 stop $work first"; exit 1; fi
  done
  # Every port (the broker's three included) must be free and distinct.
  ports=("$ns_port" "$remoting_port" "$grpc_port" "$broker_port" $((broker_port - 2)) $((broker_port + 1)))
  [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -eq ${#ports[@]} ] ||
    { log "ports clash: ${ports[*]} (name server, remoting, gRPC, broker, broker-2, broker+1)"; exit 2; }
  for p in "${ports[@]}"; do listening "$p" && { log "port $p is already in use"; exit 1; }; done
  lib="$("$(dirname "$0")/setup-apache.sh" | tail -n 1)"

  # Configs: the broker registers as broker-a of DefaultCluster at 127.0.0.1.
  echo "listenPort=$ns_port" > "$work/namesrv.conf"
  cat > "$work/broker.conf" <<CONF
brokerClusterName=DefaultCluster
brokerName=broker-a
brokerId=0
brokerRole=ASYNC_MASTER
namesrvAddr=127.0.0.1:$ns_port
brokerIP1=127.0.0.1
listenPort=$broker_port
storePathRootDir=$work/store
storePathCommitLog=$work/store/commitlog
flushDiskType=$flush
mappedFileSizeCommitLog=${APACHE_SEGMENT_BYTES:-1073741824}
diskMaxUsedSpaceRatio=95
CONF
  # (5.x spells it mappedFileSizeCommitLog; 4.x's mapedFileSizeCommitLog would be silently ignored.)
  cat > "$work/rmq-proxy.json" <<JSON
{"rocketMQClusterName": "DefaultCluster", "namesrvAddr": "127.0.0.1:$ns_port",
 "remotingListenPort": $remoting_port, "grpcServerPort": $grpc_port}
JSON

  # From here on, a failed start stops whatever it started.
  trap 'rc=$?; [ $rc -eq 0 ] || { stop_one broker; stop_one namesrv; }; exit $rc' EXIT
  started=$SECONDS
  java "-Xms$ns_heap" "-Xmx$ns_heap" "${jvm_opts[@]}" "$(logconf namesrv)" -cp "$lib/*" \
    org.apache.rocketmq.namesrv.NamesrvStartup -c "$work/namesrv.conf" >"$work/namesrv.out" 2>&1 &
  echo $! > "$work/namesrv.pid"
  ns_logs=("$work/namesrv.out" "$work/logs/rocketmqlogs/namesrv.log")
  until listening "$ns_port"; do
    alive namesrv >/dev/null || fail "name server exited during startup" "${ns_logs[@]}"
    ((SECONDS - started < 60)) || fail "name server not listening on $ns_port after 60 s" "${ns_logs[@]}"
    sleep 0.5
  done
  log "name server on 127.0.0.1:$ns_port after $((SECONDS - started)) s"

  java "-Xms$heap" "-Xmx$heap" "${jvm_opts[@]}" "$(logconf proxy)" -cp "$lib/*" \
    org.apache.rocketmq.proxy.ProxyStartup -pm local -bc "$work/broker.conf" -pc "$work/rmq-proxy.json" \
    >"$work/broker.out" 2>&1 &
  echo $! > "$work/broker.pid"
  b_logs=("$work/broker.out" "$work/logs/rocketmqlogs/broker.log" "$work/logs/rocketmqlogs/proxy.log")
  until listening "$grpc_port" && mqadmin clusterList -n "127.0.0.1:$ns_port" | grep -w broker-a >/dev/null; do
    alive broker >/dev/null || fail "broker+proxy exited during startup" "${b_logs[@]}"
    ((SECONDS - started < 120)) ||
      fail "broker not registered / gRPC $grpc_port not listening after 120 s" "${b_logs[@]}"
    sleep 1
  done
  log "ready after $((SECONDS - started)) s: name server 127.0.0.1:$ns_port, broker 127.0.0.1:$broker_port," \
    "proxy gRPC 127.0.0.1:$grpc_port, remoting 127.0.0.1:$remoting_port ($flush, heap $heap)"
  ;;
topic | group)
  { [ "$cmd" = topic ] && [ $# -eq 4 ]; } || { [ "$cmd" = group ] && [ $# -eq 3 ]; } || usage
  [ -f "$work/namesrv.conf" ] || { log "no $work/namesrv.conf: start it first"; exit 1; }
  lib="$("$(dirname "$0")/setup-apache.sh" 2>/dev/null | tail -n 1)"
  if [ "$cmd" = topic ]; then
    out="$(mqadmin updateTopic -n "$(namesrv_addr)" -c DefaultCluster -t "$3" -r "$4" -w "$4")" || true
  else
    out="$(mqadmin updateSubGroup -n "$(namesrv_addr)" -c DefaultCluster -g "$3")" || true
  fi
  # mqadmin reports failures on its output, not always in its exit status.
  grep -q success <<<"$out" || fail "$cmd $3 failed: $out" "$work/logs/rocketmqlogs/tools.log"
  log "$cmd $3 created"
  ;;
topics | groups)
  [ $# -ge 3 ] || usage
  [ -f "$work/namesrv.conf" ] || { log "no $work/namesrv.conf: start it first"; exit 1; }
  lib="$("$(dirname "$0")/setup-apache.sh" 2>/dev/null | tail -n 1)"
  kind="$cmd"
  shift 2
  # One mqadmin JVM for all of them: updateTopicList reads a JSON list of TopicConfig,
  # updateSubGroupList one of SubscriptionGroupConfig. Apache's proxy answers a gRPC consumer
  # only for a group the broker holds (auto-creation happens on the remoting path), so groups
  # are created up front.
  python3 -c 'import json, sys
if sys.argv[1] == "topics":
    out = [{"topicName": t, "readQueueNums": int(q), "writeQueueNums": int(q), "perm": 6}
           for t, q in (a.rsplit(":", 1) for a in sys.argv[2:])]
else:
    out = [{"groupName": g} for g in sys.argv[2:]]
print(json.dumps(out))' "$kind" "$@" >"$work/$kind.json"
  [ "$kind" = topics ] && admin_cmd=updateTopicList || admin_cmd=updateSubGroupList
  out="$(mqadmin "$admin_cmd" -n "$(namesrv_addr)" -c DefaultCluster -f "$work/$kind.json")" || true
  grep -q success <<<"$out" || fail "$kind failed: $out" "$work/logs/rocketmqlogs/tools.log"
  log "$# $kind created"
  ;;
stop)
  [ $# -eq 2 ] || usage
  stop_one broker
  stop_one namesrv
  ;;
*) usage ;;
esac
