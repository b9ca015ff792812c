#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the tests (Debian's slurmctld, slurmd, slurm-client
# and munge; run as root). The node has this machine's CPUs and memory and one fake GPU
# (a character device as the gres File), no accounting storage.
#
#   tests/slurm/cluster.sh up DIR     # start munged, slurmctld, slurmd; wait for an idle node
#   tests/slurm/cluster.sh down DIR   # stop them (by pid) and restore /etc/slurm
set -euo pipefail
action=${1:?up|down}
dir=${2:?state directory}
mkdir -p "$dir"

if [ "$action" = down ]; then
  for pid in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munged.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  sleep 1
  for f in slurm.conf gres.conf; do
    if [ -f "$dir/$f.orig" ]; then mv "$dir/$f.orig" "/etc/slurm/$f"; else rm -f "/etc/slurm/$f"; fi
  done
  exit 0
fi

mkdir -p "$dir"/{state,spool,log} /etc/slurm /run/munge
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
[ -e "$dir/fakegpu0" ] || mknod "$dir/fakegpu0" c 1 3
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
chown munge:munge /run/munge
if ! pgrep -x munged > /dev/null; then
  runuser -u munge -- /usr/sbin/munged --pid-file="/run/munge/munged.pid"
  cp /run/munge/munged.pid "$dir/munged.pid"
fi
for f in slurm.conf gres.conf; do
  [ -f "/etc/slurm/$f" ] && [ ! -f "$dir/$f.orig" ] && cp "/etc/slurm/$f" "$dir/$f.orig"
done
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=wsss-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
GresTypes=gpu
NodeName=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF
echo "NodeName=localhost Name=gpu File=$dir/fakegpu0" > /etc/slurm/gres.conf
slurmctld -i
slurmd -N localhost
for _ in $(seq 60); do
  if sinfo --noheader --format %T 2>/dev/null | grep -q idle; then sinfo; exit 0; fi
  sleep 1
done
echo "the SLURM node did not become idle; see $dir/log" >&2
exit 1
