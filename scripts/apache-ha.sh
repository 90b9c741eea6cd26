#!/usr/bin/env bash
# Runs Apache RocketMQ 5.4.0 in controller mode (RIP-44: automatic master failover) on loopback as a
# reference peer for replication benchmarks, from the jars scripts/setup-apache.sh installs: one name
# server JVM with the controller embedded (single-peer DLedger group), 1+REPLICAS broker JVMs of
# broker-a (broker 0 starts first and becomes the first master), and one proxy JVM in cluster mode.
#   scripts/apache-ha.sh start WORKDIR REPLICAS MODE  REPLICAS 1|2 (slaves), MODE SYNC|ASYNC; waits
#                                                     until every broker is in the SyncStateSet and
#                                                     the proxy's gRPC port listens
#   scripts/apache-ha.sh topic WORKDIR TOPIC QUEUES   create TOPIC (QUEUES read/write queues) on the master
#   scripts/apache-ha.sh group WORKDIR GROUP          create subscription group GROUP
#   scripts/apache-ha.sh master WORKDIR               print "ADDR epoch=E" of the master, as the controller sees it
#   scripts/apache-ha.sh status WORKDIR               print the controller's SyncStateSet of broker-a
#   scripts/apache-ha.sh kill-master WORKDIR          kill -9 the master's JVM, print its pid
#   scripts/apache-ha.sh restart WORKDIR N            start broker N again (same config and store) and
#                                                     wait until it is back in the SyncStateSet
#   scripts/apache-ha.sh stop WORKDIR                 stop everything (TERM, then KILL after
#                                                     APACHE_HA_STOP_SECONDS; usually ends in KILL)
# Brokers are numbered 0..REPLICAS. WORKDIR holds the configs, pid files (namesrv.pid, broker-N.pid,
# proxy.pid), JVM output (*.out), the controller's DLedger log (controller/), and one folder per broker
# (broker-N/: store and RocketMQ's own logs under logs/rocketmqlogs/; each broker JVM gets its own
# user.home because in controller mode they all log as broker-a). The name server and its embedded
# controller both log to WORKDIR/logs/rocketmqlogs/namesrv.log, the proxy to proxy/logs/rocketmqlogs/.
#
# Replication mode. In controller mode the broker's brokerRole setting does not matter: whichever
# broker the controller elects runs as SYNC_MASTER (ReplicasManager.changeToMaster sets it), and what
# a send waits for is decided in CommitLog.asyncPutMessage/handleHA and GroupTransferService: with
# allAckInSyncStateSet=true it waits for every member of the SyncStateSet (only the master: no wait),
# otherwise for inSyncReplicas acks counting the master (default 1: no wait). So
#   SYNC  = allAckInSyncStateSet=true  (minInSyncReplicas=1: the set may shrink to the master alone)
#   ASYNC = allAckInSyncStateSet=false, inSyncReplicas=1
# A slave that stops acknowledging leaves the SyncStateSet after haMaxTimeSlaveNotCatchup.
#
# Failure detection. Each broker heartbeats the controller every brokerHeartbeatInterval (1000 ms) and
# names its own timeout in the heartbeat, controllerHeartBeatTimeoutMills (set to 3000 here, default
# 10000); the controller scans for expired brokers every scanNotActiveBrokerInterval (set to 1000
# here, default 5000). A killed JVM's connection closes at once, which the controller also treats as
# inactive, so kill -9 on loopback fails over without waiting for the timeout. The new master
# re-registers with the name server at once; the proxy refreshes its cached routes only every
# topicRouteServiceCacheRefreshSeconds (Apache's default 20, left as is).
#
# Settings (environment):
#   APACHE_HA_NAMESRV_PORT     name server (default 19876)
#   APACHE_HA_CONTROLLER_PORT  controller, the DLedger peer of the name server JVM (default 19878)
#   APACHE_HA_BROKER_PORT      broker 0's remoting port (default 20911); broker N listens on
#                              PORT+10N, and also on that -2 ("fast" channel) and +1 (HA)
#   APACHE_HA_GRPC_PORT        proxy gRPC (default 18081)
#   APACHE_HA_REMOTING_PORT    proxy remoting (default 18080)
#   APACHE_HA_NAMESRV_HEAP     name server + controller JVM heap (default 512m)
#   APACHE_HA_BROKER_HEAP      each broker JVM's heap (default 1g)
#   APACHE_HA_PROXY_HEAP       proxy JVM heap (default 1g)
#   APACHE_HA_FLUSH            ASYNC_FLUSH | SYNC_FLUSH (default ASYNC_FLUSH)
#   APACHE_HA_SEGMENT_BYTES    commit log segment size, mappedFileSizeCommitLog (default 1073741824)
#   APACHE_HA_HEARTBEAT_TIMEOUT_MS  controllerHeartBeatTimeoutMills (default 3000)
#   APACHE_HA_NOT_CATCHUP_MS   haMaxTimeSlaveNotCatchup (default 15000, Apache's)
#   APACHE_HA_WAIT_SECONDS     how long start/restart wait for the group (default 180)
#   APACHE_HA_STOP_SECONDS     grace after TERM before KILL (default 10)
set -euo pipefail
exec </dev/null

