#!/bin/bash
# Usage: benches/idle-longpoll.sh PATH/TO/ferromq  (needs a release ferromq-load in target-lead/release)
BIN=$1
pkill -f 'serve --data-dir /tmp/pb' ; sleep 0.5; rm -rf /tmp/pb/data
(FERROMQ_PROJECT_ID=000000000000000000000001 FERROMQ_TOKEN=benchtoken1 FERROMQ_ADMIN_TOKEN=adminbench1 FERROMQ_LOG_LEVEL=warn FERROMQ_CONNECTIONS_MAX=20000 $BIN serve --data-dir /tmp/pb/data --listen 127.0.0.1:18080 > /tmp/pb/log 2>&1 &)
sleep 1
PID=$(pgrep -f 'serve --data-dir /tmp/pb')
before=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
(FERROMQ_TOKEN=benchtoken1 /work/main/target-lead/release/ferromq-load longpoll --url http://127.0.0.1:18080 --connections 10001 --duration 20 --rate 1 --queue idle > /tmp/pb/idle.txt 2>&1 &)
sleep 8
t1=$(awk '{print $14+$15}' /proc/$PID/stat)
sleep 10
t2=$(awk '{print $14+$15}' /proc/$PID/stat)
after=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
echo "$BIN: rss delta $(( (after-before)/1024 )) MB; cpu ticks in 10 s idle: $((t2-t1))"
sleep 4
