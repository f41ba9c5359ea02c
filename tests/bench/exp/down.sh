#!/bin/sh
for p in $(cat $1/pids); do kill $p; done
for p in $(cat $1/pids); do while kill -0 $p 2>/dev/null; do sleep 0.05; done; done