cmd="${1:-}"
work="${2:-}"
usage() {
  echo "usage: $0 start WORKDIR REPLICAS SYNC|ASYNC | topic WORKDIR TOPIC QUEUES | group WORKDIR GROUP" \
    "| master|status|kill-master|stop WORKDIR | restart WORKDIR N" >&2
  exit 2
}
[ -n "$cmd" ] && [ -n "$work" ] || usage
mkdir -p "$work"
work="$(cd "$work" && pwd)"
log() { echo "apache-ha: $*" >&2; }

# JVM options as in scripts/apache.sh (G1 settings of Apache's runserver.sh, small fixed heaps).
jvm_opts=(-server -XX:+UseG1GC -XX:G1HeapRegionSize=16m -XX:G1ReservePercent=25
  -XX:InitiatingHeapOccupancyPercent=30 -XX:SoftRefLRUPolicyMSPerMB=0 -XX:-OmitStackTraceInFastThrow
  --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.lang=ALL-UNNAMED --add-exports=java.base/sun.nio.ch=ALL-UNNAMED
  # A shared test machine's disk is often more than 90% full by Apache's measure (free space over
  # total, reserved blocks counted as used): past diskSpaceWarningLevelRatio (0.90) the broker
  # refuses every write as "disk full". Benchmarks need it writing; this is not a tuning.
  -Drocketmq.broker.diskSpaceWarningLevelRatio=0.99 -Drocketmq.broker.diskSpaceCleanForciblyRatio=0.98)
export ROCKETMQ_HOME="$work"
logconf() { echo "-Drmq.logback.configurationFile=rmq.$1.logback.xml"; }

