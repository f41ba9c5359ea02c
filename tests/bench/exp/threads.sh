#!/bin/sh
# threads.sh DIR: per-thread utime/stime (ticks) snapshot
for p in $(cat $1/pids); do for t in /proc/$p/task/*; do awk '{print $1, $2, $14, $15}' $t/stat; done; done
