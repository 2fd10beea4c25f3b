#!/usr/bin/env bash
# Start the local services the test suite talks to, when they are not already listening.
# Idempotent; prints what it started. Commands are the machine's standard ones.
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local name=$1 port=$2; shift 2
  if up "$port"; then return 0; fi
  echo "starting $name on port $port"
  "$@" >/dev/null 2>&1 || echo "could not start $name: $*" >&2
  for _ in $(seq 1 60); do up "$port" && return 0; sleep 1; done
  echo "$name did not come up on port $port" >&2
}

start redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
  --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
start postgres 5432 sh -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
start rabbitmq 5672 rabbitmq-server -detached
start nats 4222 sh -c 'mkdir -p /var/lib/nats-server && setsid nats-server -a 127.0.0.1 -p 4222 \
  -js -sd /var/lib/nats-server -l /var/log/nats-server.log </dev/null >/dev/null 2>&1 &'
exit 0
