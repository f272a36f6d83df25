#!/usr/bin/env bash
# Installs the Debian packages the test suite and the benchmark need (PostgreSQL server for the
# metadata-store tests and the benchmark peer; Chromium for the portal tests; nats-server for the live
# broker; haproxy and a JRE for the fleet-scale tests). Idempotent; does nothing when they are present.
set -euo pipefail
need=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then need+=(postgresql); fi
# Debian's Chromium drives the portal's browser tests (Playwright, never `playwright install`); the CJK
# font makes the Chinese pages readable in the screenshots the tests save.
if [ ! -x /usr/bin/chromium ]; then need+=(chromium); fi
# The CJK font also typesets the Chinese annual report (PDF, issue 11).
if [ ! -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]; then need+=(fonts-wqy-microhei); fi
# NATS server: one of the live-broker choices (issue 10); the broker tests start it as a real process.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then need+=(nats-server); fi
# protoc: the Fleet Telemetry schema test regenerates the committed protobuf module and compares (issue 14).
if ! command -v protoc >/dev/null 2>&1; then need+=(protobuf-compiler); fi
# Its well-known types (google/protobuf/timestamp.proto, imported by the schema) come with libprotobuf-dev, which
# protobuf-compiler only recommends: installed without recommends, or present without it, protoc cannot compile.
if [ ! -f /usr/include/google/protobuf/timestamp.proto ]; then need+=(libprotobuf-dev); fi
# haproxy: the load balancer in front of two replicas in the fleet-scale test (issue 12).
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then need+=(haproxy); fi
# A Java runtime for Apache Spark (pyspark, local mode): the fleet jobs run on Spark as well as DuckDB (issue 12).
if ! command -v java >/dev/null 2>&1; then need+=(default-jre-headless); fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