# A pid from a pid file, if that process is still ours (its command line names WORKDIR).
alive() {
  local pid
  pid="$(cat "$work/$1.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *"$work"* ]] && echo "$pid"
}
fail() {
  local msg="$1"; shift
  log "$msg"
  for f in "$@"; do [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 30 "$f" >&2; }; done
  exit 1
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
mqadmin() {
  java -Xmx256m -XX:TieredStopAtLevel=1 -Duser.home="$work" "$(logconf tools)" -cp "$lib/*" \
    org.apache.rocketmq.tools.command.MQAdminStartup "$@" 2>&1
}
need_env() {
  [ -f "$work/ha.env" ] || { log "no $work/ha.env: start it first"; exit 1; }
  # shellcheck source=/dev/null
  . "$work/ha.env"
  lib="$("$(dirname "$0")/setup-apache.sh" 2>/dev/null | tail -n 1)"
}
# The controller's view of broker-a: "#MasterAddr\t127.0.0.1:20911", "#MasterEpoch\t1",
# "#SyncStateSetNums\t2", "InSyncReplica:\tReplicaIdentity{...brokerAddress='...', alive=true}" lines.
sync_state() { mqadmin getSyncStateSet -a "127.0.0.1:$controller_port" -b broker-a; }
field() { sed -n "s/^#$1[[:space:]]*//p" <<<"$2" | head -n 1; }
broker_logs() {
  echo "$work/broker-$1.out" "$work/broker-$1/logs/rocketmqlogs/broker.log"
}

start_broker() { # N
  local n="$1" b="$work/broker-$1"
  mkdir -p "$b"
  java "-Xms$broker_heap" "-Xmx$broker_heap" "${jvm_opts[@]}" -Duser.home="$b" "$(logconf broker)" \
    -cp "$lib/*" org.apache.rocketmq.broker.BrokerStartup -c "$work/broker-$n.conf" >>"$work/broker-$n.out" 2>&1 &
  echo $! > "$work/broker-$n.pid"
  disown   # no "Killed" notice from this shell when kill-master or stop ends it
}
# Until the controller reports master MASTER_ADDR (or any, if empty) and NUMS members in the
# SyncStateSet (ADDRS all among them), or fail after the deadline. Checks that WATCHED brokers live.
wait_group() { # deadline nums master_addr watched...
  local deadline="$1" nums="$2" want_master="$3" out n
  shift 3
  while true; do
    for n in "$@"; do
      alive "broker-$n" >/dev/null || fail "broker $n exited during startup" $(broker_logs "$n")
    done
    out="$(sync_state)" || true
    if [ "$(field SyncStateSetNums "$out")" = "$nums" ] && [ -n "$(field MasterAddr "$out")" ] &&
      { [ -z "$want_master" ] || [ "$(field MasterAddr "$out")" = "$want_master" ]; } &&
      [ "$(grep -c '^InSyncReplica:.*alive=true' <<<"$out")" = "$nums" ]; then
      return 0
    fi
    ((SECONDS < deadline)) || fail "broker-a has no master with $nums in-sync members after the wait: $out" \
      "$work/logs/rocketmqlogs/namesrv.log" $(for n in "$@"; do broker_logs "$n"; done)
    sleep 1
  done
}

# TERM all NAMES at once, wait up to APACHE_HA_STOP_SECONDS for all, then KILL the rest.
stop_all() {
  local name pid i grace="${APACHE_HA_STOP_SECONDS:-10}" pids=() names=()
  for name in "$@"; do
    if pid="$(alive "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
    rm -f "$work/$name.pid"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for ((i = 0; i < grace * 10; i++)); do
    local left=0
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && left=1; done
    [ $left -eq 0 ] && break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    if [ -d "/proc/$pid" ]; then
      log "${names[$i]} (pid $pid) still running $grace s after TERM: KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && { log "pid $pid survived KILL"; return 1; }
  done
  log "stopped ${names[*]}"
}
all_names() { # every pid file in WORKDIR
  local f names=()
  [ -f "$work/proxy.pid" ] && names+=(proxy)
  for f in "$work"/broker-*.pid; do [ -f "$f" ] && names+=("$(basename "$f" .pid)"); done
  [ -f "$work/namesrv.pid" ] && names+=(namesrv)
  echo "${names[@]}"
}

case "$cmd" in
start)
  [ $# -eq 4 ] || usage
  replicas="$3" mode="$4"
  case "$replicas" in 1 | 2) ;; *) log "REPLICAS must be 1 or 2"; exit 2 ;; esac
  case "$mode" in
  SYNC) repl_conf="allAckInSyncStateSet=true
minInSyncReplicas=1" ;;
  ASYNC) repl_conf="allAckInSyncStateSet=false
