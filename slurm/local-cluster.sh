#!/usr/bin/env bash
# Start/stop a real SLURM cluster on this one host, for tests: one slurmctld and two
# slurmd daemons (node1, node2; 4 CPUs and 2 stand-in GPUs each, partition "debug"),
# auth/none, all state under one directory. The stand-in GPUs are /dev/null-like character
# devices: they exercise --gpus-per-node scheduling (jobs get CUDA_VISIBLE_DEVICES and
# SLURM_GPUS_ON_NODE) while the work itself falls back to the CPU. It never touches /etc/slurm; use it through SLURM_CONF.
# Needs root (Debian 12, slurm-wlm 22.05; no systemd needed).
#
#   slurm/local-cluster.sh start     # installs slurm if missing, prints the export line
#   export SLURM_CONF=/tmp/ddpinfer-slurm/slurm.conf
#   timeout 60 srun -N2 --ntasks-per-node=2 hostname
#   slurm/local-cluster.sh stop
#
# Usage: local-cluster.sh install|start|stop|status
# Env: SLURM_LOCAL_DIR (state dir, default /tmp/ddpinfer-slurm),
#      SLURM_LOCAL_CPUS (CPUs per node, default 4), SLURM_LOCAL_GPUS (stand-in GPUs per node,
#      default 2), SLURM_LOCAL_WAIT (start timeout s, default 30)
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/ddpinfer-slurm}
CPUS=${SLURM_LOCAL_CPUS:-4}
GPUS=${SLURM_LOCAL_GPUS:-2}
WAIT=${SLURM_LOCAL_WAIT:-30}
HOST=$(hostname)
CONF=$DIR/slurm.conf
NODES=(node1 node2)
MARK="# ddpinfer-local-slurm"
HOSTS_LINE="127.0.0.1 ${NODES[*]} $MARK"

install() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null; then
        return 0
    fi
    local tmp_policy=
    # keep the packages' install scripts from starting system services
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        tmp_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        slurmctld slurmd slurm-client munge
    if [ -n "$tmp_policy" ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
}

write_conf() {
    mkdir -p "$DIR/state" "$DIR/log"
    for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n" "$DIR/dev/$n"; done
    local n i
    : > "$DIR/gres.conf"
    for n in "${NODES[@]}"; do
        for i in $(seq 0 $((GPUS - 1))); do
            [ -e "$DIR/dev/$n/gpu$i" ] || mknod "$DIR/dev/$n/gpu$i" c 1 3
        done
        echo "NodeName=$n Name=gpu File=$DIR/dev/$n/gpu[0-$((GPUS - 1))]" >> "$DIR/gres.conf"
    done
    cat > "$CONF" <<EOF
# written by slurm/local-cluster.sh
ClusterName=ddpinfer
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
MinJobAge=600
EnforcePartLimits=ALL
GresTypes=gpu
NodeName=node1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6818 CPUs=$CPUS Gres=gpu:$GPUS RealMemory=2000 State=UNKNOWN
NodeName=node2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=6819 CPUs=$CPUS Gres=gpu:$GPUS RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
EOF
}

# rewrite /etc/hosts in place (it may be a mount point, so no rename)
hosts_del() {
    grep -q -- "$MARK" /etc/hosts || return 0
    local keep
    keep=$(grep -v -- "$MARK" /etc/hosts || true)
    printf '%s\n' "$keep" > /etc/hosts
}

hosts_add() {
    grep -q -- "$MARK" /etc/hosts || printf '%s\n' "$HOSTS_LINE" >> /etc/hosts
}

# pid from pid file $1 if /proc/PID/comm is $2 (a dead daemon's pid file can be stale)
live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid" || true
}

any_alive() {
    local p
    for p; do [ -d "/proc/$p" ] && return 0; done
    return 1
}

# SIGTERM all daemons at once (each takes ~2 s to exit), wait up to 10 s, then SIGKILL
stop() {
    local pids=() p i n
    for n in "${NODES[@]}"; do pids+=($(live_pid "$DIR/slurmd-$n.pid" slurmd)); done
    pids+=($(live_pid "$DIR/slurmctld.pid" slurmctld))
    if [ ${#pids[@]} -gt 0 ]; then
        kill "${pids[@]}" 2>/dev/null || true
        for i in $(seq 100); do any_alive "${pids[@]}" || break; sleep 0.1; done
        for p in "${pids[@]}"; do [ -d "/proc/$p" ] && kill -9 "$p" 2>/dev/null || true; done
    fi
    rm -f "$DIR"/*.pid
    hosts_del
}

start() {
    install
    stop
    # a drained node stays drained unless the state is wiped; job ids restart at 1
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/dev" "$DIR/jobcomp.log"
    write_conf
    hosts_add
    slurmctld -f "$CONF"
    for n in "${NODES[@]}"; do slurmd -f "$CONF" -N "$n"; done
    local end=$((SECONDS + WAIT))
    until [ "$(SLURM_CONF=$CONF sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l)" = "${#NODES[@]}" ]; do
        if [ $SECONDS -ge $end ]; then
            echo "local-cluster: nodes not idle after ${WAIT}s; logs in $DIR/log" >&2
            SLURM_CONF=$CONF sinfo -N -l >&2 || true
            exit 1
        fi
        sleep 0.2
    done
    SLURM_CONF=$CONF sinfo
    echo "export SLURM_CONF=$CONF"
}

status() {
    SLURM_CONF=$CONF sinfo -N -l
}

case ${1:-} in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
