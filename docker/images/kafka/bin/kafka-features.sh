#!/usr/bin/env bash
# As in the Kafka distribution.
exec kafka-run-class.sh org.apache.kafka.tools.FeatureCommand "$@"
