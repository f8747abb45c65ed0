"""Tests of the OTLP sink (statsd_ao.otlp)."""
