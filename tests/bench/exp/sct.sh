#!/bin/sh
# sct.sh BIN DIR RATE: per-thread syscall counts per message during 3 s
BIN=$1; D=$2; R=$3
sh "$(dirname "$0")"/up.sh $BIN $D group ${WIN:-1ms} >/dev/null
S=$(sed -n 1p $D/pids); G=$(sed -n 2p $D/pids)
sh "$(dirname "$0")"/pairs.sh $BIN $D 7 "$R" > $D/bench.out &
B=$!
sleep 2
E=""; for s in sendto sendmsg recvfrom recvmsg read write poll epoll_wait fdatasync pwrite64 futex io_uring_enter; do E="$E,syscalls:sys_enter_$s"; done; E=${E#,}
perf stat -e "$E,context-switches" --per-thread -p $S,$G -x, -o $D/pt.txt -- sleep 3 >/dev/null 2>&1
wait $B
cat $D/bench.out
N=$(sed -n 's/.* msgs\/s=\([0-9]*\).*/\1/p' $D/bench.out)
sh "$(dirname "$0")"/down.sh $D
awk -F, -v n=$N '$2>0 && $2 != "<not counted>" {split($1,a,"-"); sub(/syscalls:sys_enter_/,"",$4); printf "%-14s %-16s %8.3f /msg\n", a[1] "-" a[2], $4, $2/(n*3)}' $D/pt.txt | sort -k3 -n -r | head -30