inSyncReplicas=1" ;;
  *) log "MODE must be SYNC or ASYNC"; exit 2 ;;
  esac
  flush="${APACHE_HA_FLUSH:-ASYNC_FLUSH}"
  case "$flush" in ASYNC_FLUSH | SYNC_FLUSH) ;; *) log "APACHE_HA_FLUSH must be ASYNC_FLUSH or SYNC_FLUSH"; exit 2 ;; esac
  ns_port="${APACHE_HA_NAMESRV_PORT:-19876}"
  controller_port="${APACHE_HA_CONTROLLER_PORT:-19878}"
  broker_port="${APACHE_HA_BROKER_PORT:-20911}"
  grpc_port="${APACHE_HA_GRPC_PORT:-18081}"
  remoting_port="${APACHE_HA_REMOTING_PORT:-18080}"
  broker_heap="${APACHE_HA_BROKER_HEAP:-1g}"
  for n in $(all_names); do
    if pid="$(alive "$n")"; then log "$n already running (pid $pid): $0 stop $work first"; exit 1; fi
  done
  ports=("$ns_port" "$controller_port" "$grpc_port" "$remoting_port")
  for ((n = 0; n <= replicas; n++)); do
    p=$((broker_port + 10 * n)); ports+=("$p" $((p - 2)) $((p + 1)))
  done
  [ "$(printf '%s\n' "${ports[@]}" | sort -u | wc -l)" -eq ${#ports[@]} ] ||
    { log "ports clash: ${ports[*]}"; exit 2; }
  for p in "${ports[@]}"; do listening "$p" && { log "port $p is already in use"; exit 1; }; done
  lib="$("$(dirname "$0")/setup-apache.sh" | tail -n 1)"

  cat > "$work/ha.env" <<ENV
replicas=$replicas
mode=$mode
ns_port=$ns_port
controller_port=$controller_port
grpc_port=$grpc_port
broker_heap=$broker_heap
ENV
  # Name server with the controller embedded: a one-peer DLedger group on controller_port (the
  # controller's requests are served on the DLedger server's port, so that is controllerAddr).
  cat > "$work/namesrv.conf" <<CONF
listenPort=$ns_port
enableControllerInNamesrv=true
controllerDLegerGroup=group1
controllerDLegerPeers=n0-127.0.0.1:$controller_port
controllerDLegerSelfId=n0
controllerStorePath=$work/controller
enableElectUncleanMaster=false
notifyBrokerRoleChanged=true
scanNotActiveBrokerInterval=1000
CONF
  for ((n = 0; n <= replicas; n++)); do
    p=$((broker_port + 10 * n))
    cat > "$work/broker-$n.conf" <<CONF
brokerClusterName=DefaultCluster
brokerName=broker-a
brokerId=-1
brokerRole=SLAVE
enableControllerMode=true
controllerAddr=127.0.0.1:$controller_port
controllerHeartBeatTimeoutMills=${APACHE_HA_HEARTBEAT_TIMEOUT_MS:-3000}
brokerHeartbeatInterval=1000
haMaxTimeSlaveNotCatchup=${APACHE_HA_NOT_CATCHUP_MS:-15000}
$repl_conf
namesrvAddr=127.0.0.1:$ns_port
brokerIP1=127.0.0.1
brokerIP2=127.0.0.1
listenPort=$p
haListenPort=$((p + 1))
storePathRootDir=$work/broker-$n/store
storePathCommitLog=$work/broker-$n/store/commitlog
flushDiskType=$flush
mappedFileSizeCommitLog=${APACHE_HA_SEGMENT_BYTES:-1073741824}
diskMaxUsedSpaceRatio=95
CONF
  done
  cat > "$work/rmq-proxy.json" <<JSON
{"rocketMQClusterName": "DefaultCluster", "namesrvAddr": "127.0.0.1:$ns_port",
 "remotingListenPort": $remoting_port, "grpcServerPort": $grpc_port}
JSON

  # From here on, a failed start stops whatever it started.
  trap 'rc=$?; [ $rc -eq 0 ] || "$0" stop "$work"; exit $rc' EXIT
  started=$SECONDS
  deadline=$((SECONDS + ${APACHE_HA_WAIT_SECONDS:-180}))
  ns_heap="${APACHE_HA_NAMESRV_HEAP:-512m}"
  java "-Xms$ns_heap" "-Xmx$ns_heap" "${jvm_opts[@]}" -Duser.home="$work" "$(logconf namesrv)" -cp "$lib/*" \
    org.apache.rocketmq.namesrv.NamesrvStartup -c "$work/namesrv.conf" >"$work/namesrv.out" 2>&1 &
  echo $! > "$work/namesrv.pid"
  disown
  ns_logs=("$work/namesrv.out" "$work/logs/rocketmqlogs/namesrv.log")
  # Ready when the controller's DLedger group has a leader.
  until listening "$ns_port" && listening "$controller_port" &&
    mqadmin getControllerMetaData -a "127.0.0.1:$controller_port" | grep -q '^#ControllerLeaderId[[:space:]]*n0'; do
    alive namesrv >/dev/null || fail "name server exited during startup" "${ns_logs[@]}"
    ((SECONDS < deadline)) || fail "controller has no leader after the wait" "${ns_logs[@]}"
    sleep 0.5
  done
  log "name server 127.0.0.1:$ns_port, controller 127.0.0.1:$controller_port after $((SECONDS - started)) s"

  # Broker 0 first, so that it becomes the first master, then the slaves and the proxy (which in
  # cluster mode exits at once unless the cluster is already registered with the name server).
  start_broker 0
  wait_group "$deadline" 1 "127.0.0.1:$broker_port" 0
  log "broker 0 is master after $((SECONDS - started)) s"
  until mqadmin clusterList -n "127.0.0.1:$ns_port" | grep -E "^DefaultCluster[[:space:]]+broker-a[[:space:]]+0[[:space:]]" >/dev/null; do
    ((SECONDS < deadline)) || fail "broker-a master not registered with the name server after the wait"
    sleep 1
  done
  for ((n = 1; n <= replicas; n++)); do start_broker "$n"; done
  proxy_heap="${APACHE_HA_PROXY_HEAP:-1g}"
  mkdir -p "$work/proxy"
  java "-Xms$proxy_heap" "-Xmx$proxy_heap" "${jvm_opts[@]}" -Duser.home="$work/proxy" "$(logconf proxy)" \
    -cp "$lib/*" org.apache.rocketmq.proxy.ProxyStartup -pm cluster -pc "$work/rmq-proxy.json" \
    >"$work/proxy.out" 2>&1 &
  echo $! > "$work/proxy.pid"
  disown
  wait_group "$deadline" $((replicas + 1)) "127.0.0.1:$broker_port" $(seq 0 "$replicas")
  log "all $((replicas + 1)) brokers in the SyncStateSet after $((SECONDS - started)) s"
  proxy_logs=("$work/proxy.out" "$work/proxy/logs/rocketmqlogs/proxy.log")
  until listening "$grpc_port"; do
    alive proxy >/dev/null || fail "proxy exited during startup" "${proxy_logs[@]}"
    ((SECONDS < deadline)) || fail "proxy gRPC $grpc_port not listening after the wait" "${proxy_logs[@]}"
    sleep 0.5
  done
  alive proxy >/dev/null || fail "proxy exited during startup" "${proxy_logs[@]}"
  log "ready after $((SECONDS - started)) s: name server 127.0.0.1:$ns_port, controller 127.0.0.1:$controller_port," \
    "brokers 127.0.0.1:$broker_port..+$((10 * replicas)), proxy gRPC 127.0.0.1:$grpc_port, remoting" \
    "127.0.0.1:$remoting_port ($mode, $flush, heaps $ns_heap/$broker_heap/$proxy_heap)"
  ;;
topic | group)
  { [ "$cmd" = topic ] && [ $# -eq 4 ]; } || { [ "$cmd" = group ] && [ $# -eq 3 ]; } || usage
  need_env
  if [ "$cmd" = topic ]; then
    out="$(mqadmin updateTopic -n "127.0.0.1:$ns_port" -c DefaultCluster -t "$3" -r "$4" -w "$4")" || true
  else
    out="$(mqadmin updateSubGroup -n "127.0.0.1:$ns_port" -c DefaultCluster -g "$3")" || true
  fi
  grep -q success <<<"$out" || fail "$cmd $3 failed: $out" "$work/logs/rocketmqlogs/tools.log"
  log "$cmd $3 created"
  ;;
master)
  [ $# -eq 2 ] || usage
  need_env
  out="$(sync_state)" || true
  addr="$(field MasterAddr "$out")"
  epoch="$(field MasterEpoch "$out")"
  [ -n "$addr" ] && [ "$addr" != null ] || fail "no master: $out"
  echo "$addr epoch=$epoch"
  ;;
status)
  [ $# -eq 2 ] || usage
  need_env
  sync_state | grep -v '^$'
  ;;
kill-master)
  [ $# -eq 2 ] || usage
  need_env
  out="$(sync_state)" || true
  addr="$(field MasterAddr "$out")"
  [ -n "$addr" ] || fail "no master: $out"
  for f in "$work"/broker-*.conf; do
    n="$(basename "$f" .conf)"; n="${n#broker-}"
    if [ "127.0.0.1:$(sed -n 's/^listenPort=//p' "$f")" = "$addr" ]; then
      pid="$(alive "broker-$n")" || fail "master $addr is broker $n, which is not running"
      kill -KILL "$pid"
      log "killed broker $n ($addr, epoch $(field MasterEpoch "$out")) at $(date +%s.%3N)"
      echo "$pid"
      exit 0
    fi
  done
  fail "master $addr is none of the brokers in $work"
  ;;
restart)
  [ $# -eq 3 ] || usage
  need_env
  n="$3"
  [ -f "$work/broker-$n.conf" ] || { log "no broker $n in $work"; exit 2; }
  if pid="$(alive "broker-$n")"; then log "broker $n is running (pid $pid)"; exit 1; fi
  started=$SECONDS
  deadline=$((SECONDS + ${APACHE_HA_WAIT_SECONDS:-180}))
  addr="127.0.0.1:$(sed -n 's/^listenPort=//p' "$work/broker-$n.conf")"
  start_broker "$n"
  while true; do
    alive "broker-$n" >/dev/null || fail "broker $n exited during startup" $(broker_logs "$n")
    out="$(sync_state)" || true
    grep -q "^InSyncReplica:.*brokerAddress='$addr'.*alive=true" <<<"$out" && break
    ((SECONDS < deadline)) || fail "broker $n ($addr) not back in the SyncStateSet after the wait: $out" \
      $(broker_logs "$n")
    sleep 1
  done
  log "broker $n ($addr, pid $(alive "broker-$n")) back in the SyncStateSet after $((SECONDS - started)) s" \
    "($(field SyncStateSetNums "$out") in sync, master $(field MasterAddr "$out") epoch $(field MasterEpoch "$out"))"
  ;;
stop)
  [ $# -eq 2 ] || usage
  # All at once: each JVM's shutdown hook joins its service threads one by one (DLedger's netty
  # client in the name server, the store's threads in a broker), which takes longer than the default
  # grace, so they usually end in KILL anyway, and one grace period is enough. Fine for a throwaway
  # WORKDIR (the script does not restart a stopped group; restart only replaces a killed broker).
  # shellcheck disable=SC2046
  stop_all $(all_names)
  ;;
*) usage ;;
esac
