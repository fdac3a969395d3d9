#!/usr/bin/env bash
# The broker, in the foreground: kafka-server-start.sh CONFIG
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
export KAFKA_LOG4J_OPTS="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml}"
exec kafka-run-class.sh kafka.Kafka "$@"
